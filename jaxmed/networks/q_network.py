"""Q-networks (trunk + head), single- and multi-agent, and the config factory.

Shapes: a single agent maps stacked frames ``(..., k, X, Y, Z)`` (any dtype; integer frames are
scaled by 1/255) to Q-values ``(..., n_actions)`` float32. The multi-agent network maps
``(..., n_agents, k, X, Y, Z)`` to ``(..., n_agents, n_actions)``.

Mixed precision: ``dtype`` is the compute dtype (``float32`` or ``bfloat16``); parameters are always
float32 and Q-values always float32 (the last FC layer computes in float32).

Parameter tree (``variables["params"]``): ``{"trunk": ..., "head": ...}``. In the multi-agent
network the head's leaves carry a leading ``n_agents`` axis (one head per agent), and so do the
trunk's when ``share_trunk=False``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax.numpy as jnp

from jaxmed.errors import ConfigError
from jaxmed.networks.config import DTYPES, NetworkConfig, lookup
from jaxmed.networks.heads import HEADS
from jaxmed.networks.trunks import TRUNKS

Dtype = Any

#: Name of the vmapped agent axis that CommNet communication averages over.
AGENT_AXIS = "agents"

# Fields set by the network itself, never through trunk_kwargs / head_kwargs.


class QNetwork(nn.Module):
    """One agent's Q-network: ``(..., k, X, Y, Z)`` any dtype -> ``(..., n_actions)`` float32.

    Attributes:
      trunk: trunk name, ``"network3d"`` | ``"strided"`` | ``"patch"`` (see :mod:`.trunks`).
      head: ``"q"`` (FC 256-128-n_actions) | ``"dueling"``.
      n_actions: number of discrete actions (6 for landmark agents).
      dtype: compute dtype, ``jnp.float32`` or ``jnp.bfloat16``.
      trunk_kwargs: trunk options, e.g. ``{"patch_size": 5, "width": 0.5}``.
      head_kwargs: head options, e.g. ``{"hidden": (256, 128)}``.
    """

    trunk: str = "patch"
    head: str = "q"
    n_actions: int = 6
    dtype: Dtype = jnp.float32
    trunk_kwargs: Optional[Mapping[str, Any]] = None
    head_kwargs: Optional[Mapping[str, Any]] = None

    def _trunk(self):
        return lookup("trunk", self.trunk, TRUNKS, self.trunk_kwargs)

    def _head(self):
        return lookup("head", self.head, HEADS, self.head_kwargs)

    def check_input(self, spatial) -> None:
        """Raise :class:`ConfigError` if crops of size ``spatial`` (D or (X, Y, Z)) cannot be used."""
        cls, options = self._trunk()
        cls(**options, parent=None).check_input(spatial)  # a detached module, only for its check

    @nn.compact
    def __call__(self, frames: jnp.ndarray) -> jnp.ndarray:
        trunk_cls, trunk_options = self._trunk()
        head_cls, head_options = self._head()
        features = trunk_cls(**trunk_options, dtype=self.dtype, name="trunk")(frames)
        return head_cls(n_actions=self.n_actions, **head_options, dtype=self.dtype, name="head")(features)


class MultiAgentQNetwork(QNetwork, kw_only=True):
    """``n_agents`` agents: ``(..., n_agents, k, X, Y, Z)`` -> ``(..., n_agents, n_actions)`` float32.

    Attributes (besides those of :class:`QNetwork`):
      n_agents: number of agents (static; must equal the input's agent axis).
      share_trunk: ``True``: one set of trunk parameters applied to every agent (the agent axis is
        just another batch dimension, equivalent to ``nn.vmap`` with ``variable_axes={'params':
        None}``); ``False``: independent trunks, parameters stacked along a leading agent axis.
      communication: CommNet-style exchange between the head's FC layers: each agent's hidden state
        is concatenated with the mean of the *other* agents' hidden states (Collab-DQN).

    Heads are always per agent (``nn.vmap`` with ``variable_axes={'params': 0}`` and split
    ``params`` RNGs), so agents given the same input still produce different Q-values.
    """

    n_agents: int
    share_trunk: bool = True
    communication: bool = False

    @nn.compact
    def __call__(self, frames: jnp.ndarray) -> jnp.ndarray:
        q = agent_axis_forward(self, frames)  # (n_agents, ..., n_actions)
        return jnp.moveaxis(q, 0, -2)


def agent_axis_forward(net: nn.Module, frames: jnp.ndarray, **head_kwargs):
    """The shared forward pass of the multi-agent networks (:class:`MultiAgentQNetwork` and
    :class:`~jaxmed.networks.actor_critic.MultiAgentActorCritic`); call it from their compact
    ``__call__``, where it creates the submodules ``trunk`` and ``head`` of ``net``.

    ``frames`` ``(..., n_agents, k, X, Y, Z)``. The trunk is shared (the agent axis is a batch axis) or,
    without ``net.share_trunk``, one per agent (``nn.vmap``, parameters stacked on a leading agent
    axis); the heads are always one per agent, with CommNet averaging over the agent axis when
    ``net.communication``. ``head_kwargs`` go to the head class. Returns the head's output(s) with the
    agent axis **first**: ``(n_agents, ..., out)``.
    """
    if frames.ndim < 5 or frames.shape[-5] != net.n_agents:
        raise ConfigError(f"{type(net).__name__}(n_agents={net.n_agents}) needs input "
                          f"(..., {net.n_agents}, k, X, Y, Z), got shape {frames.shape}")
    trunk_cls, trunk_options = net._trunk()
    head_cls, head_options = net._head()
    per_agent = dict(variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
                     in_axes=0, out_axes=0, axis_size=net.n_agents)
    if net.share_trunk:
        features = trunk_cls(**trunk_options, dtype=net.dtype, name="trunk")(frames)
        features = jnp.moveaxis(features, -2, 0)  # (n_agents, ..., F)
    else:
        trunks = nn.vmap(trunk_cls, **per_agent)
        features = trunks(**trunk_options, dtype=net.dtype, name="trunk")(jnp.moveaxis(frames, -5, 0))
    heads = nn.vmap(head_cls, axis_name=AGENT_AXIS, **per_agent)
    comm_axis = AGENT_AXIS if net.communication else None
    return heads(n_actions=net.n_actions, **head_options, dtype=net.dtype, comm_axis=comm_axis,
                 name="head", **head_kwargs)(features)


def network_from_config(cfg: Mapping[str, Any]) -> nn.Module:
    """Build a (multi-agent) Q-network from a plain config mapping, validating it first
    (:class:`jaxmed.networks.config.NetworkConfig`: ``trunk``, ``head`` (default ``"q"``), ``n_actions``,
    ``dtype``, ``n_agents`` (a :class:`MultiAgentQNetwork` when given), ``share_trunk``,
    ``communication``, ``crop_size``).

    Raises :class:`ConfigError` on unknown keys, names or options, or an unusable crop size.
    """
    nc = NetworkConfig.parse(cfg)
    trunk, trunk_options = nc.trunk_spec()
    head, head_options = nc.head_spec("q", HEADS)
    common = dict(trunk=trunk, head=head, n_actions=nc.n_actions, dtype=DTYPES[nc.dtype],
                  trunk_kwargs=trunk_options, head_kwargs=head_options)
    agents = nc.agent_options()
    net = MultiAgentQNetwork(**common, **agents) if agents else QNetwork(**common)
    return nc.finish(net)
