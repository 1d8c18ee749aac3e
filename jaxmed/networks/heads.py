"""Q-value heads: features ``(..., F)`` -> Q-values ``(..., n_actions)`` float32.

``"q"`` :class:`QHead`
    FC 256 → PReLU → FC 128 → PReLU → FC n_actions, as published (Alansary et al. 2019).
``"dueling"`` :class:`DuelingHead`
    Two such streams, value ``V`` (→ 1) and advantage ``A`` (→ n_actions), combined as
    ``Q = V + A - mean(A)`` (Wang et al. 2016). Both streams are recorded with ``self.sow`` in the
    ``"intermediates"`` collection (``value`` ``(..., 1)``, ``advantage`` ``(..., n_actions)``).

Hidden layers compute in ``dtype`` with float32 parameters; the last layer computes in float32, so
Q-values are float32 whatever the compute dtype.

Communication (CommNet, Sukhbaatar et al. 2016, as in Collab-DQN, Vlontzos et al. 2019): when
``comm_axis`` names a vmapped agent axis (``nn.vmap(..., axis_name=comm_axis)``), after every hidden
layer each agent's hidden state ``h_i`` is concatenated with the mean of the *other* agents' hidden
states, ``[h_i, mean_{j != i} h_j]`` (zeros for a single agent), before the next FC layer. Outside
such a vmap, ``comm_axis`` must be ``None``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmed.networks.trunks import PRELU_INIT

Dtype = Any


def mean_of_others(h: jnp.ndarray, axis_name: str) -> jnp.ndarray:
    """Mean of ``h`` over the other members of the vmapped axis ``axis_name`` (zeros if alone)."""
    n = jax.lax.axis_size(axis_name)
    total = jax.lax.psum(h, axis_name)
    return (total - h) / max(n - 1, 1)


class HiddenStack(nn.Module):
    """FC layers with PReLU, optionally with CommNet communication after each: ``(..., F) -> (..., H)``.

    With communication the output is ``(..., 2 * hidden[-1])`` (own state and the others' mean).
    """

    hidden: Sequence[int] = (256, 128)
    dtype: Dtype = jnp.float32
    comm_axis: Optional[str] = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for width in self.hidden:
            x = nn.PReLU(negative_slope_init=PRELU_INIT)(nn.Dense(width, dtype=self.dtype)(x))
            if self.comm_axis is not None:
                x = jnp.concatenate([x, mean_of_others(x, self.comm_axis)], axis=-1)
        return x


class QHead(nn.Module):
    """Published Q head: FC 256 → 128 → n_actions with PReLU. ``(..., F) -> (..., n_actions)`` float32."""

    n_actions: int = 6
    hidden: Sequence[int] = (256, 128)
    dtype: Dtype = jnp.float32
    comm_axis: Optional[str] = None

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
        h = HiddenStack(self.hidden, self.dtype, self.comm_axis, name="hidden")(features)
        return nn.Dense(self.n_actions, dtype=jnp.float32, name="out")(h)


class DuelingHead(QHead):
    """Dueling head: ``Q = V + A - mean(A)``. ``(..., F) -> (..., n_actions)`` float32; the fields of
    :class:`QHead` (each stream is one)."""

    @nn.compact
    def __call__(self, features: jnp.ndarray) -> jnp.ndarray:
        value = QHead(1, self.hidden, self.dtype, self.comm_axis, name="value_stream")(features)
        advantage = QHead(self.n_actions, self.hidden, self.dtype, self.comm_axis,
                          name="advantage_stream")(features)
        self.sow("intermediates", "value", value)
        self.sow("intermediates", "advantage", advantage)
        return value + advantage - advantage.mean(axis=-1, keepdims=True)


#: Head classes by config name.
HEADS: dict[str, type[nn.Module]] = {"q": QHead, "dueling": DuelingHead}


#: The one head name an actor-critic network accepts (``network: {head: {name: actor_critic, ...}}``).
HEAD_NAME = "actor_critic"


def _small_init(key, shape, dtype=jnp.float32):
    """LeCun-normal weights scaled by 0.01: the initial policy is close to uniform."""
    return 0.01 * nn.initializers.lecun_normal()(key, shape, dtype)


class ActorCriticHead(nn.Module):
    """Policy and value heads on trunk features: ``(..., F) -> (logits (..., n_actions), value (...))``.

    Attributes:
      n_actions: number of discrete actions.
      hidden: FC widths of each of the two stacks (policy, value).
      dtype: compute dtype of the hidden layers; the output layers compute in float32.
      comm_axis: CommNet axis name (see :mod:`.heads`) or ``None``.
      critic: build the value stack; ``False`` returns zeros for the value (policy-only, GRPO).
    """

    n_actions: int = 6
    hidden: Sequence[int] = (256, 128)
    dtype: Dtype = jnp.float32
    comm_axis: Optional[str] = None
    critic: bool = True

    @nn.compact
    def __call__(self, features: jnp.ndarray):
        h = HiddenStack(tuple(self.hidden), self.dtype, self.comm_axis, name="actor_hidden")(features)
        logits = nn.Dense(self.n_actions, dtype=jnp.float32, kernel_init=_small_init,
                          name="logits")(h)
        if not self.critic:
            return logits, jnp.zeros(logits.shape[:-1], jnp.float32)
        hv = HiddenStack(tuple(self.hidden), self.dtype, self.comm_axis, name="critic_hidden")(features)
        value = nn.Dense(1, dtype=jnp.float32, name="value")(hv)[..., 0]
        return logits, value


#: The policy-gradient learners' head registry (one kind).
ACTOR_CRITIC_HEADS: dict[str, type[nn.Module]] = {HEAD_NAME: ActorCriticHead}
