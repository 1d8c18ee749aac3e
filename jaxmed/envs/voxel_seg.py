"""Voxel-wise multi-agent refinement of a probability map (Liao et al. 2020).

Liao et al., "Iteratively-refined interactive 3D medical image segmentation with multi-agent
reinforcement learning", CVPR 2020: every voxel is an agent that changes its own foreground
probability by one of a few discrete amounts, rewarded by the decrease of its cross-entropy to
the label. Here on a ``D``³ crop around one structure (a :class:`jaxmed.data.structures.SegBank`
example), so ``A = D``³ agents act at once (13 824 for ``D = 24``), all with one shared policy.

* state: the probability map ``P`` ``(D, D, D)`` float32 (per-episode by nature, the size of the
  crop), the example index and the step count.
* start: a coarse map: ``config.start == "atlas"`` the template's label laid on the crop
  (translation-only atlas transfer, :mod:`jaxmed.data.structures`), or ``"threshold"`` the window
  ``start_low <= I <= start_high``; voxels of the start mask get ``P = start_confidence``, the
  others ``1 - start_confidence``.
* actions ``(A,)`` int32 in ``0..len(deltas)-1``, voxel ``a`` in C order (``x`` slowest): ``P[a] +=
  deltas[action[a]]``, clipped to ``[p_min, 1 - p_min]``.
* reward ``(A,)`` float32: ``reward_scale * (CE(P_old) - CE(P_new))`` per voxel, ``CE`` the binary
  cross-entropy to the label (nats, :func:`jaxmed.ops.masks.binary_cross_entropy`).
* ``terminated`` never; ``truncated`` at ``t >= max_steps`` (auto-reset by the base class).
* observation ``(A, 2, p, p, p)`` storage dtype, ``p = config.patch_size``: each voxel's
  neighbourhood of the image (as stored) and of ``P`` (``round(255 P)`` for uint8 banks), zero
  outside the crop (:func:`jaxmed.ops.masks.patches`). :meth:`VoxelSegEnv.dense_obs` gives the same
  information as one ``(2, D, D, D)`` array: a policy that is a ``p``³ convolution followed by
  ``1 x 1 x 1`` layers *is* a per-voxel network on these patches, applied to every voxel at once
  (what :mod:`jaxmed.agents.voxel_q` trains).
* ``info``: ``dice`` ``(1,)`` of ``P > 0.5``, ``cross_entropy`` ``(1,)`` mean over the crop,
  ``final_dice`` / ``final_cross_entropy`` (NaN unless the episode ended).

Evaluation: :meth:`eval_states` starts every example from its coarse map (``n_starts`` copies; the
dynamics are deterministic); :meth:`eval_metrics` gives ``dice`` and ``cross_entropy`` broadcast to
the ``A`` agents, and :meth:`metric_stats` reports one row (the structure) from agent 0.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmed.config import bounded, check_fields
from jaxmed.envs.base import Box, Discrete, is_concrete
from jaxmed.envs.threshold_seg import SegCropEnv, seg_box
from jaxmed.errors import ConfigError
from jaxmed.ops.masks import binary_cross_entropy, dice, patches, window_mask

STARTS = ("atlas", "threshold")


@dataclasses.dataclass(frozen=True)
class VoxelSegConfig:
    """Static configuration.

    Attributes:
      structure: name of the bank's structure.  crop_size: ``D``.
      patch_size: ``p`` (odd), the observed neighbourhood of every voxel.
      deltas: the probability changes an agent may choose.
      start: ``"atlas"`` or ``"threshold"`` (module docstring).
      p_min: probabilities are kept in ``[p_min, 1 - p_min]``.
    """

    structure: str = "organ"
    crop_size: int = bounded(16, 3)
    patch_size: int = bounded(3, 1)
    deltas: tuple[float, ...] = (-0.2, -0.05, 0.0, 0.05, 0.2)
    start: str = "atlas"
    p_min: float = bounded(0.01, 0.0, 0.5, low_open=True, high_open=True)

    def __post_init__(self):
        check_fields(self)
        if self.patch_size % 2 != 1:
            raise ConfigError(f"VoxelSegConfig: patch_size must be odd, got {self.patch_size}")
        deltas = tuple(float(d) for d in np.atleast_1d(self.deltas))
        if len(deltas) < 2 or any(abs(d) >= 1 for d in deltas):
            raise ConfigError(f"VoxelSegConfig: deltas must be >= 2 changes in (-1, 1), got {self.deltas!r}")
        object.__setattr__(self, "deltas", deltas)
        if self.start not in STARTS:
            raise ConfigError(f"VoxelSegConfig: start must be one of {STARTS}, got {self.start!r}")

    @property
    def n_voxels(self) -> int:
        return self.crop_size**3


@struct.dataclass
class VoxelSegParams:
    """Numeric parameters: ``max_steps``; ``reward_scale``; ``start_confidence`` (``P`` of start-mask
    voxels; the others ``1 - start_confidence``); ``start_low`` / ``start_high`` (normalised
    intensity window of the ``"threshold"`` start)."""

    max_steps: int = bounded(10, 1)
    reward_scale: float = bounded(1.0, 0.0, low_open=True)
    start_confidence: float = bounded(0.7, 0.0, 1.0)
    start_low: float = 0.7
    start_high: float = 1.2


@struct.dataclass
class VoxelSegState:
    """``volume`` ``()`` int32; ``prob`` ``(D, D, D)`` float32; ``t`` ``()`` int32."""

    volume: jax.Array
    prob: jax.Array
    t: jax.Array


class VoxelSegEnv(SegCropEnv, config=VoxelSegConfig, params=VoxelSegParams, name="voxel-seg"):
    """``D``³ voxel agents refining a probability map (module docstring)."""

    # -------------------------------------------------------------- descriptions

    @property
    def n_agents(self) -> int:
        return self.config.n_voxels

    @property
    def metric_labels(self) -> tuple[str, ...]:
        return (self.config.structure,) * self.n_agents

    def metric_stats(self, states, values, metric: str) -> dict:
        """One row (the structure): the metric is the same for every voxel agent; agent 0's column."""
        from jaxmed.envs.metrics import metric_stats

        return metric_stats(np.asarray(values)[:, :1], (self.config.structure,), metric)

    def observation_space(self, params=None, bank=None) -> Box:
        p = self.config.patch_size
        return seg_box((self.n_agents, 2, p, p, p), bank)

    def action_space(self, params=None) -> Discrete:
        return Discrete(len(self.config.deltas), (self.n_agents,))

    def check_action(self, action):
        shape = tuple(getattr(action, "shape", np.shape(action)))
        if shape != (self.n_agents,):
            raise ConfigError(f"{self.name}: expected one action per voxel, shape ({self.n_agents},), got {shape}")
        dtype = getattr(action, "dtype", None) or np.asarray(action).dtype
        if not jnp.issubdtype(dtype, jnp.integer):
            raise ConfigError(f"{self.name}: actions must be integers, got dtype {dtype}")
        if is_concrete(action):
            a = np.asarray(action)
            if a.min() < 0 or a.max() >= len(self.config.deltas):
                raise ConfigError(f"{self.name}: actions must lie in 0..{len(self.config.deltas) - 1} (indices of {self.config.deltas})")
            if not isinstance(action, jax.Array):
                action = jnp.asarray(a, jnp.int32)
        return action

    # -------------------------------------------------------------- start maps

    def start_mask(self, bank, volume, params) -> jax.Array:
        """``(D, D, D)`` bool, the coarse mask an episode starts from (module docstring)."""
        if self.config.start == "atlas":
            return bank.atlas[volume] > 0
        return window_mask(bank.intensity(volume), params.start_low, params.start_high)

    def _initial_state(self, bank, volume, params) -> VoxelSegState:
        volume = jnp.asarray(volume, jnp.int32)
        c = jnp.clip(params.start_confidence, self.config.p_min, 1.0 - self.config.p_min)
        prob = jnp.where(self.start_mask(bank, volume, params), c, 1.0 - c).astype(jnp.float32)
        return VoxelSegState(volume=volume, prob=prob, t=jnp.zeros((), jnp.int32))

    def reset_env(self, key, params: VoxelSegParams, bank) -> VoxelSegState:
        n = bank.images.shape[0]
        volume = jax.random.randint(key, (), 0, n, dtype=jnp.int32)
        return self._initial_state(bank, volume, params)

    def states_at(self, bank, volumes, params=None) -> VoxelSegState:
        """Start states of examples ``volumes`` ``(E,)`` (their coarse maps)."""
        params = self.default_params if params is None else params
        self.check_bank(bank)
        return self._batch_states(bank, jnp.asarray(volumes, jnp.int32), params)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _batch_states(self, bank, volumes, params):
        return jax.vmap(self._initial_state, in_axes=(None, 0, None))(bank, volumes, params)

    def eval_states(self, params, bank, n_starts: int, seed: int = 0) -> VoxelSegState:
        """``n_starts`` copies of every example's start (deterministic dynamics: copies agree)."""
        del seed
        if n_starts < 1:
            raise ConfigError(f"{self.name}: n_starts must be >= 1, got {n_starts}")
        self.check_bank(bank)
        return self.states_at(bank, np.repeat(np.arange(bank.n_volumes), n_starts), params)

    # -------------------------------------------------------------- step

    def _ce(self, bank, volume, prob) -> jax.Array:
        return binary_cross_entropy(prob, bank.labels_mask[volume], eps=self.config.p_min * 0.5)

    def step_env(self, key, state: VoxelSegState, action, params: VoxelSegParams, bank):
        del key
        c = self.config
        d = c.crop_size
        delta = jnp.asarray(c.deltas, jnp.float32)[jnp.reshape(jnp.asarray(action, jnp.int32), (d, d, d))]
        prob = jnp.clip(state.prob + delta, c.p_min, 1.0 - c.p_min)
        ce_old, ce_new = self._ce(bank, state.volume, state.prob), self._ce(bank, state.volume, prob)
        reward = (params.reward_scale * (ce_old - ce_new)).reshape(-1).astype(jnp.float32)
        new_state = VoxelSegState(volume=state.volume, prob=prob, t=state.t + 1)
        terminated = jnp.zeros((), bool)
        truncated = new_state.t >= params.max_steps
        m = self._metrics(bank, state.volume, prob)
        info = {"dice": m["dice"][:1], "cross_entropy": m["cross_entropy"][:1],
                "final_dice": jnp.where(truncated, m["dice"][:1], jnp.nan),
                "final_cross_entropy": jnp.where(truncated, m["cross_entropy"][:1], jnp.nan)}
        return new_state, reward, terminated, truncated, info

    # -------------------------------------------------------------- metrics

    def mask(self, state: VoxelSegState, bank=None) -> jax.Array:
        """``(D, D, D)`` bool, ``P > 0.5``."""
        return state.prob > 0.5

    def _metrics(self, bank, volume, prob) -> dict[str, jax.Array]:
        label = bank.labels_mask[volume]
        a = self.n_agents
        return {"dice": jnp.broadcast_to(dice(prob > 0.5, label), (a,)),
                "cross_entropy": jnp.broadcast_to(jnp.mean(self._ce(bank, volume, prob)), (a,))}

    def eval_metrics(self, state: VoxelSegState, params, bank) -> dict[str, jax.Array]:
        """``dice`` and ``cross_entropy`` (nats per voxel), each broadcast to ``(A,)``."""
        return self._metrics(bank, state.volume, state.prob)

    # -------------------------------------------------------------- observation

    def dense_obs(self, state: VoxelSegState, bank) -> jax.Array:
        """``(2, D, D, D)`` storage dtype: the image crop and ``P`` (``round(255 P)`` for uint8)."""
        image = bank.images[state.volume]
        if image.dtype == jnp.uint8:
            prob = jnp.round(state.prob * 255.0).astype(jnp.uint8)
        else:
            prob = state.prob.astype(image.dtype)
        return jnp.stack([image, prob])

    def get_obs(self, state: VoxelSegState, params=None, bank=None) -> jax.Array:
        """``(A, 2, p, p, p)`` storage dtype: every voxel's neighbourhood of :meth:`dense_obs`."""
        dense = self.dense_obs(state, bank)
        p = self.config.patch_size
        out = patches(dense.astype(jnp.float32), p).reshape((self.n_agents, 2, p, p, p))
        return out.astype(dense.dtype)
