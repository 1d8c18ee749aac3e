"""Actor-critic networks for the policy-gradient learners (A2C, PPO, GRPO): trunk + policy/value heads.

Shapes: a single agent maps stacked frames ``(..., k, X, Y, Z)`` (any dtype; integer frames are scaled
by 1/255, see :mod:`.trunks`) to ``(logits, value)``: categorical policy logits ``(..., n_actions)``
float32 and a state value ``(...)`` float32. The multi-agent network maps ``(..., n_agents, k, X, Y,
Z)`` to logits ``(..., n_agents, n_actions)`` and values ``(..., n_agents)``.

The trunks are those of the Q-networks (:data:`jaxmed.networks.trunks.TRUNKS`); the head
(:class:`ActorCriticHead`) has two FC stacks (:class:`~jaxmed.networks.heads.HiddenStack`, PReLU,
optional CommNet communication) on the trunk features, one for the policy and one for the value.
The policy's last layer starts with small weights (LeCun normal x 0.01), so that the initial
policy is close to uniform (PPO practice). With ``critic=False`` (GRPO: no value network) the value
stack is not built and the value output is zeros.

Parameter tree (``variables["params"]``): ``{"trunk": ..., "head": {"actor_hidden", "logits",
"critic_hidden", "value"}}``; in the multi-agent network the head's leaves carry a leading
``n_agents`` axis (one head per agent) and so do the trunk's when ``share_trunk=False``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxmed.errors import ConfigError
from jaxmed.networks.config import DTYPES, NetworkConfig, lookup
from jaxmed.networks.heads import ACTOR_CRITIC_HEADS, HEAD_NAME, ActorCriticHead  # noqa: F401  (ActorCriticHead re-exported)
from jaxmed.networks.q_network import agent_axis_forward
from jaxmed.networks.trunks import TRUNKS

Dtype = Any

_HEADS = ACTOR_CRITIC_HEADS


class ActorCritic(nn.Module):
    """One agent's actor-critic: ``(..., k, X, Y, Z)`` -> ``(logits (..., n_actions), value (...))``.

    Attributes:
      trunk: trunk name, ``"network3d"`` | ``"strided"`` | ``"patch"`` (see :mod:`.trunks`).
      n_actions: number of discrete actions (6 for landmark agents).
      dtype: compute dtype, ``jnp.float32`` or ``jnp.bfloat16``.
      trunk_kwargs: trunk options, e.g. ``{"patch_size": 5, "width": 0.5}``.
      head_kwargs: head options, e.g. ``{"hidden": (256, 128)}``.
      critic: build the value head (``False``: policy only, the value output is zeros).
    """

    trunk: str = "patch"
    n_actions: int = 6
    dtype: Dtype = jnp.float32
    trunk_kwargs: Optional[Mapping[str, Any]] = None
    head_kwargs: Optional[Mapping[str, Any]] = None
    critic: bool = True

    def _trunk(self):
        return lookup("trunk", self.trunk, TRUNKS, self.trunk_kwargs)

    def _head(self):
        options = dict(self.head_kwargs or {})
        if "critic" in options:
            raise ConfigError("actor-critic head: set critic on the network (actor_critic_from_config(..., critic=...)), "
                              "not in the head options")
        return lookup("head", HEAD_NAME, _HEADS, options)

    def check_input(self, spatial) -> None:
        """Raise :class:`ConfigError` if crops of size ``spatial`` (D or (X, Y, Z)) cannot be used."""
        cls, options = self._trunk()
        cls(**options, parent=None).check_input(spatial)

    @nn.compact
    def __call__(self, frames: jnp.ndarray):
        trunk_cls, trunk_options = self._trunk()
        head_cls, head_options = self._head()
        features = trunk_cls(**trunk_options, dtype=self.dtype, name="trunk")(frames)
        return head_cls(n_actions=self.n_actions, **head_options, dtype=self.dtype, critic=self.critic,
                        name="head")(features)


class MultiAgentActorCritic(ActorCritic, kw_only=True):
    """``n_agents`` agents: ``(..., n_agents, k, X, Y, Z)`` -> ``(logits (..., n_agents, n_actions), value
    (..., n_agents))``.

    Attributes (besides those of :class:`ActorCritic`): ``n_agents``, ``share_trunk`` (one trunk for
    every agent, else independent trunks stacked along a leading agent axis) and ``communication``
    (CommNet between the head's FC layers), exactly as :class:`~jaxmed.networks.MultiAgentQNetwork`.
    Heads are always per agent (``nn.vmap`` over the agent axis with split parameter RNGs).
    """

    n_agents: int
    share_trunk: bool = True
    communication: bool = False

    @nn.compact
    def __call__(self, frames: jnp.ndarray):
        logits, value = agent_axis_forward(self, frames, critic=self.critic)  # agent axis first
        return jnp.moveaxis(logits, 0, -2), jnp.moveaxis(value, 0, -1)


def actor_critic_from_config(cfg: Mapping[str, Any], critic: bool = True) -> ActorCritic:
    """Build a (multi-agent) actor-critic network from the same config mapping as
    :func:`jaxmed.networks.network_from_config`, validating it first.

    Keys (all optional): ``trunk`` (name or ``{"name": ..., **options}``, default ``"patch"``),
    ``head`` (``"actor_critic"`` or a mapping of head options such as ``{"hidden": [64, 32]}``, its
    ``name`` optional; the Q heads ``"q"`` / ``"dueling"`` are refused), ``n_actions`` (default 6),
    ``dtype`` (``"float32"`` | ``"bfloat16"``), ``n_agents`` (a :class:`MultiAgentActorCritic` when
    given), ``share_trunk`` / ``communication`` (only with ``n_agents``), ``crop_size`` (checked
    against the trunk now).

    Args:
      critic: ``False`` builds a policy-only network (GRPO); its value output is zeros.

    Raises :class:`ConfigError` on unknown keys, names or options, or an unusable crop size.
    """
    nc = NetworkConfig.parse(cfg)
    trunk, trunk_options = nc.trunk_spec()
    head = nc.head if nc.head is not None else HEAD_NAME
    if isinstance(head, str) and head != HEAD_NAME or isinstance(head, Mapping) and head.get("name", HEAD_NAME) != HEAD_NAME:
        name = head if isinstance(head, str) else head["name"]
        raise ConfigError(f"network config: head {name!r} is a Q-value head; policy-gradient learners use "
                          f"head {HEAD_NAME!r} (options: hidden)")
    _, head_options = nc.head_spec(HEAD_NAME, _HEADS)
    if "hidden" in head_options:
        head_options["hidden"] = tuple(head_options["hidden"])
    common = dict(trunk=trunk, n_actions=nc.n_actions, dtype=DTYPES[nc.dtype], trunk_kwargs=trunk_options,
                  head_kwargs=head_options, critic=bool(critic))
    agents = nc.agent_options()
    net = MultiAgentActorCritic(**common, **agents) if agents else ActorCritic(**common)
    return nc.finish(net)
