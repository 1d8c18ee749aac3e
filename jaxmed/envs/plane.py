"""View-plane search: an agent tilts and shifts a plane through a volume until it shows a standard view.

The formulation of Alansary et al., "Automatic view planning with multi-scale deep reinforcement
learning agents", MICCAI 2018 (mid-sagittal and ACPC planes of brain MRI, 4-chamber cardiac view):

* the plane is ``a x + b y + c z + d = 0``; the agent acts on the direction angles of its normal,
  ``theta_i = arccos(n_i)`` (``i`` = x, y, z, degrees), and on its offset: ``±theta_x, ±theta_y,
  ±theta_z, ±d`` are the 8 actions. After a change of ``theta_i`` the normal
  ``(cos theta_x, cos theta_y, cos theta_z)`` is renormalised. For a normal near a coordinate axis
  (e.g. +S for an axial plane) the two angles of the other axes tilt the plane about the two in-plane
  axes and the third is nearly a no-op, as in the paper;
* the observation is a slab of slices sampled on the current plane;
* the reward is the (clipped) decrease of the distance to the target plane;
* multi-scale search: step sizes and sampling spacing shrink when the agent oscillates (the paper
  halves the angle step and lowers the offset step by 1 mm: 8/4/2/1 degrees, 4/3/2/1 mm, with the
  image spacing refined alongside), and an oscillation at the finest scale ends the episode.

The dynamics below are the specification (``A = 1`` agent; ``k`` = ``config.frames``, ``S`` =
``config.n_slices``, ``H = W = config.size``; all geometry in world RAS mm):

* plane: unit normal ``n`` ``(3,)`` and offset ``o`` (mm) about the *pivot* ``c``, the world position of
  the centre of the volume's level-0 voxel grid: the plane is ``n . (x - c) = o``, i.e. ``n . x = d``
  with ``d = o + n . c``. The orientation is canonical: ``n . e_N >= 0`` for the target definition's
  ``normal_axis`` ``e_N`` (a step that would flip it negates ``(n, o)``, the same plane).
* action: ``(A,)`` int32 in ``0..7`` (a scalar is accepted too). ``p = a // 2`` selects the parameter
  (0: theta_x, 1: theta_y, 2: theta_z, 3: offset), ``a % 2 == 0`` adds and ``1`` subtracts the current
  scale's step: ``theta_p ± angle_steps[s]`` degrees, then ``n = unit(cos theta)``; or ``o ±
  offset_steps[s]`` mm, clipped to ``± max_offset`` (half the smallest world extent of the volume).
* observation: ``(A, k, S, H, W)`` in the bank's storage dtype (uint8 values rounded). Frame ``f`` is
  the slab sampled on the ``f``-th newest plane (frame 0 = now) from bank level ``levels[s]`` of the
  current scale ``s``, with that level's voxel spacing ``h`` (mm, mean of the affine's column norms)
  between samples and ``slice_gap * h`` between slices; slices stacked along ``+n``, the middle
  slice (odd ``S``) on the plane; centred on the projection ``c + o n`` of the pivot; rows along the
  definition's ``in_plane_axis`` projected onto the plane (:func:`jaxmed.ops.plane.plane_basis`:
  continuous while the plane tilts), columns along ``n x u``. Outside the volume: 0. With several
  distinct levels a bank built with ``packed=True`` lets each slab be sampled once, at its own level
  (:attr:`PlaneEnv.wants_packed_bank`); without it every level is sampled and selected (about twice
  the work for two levels, the same values).
* target: the definition (:mod:`jaxmed.data.planes`) applied to the bank's landmarks of the episode's
  volume, at reset (pure jnp).
* reward: ``(A,)`` float32, ``clip(E_prev - E_new, -reward_clip, reward_clip)`` with the plane error
  ``E = angle(n, n_t) [degrees] + |o - s o_t| [mm]``: the angle between the normals plus the offset
  difference at the pivot (``s = ±1`` aligns the target's orientation with ``n``, ``o_t`` is the
  target's offset about the same pivot). Rotations change only the first term, shifts the second. 0
  for a done agent. (The paper uses the sign of the decrease of a scaled parameter distance; with
  ``reward_clip = 1`` and steps >= 1 this is nearly the same.)
* oscillation: the new plane is "the same" as a ring entry when their normals are within
  ``osc_tolerance * angle_steps[s]`` degrees and their offsets within ``osc_tolerance *
  offset_steps[s]`` mm (plane round trips are not exact in floating point: the renormalisation does
  not commute); the agent oscillates when at least ``osc_repeats`` of the newest ``min(osc_window,
  since_switch + 1)`` planes (the new one included) are the same as the new plane. At a coarser
  scale it moves one scale finer (``since_switch`` restarts); at the finest it is done. With
  ``terminate_at_target > 0`` an agent at the finest scale with ``E <= terminate_at_target`` is done
  too (uses the ground truth: :meth:`PlaneEnv.eval_params` disables it). ``terminated`` when every
  agent is done, ``truncated`` when ``t >= max_steps`` and not terminated.
* starts (training): the target plane tilted by an angle uniform in ``[0, max_start_angle_deg]``
  about a uniformly random in-plane direction, its offset shifted by a uniform ``±
  max_start_offset_mm``, at the coarsest scale. Evaluation (:meth:`PlaneEnv.eval_states`) uses fixed
  seeded perturbations of the same kind; :meth:`PlaneEnv.prior_states` starts from a prior plane (a
  template's plane about the pivot, or the world-axis plane through it: no ground truth, what
  ``jaxmed plane`` does on a new image).
* metrics (:meth:`PlaneEnv.eval_metrics`, ``(A,)`` float32): ``angle_deg`` (between the normals),
  ``distance_mm`` (distance of the target's reference point, the centroid of its reference landmarks
  projected onto the target plane, to the found plane), ``landmark_distance_mm`` (mean distance of the
  reference landmarks to the found plane: the metric of Alansary et al.).
* ``info``: ``angle_deg``, ``distance_mm``, ``error`` (``E``) of the state after the step,
  ``final_angle_deg`` / ``final_distance_mm`` (NaN unless the episode ended), ``oscillated``,
  ``scale``; ``final_state`` (added by :meth:`Environment.step`).

Network input: the Q-networks' ``(..., A, k, X, Y, Z)`` with ``A = 1``, the ``k`` frames as channels
and the slab ``(S, H, W)`` as the spatial axes (the patch trunk takes per-axis patch sizes, e.g.
``(3, 4, 4)`` for ``S = 3``). The shipped configs use ``k = 1``: the slab's slices (``slice_gap``
apart) already show the off-plane anatomy, and history frames of a plane that moved by whole degrees
add little; ``k > 1`` is supported.

Replay without pixels: :meth:`PlaneEnv.obs_state` keeps the volume index, the ``k`` newest planes
``(A, k, 4)`` (normal, offset) and the scale; :meth:`PlaneEnv.render` re-renders them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmed.config import bounded, check_fields
from jaxmed.data.planes import PlaneDefinition, get_plane
from jaxmed.envs.base import (
    Box,
    ConfiguredEnv,
    Discrete,
    check_discrete_action,
    check_labels_present,
    check_volume_bank,
    episode_end,
    image_box,
    oscillation,
)
from jaxmed.errors import ConfigError
from jaxmed.ops.linalg import HIGHEST, apply_affine, vdot
from jaxmed.ops.plane import (
    plane_basis,
    plane_distance_angle,
    point_plane_distance,
    sample_plane_world_from_stack,
    sample_plane_world_packed,
)

N_ACTIONS = 8
ACTION_NAMES = ("+theta_x", "-theta_x", "+theta_y", "-theta_y", "+theta_z", "-theta_z", "+offset", "-offset")


# ------------------------------------------------------------------ configuration, params, state


def _floats(value) -> tuple[float, ...]:
    return (float(value),) if np.ndim(value) == 0 else tuple(float(v) for v in value)


@dataclasses.dataclass(frozen=True)
class PlaneConfig:
    """Static configuration (hashable; fixes the array shapes).

    Attributes:
      target: a registered plane (:data:`jaxmed.data.planes.PLANES`: ``acpc_axial``, ``midsagittal``,
        ``coronal_ac``, ``coronal_pc``, ``phantom``).
      size: ``H = W``, samples per slice side.
      n_slices: ``S``, slices in the slab (odd: the middle one lies on the plane).
      frames: ``k``, past planes rendered into the observation (frame 0 = now).
      levels: bank pyramid level sampled at each scale, finest scale first (non-decreasing).
      angle_steps: degrees per angle action at each scale, finest first.
      offset_steps: mm per offset action at each scale, finest first.
      slice_gap: distance between slices in units of the level's voxel spacing.
      osc_window: how many recent planes the oscillation test looks at.
    """

    target: str = "acpc_axial"
    size: int = bounded(48, 1)
    n_slices: int = bounded(3, 1)
    frames: int = bounded(1, 1)
    levels: tuple[int, ...] = (0, 0, 0, 0)
    angle_steps: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    offset_steps: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    slice_gap: float = bounded(1.0, 0.0, low_open=True)
    osc_window: int = bounded(8, 1)

    def __post_init__(self):
        get_plane(self.target)  # ConfigError for unknown names
        levels = (int(self.levels),) if np.ndim(self.levels) == 0 else tuple(int(v) for v in self.levels)
        angles, offsets = _floats(self.angle_steps), _floats(self.offset_steps)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "angle_steps", angles)
        object.__setattr__(self, "offset_steps", offsets)
        check_fields(self)
        if not (len(levels) == len(angles) == len(offsets)) or not levels:
            raise ConfigError(
                f"PlaneConfig: levels, angle_steps and offset_steps need one entry per scale (finest first), "
                f"got {len(levels)}, {len(angles)} and {len(offsets)}"
            )
        if levels[0] < 0 or any(b < a for a, b in zip(levels, levels[1:])):
            raise ConfigError(f"PlaneConfig: levels must be non-negative and non-decreasing (finest scale first), got {levels}")
        if min(angles) <= 0 or min(offsets) <= 0:
            raise ConfigError("PlaneConfig: angle_steps and offset_steps must be > 0")

    @property
    def n_scales(self) -> int:
        return len(self.levels)

    @property
    def history_len(self) -> int:
        """``H = max(frames, osc_window)``, length of the ring of past planes."""
        return max(self.frames, self.osc_window)

    @property
    def definition(self) -> PlaneDefinition:
        return get_plane(self.target)


@struct.dataclass
class PlaneParams:
    """Numeric parameters; every field is a pytree leaf.

    Attributes:
      max_steps: episode length limit (truncation).
      reward_clip: reward clip (degrees + mm).
      max_start_angle_deg: training starts tilt the target by up to this angle.
      max_start_offset_mm: training starts shift the target's offset by up to ± this.
      terminate_at_target: an agent at the finest scale with error ``E`` (degrees + mm) at most this is
        done; ``<= 0`` disables it (evaluation never uses the ground truth).
      osc_repeats: occurrences of the new plane among the recent ones that make an oscillation.
      osc_tolerance: fraction of the current steps within which two planes count as the same.
    """

    max_steps: int = bounded(200, 1)
    reward_clip: float = bounded(1.0, 0.0, low_open=True)
    max_start_angle_deg: float = bounded(20.0, 0.0, 90.0)
    max_start_offset_mm: float = bounded(20.0, 0.0)
    terminate_at_target: float = 0.0
    osc_repeats: int = bounded(3, 2)
    osc_tolerance: float = bounded(0.3, 0.0)


@struct.dataclass
class PlaneState:
    """Per-environment state (``A`` agents, ``H`` ring length); no pixels.

    Attributes:
      volume: ``()`` int32, bank index.
      normal: ``(A, 3)`` float32 unit normal (world).
      offset: ``(A,)`` float32 mm, ``n . (x - c) = offset`` about the pivot ``c``.
      scale: ``(A,)`` int32 index into the config's scales (0 = finest).
      history: ``(A, H, 4)`` float32 ring of past planes ``(normal, offset)``, newest first.
      since_switch: ``(A,)`` int32 steps since the reset or the last scale switch.
      done: ``(A,)`` bool.
      t: ``()`` int32 steps taken.
      prev_error: ``(A,)`` float32, the plane error ``E`` (degrees + mm) of the current plane.
      target: ``(A, 4)`` float32, the target's normal and offset about the pivot.
      reference: ``(A, 3)`` float32 mm, the target's reference point (on the target plane).
    """

    volume: jax.Array
    normal: jax.Array
    offset: jax.Array
    scale: jax.Array
    history: jax.Array
    since_switch: jax.Array
    done: jax.Array
    t: jax.Array
    prev_error: jax.Array
    target: jax.Array
    reference: jax.Array


@struct.dataclass
class PlaneObsState:
    """What an observation is rendered from: ``volume`` ``()`` int32, ``planes`` ``(A, k, 4)`` float32
    (normal, offset about the pivot) and ``scale`` ``(A,)`` int8; ``5 + 16 k`` bytes per agent."""

    volume: jax.Array
    planes: jax.Array
    scale: jax.Array


# ------------------------------------------------------------------ plane maths (one agent)


def _unit(v):
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def tilt_direction_angle(normal, axis, delta_deg):
    """Change direction angle ``theta_axis = arccos(n_axis)`` by ``delta_deg`` and renormalise
    ``(cos theta_x, cos theta_y, cos theta_z)``: ``(3,)`` float32 unit normal. ``axis`` int (may be
    traced), ``normal`` ``(3,)`` unit."""
    theta = jnp.degrees(jnp.arccos(jnp.clip(normal, -1.0, 1.0)))
    theta = theta + jax.nn.one_hot(axis, 3, dtype=jnp.float32) * delta_deg
    return _unit(jnp.cos(jnp.radians(theta)))


def perturbed_plane(normal, offset, u, v, tilt_deg, direction_rad, shift_mm):
    """A start plane: ``normal`` tilted by ``tilt_deg`` towards ``cos(direction) u + sin(direction) v``
    (unit in-plane vectors), ``offset`` shifted by ``shift_mm``: ``(normal (3,), offset ())``."""
    a = jnp.radians(tilt_deg)
    w = jnp.cos(direction_rad) * u + jnp.sin(direction_rad) * v
    return _unit(jnp.cos(a) * normal + jnp.sin(a) * w), offset + shift_mm


def plane_error(normal, offset, target_normal, target_offset):
    """``E`` = angle between the normals (degrees) + offset difference about the common pivot (mm),
    sign-invariant (:func:`jaxmed.ops.plane.plane_distance_angle`)."""
    angle, dist = plane_distance_angle(normal, offset, target_normal, target_offset)
    return angle + dist


# ------------------------------------------------------------------ the environment


class PlaneEnv(ConfiguredEnv, config=PlaneConfig, params=PlaneParams, name="plane"):
    """View-plane search (module docstring).

    Args:
      config: a :class:`PlaneConfig`.
      labels: the bank's landmark labels, checked now against the target definition when given.
      name: the name reported by :attr:`name`.
    """

    @functools.cached_property
    def definition(self) -> PlaneDefinition:
        """The target plane's definition (``config.definition``)."""
        return self.config.definition

    # -------------------------------------------------------------- descriptions

    @property
    def required_labels(self) -> tuple[str, ...]:
        """The landmarks the target definition reads."""
        return self.definition.labels

    @property
    def metric_labels(self) -> tuple[str, ...]:
        return (self.config.target,)

    @property
    def wants_packed_bank(self) -> bool:
        """Whether a bank built with ``build_bank(..., packed=True)`` renders faster (several distinct
        pyramid levels: each slab is then sampled once, from its own level)."""
        return len(set(self.config.levels)) > 1

    def observation_space(self, params=None, bank=None) -> Box:
        """``(A, k, S, H, W)``; dtype of ``bank`` when given (float32 otherwise)."""
        c = self.config
        return image_box((1, c.frames, c.n_slices, c.size, c.size), bank)

    def action_space(self, params=None) -> Discrete:
        return Discrete(N_ACTIONS, (1,))

    # -------------------------------------------------------------- host-side checks

    def check_labels(self, labels: Sequence[str]) -> None:
        """The landmarks the target definition reads among ``labels``."""
        check_labels_present(self.definition.labels, labels, f"{self.name}: plane {self.config.target!r} needs landmark(s)")

    def check_bank(self, bank) -> None:
        """A :class:`VolumeBank` with the configured levels and the definition's landmarks (static checks)."""
        check_volume_bank(self, bank, self.config.levels)
        self.check_labels(bank.labels)

    def check_action(self, action):
        """``(1,)`` (or scalar) integers in ``0..7``; values checked when concrete."""
        return check_discrete_action(self, action, N_ACTIONS, ", ".join(ACTION_NAMES))


    # -------------------------------------------------------------- geometry of a volume

    def pivot(self, bank, volume) -> jax.Array:
        """``(3,)`` world mm: the centre of the volume's level-0 voxel grid (rotation pivot, view centre)."""
        centre = (bank.shapes[0, volume].astype(jnp.float32) - 1.0) / 2.0
        return apply_affine(centre, bank.affines[0, volume])

    def max_offset(self, bank, volume) -> jax.Array:
        """``()`` mm: half the smallest world extent of the volume (offsets are clipped to ± this)."""
        aff = bank.affines[0, volume]
        spacing = jnp.linalg.norm(aff[:3, :3], axis=0)
        return 0.5 * jnp.min(bank.shapes[0, volume].astype(jnp.float32) * spacing)

    def target_plane(self, bank, volume) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(normal (3,), world offset d (), reference point (3,))`` of the target in ``volume``,
        fitted from the bank's landmarks; the normal is oriented along the definition's normal axis."""
        idx = jnp.asarray([bank.label_index(label) for label in self.definition.labels])
        points = bank.landmarks_world[volume][idx]
        n, d = self.definition.plane(points)
        sign = jnp.where(n[self.definition.normal_axis_index] < 0, -1.0, 1.0)
        n, d = n * sign, d * sign
        return n, d, self.definition.reference_point(points, n, d)

    def plane_world(self, state: PlaneState, bank) -> tuple[jax.Array, jax.Array]:
        """The agents' planes in world coordinates: ``(normal (A, 3), d (A,))`` with ``n . x = d``."""
        c = self.pivot(bank, state.volume)
        return state.normal, state.offset + vdot(state.normal, c)

    def _canonical(self, normal, offset):
        axis = self.definition.normal_axis_index
        sign = jnp.where(normal[..., axis] < 0, -1.0, 1.0)
        return normal * sign[..., None], offset * sign

    # -------------------------------------------------------------- reset

    def _target(self, bank, volume):
        """``(normal (3,), offset about the pivot (), reference point (3,))`` of the target."""
        n_t, d_t, ref = self.target_plane(bank, volume)
        return n_t, d_t - vdot(n_t, self.pivot(bank, volume)), ref

    def _initial_state(self, bank, volume, normal, offset, target=None) -> PlaneState:
        """State at the coarsest scale with plane ``(normal (3,), offset ())`` about the pivot;
        ``target`` is :meth:`_target` of the volume (computed when not given)."""
        c = self.config
        volume = jnp.asarray(volume, jnp.int32)
        n_t, o_t, ref = self._target(bank, volume) if target is None else target
        limit = self.max_offset(bank, volume)
        normal, offset = self._canonical(_unit(jnp.asarray(normal, jnp.float32)), jnp.clip(jnp.asarray(offset, jnp.float32), -limit, limit))
        normal, offset = normal[None], offset[None]
        plane = jnp.concatenate([normal, offset[:, None]], axis=-1)
        return PlaneState(
            volume=volume,
            normal=normal,
            offset=offset,
            scale=jnp.full((1,), c.n_scales - 1, jnp.int32),
            history=jnp.broadcast_to(plane[:, None, :], (1, c.history_len, 4)),
            since_switch=jnp.zeros((1,), jnp.int32),
            done=jnp.zeros((1,), bool),
            t=jnp.zeros((), jnp.int32),
            prev_error=plane_error(normal[0], offset[0], n_t, o_t)[None],
            target=jnp.concatenate([n_t, o_t[None]])[None],
            reference=ref[None],
        )

    def _perturbed_state(self, bank, volume, tilt_deg, direction_rad, shift_mm) -> PlaneState:
        target = self._target(bank, volume)
        n_t, o_t, _ = target
        u, v = plane_basis(n_t, jnp.eye(3)[self.definition.in_plane_axis_index])
        normal, offset = perturbed_plane(n_t, o_t, u, v, tilt_deg, direction_rad, shift_mm)
        return self._initial_state(bank, volume, normal, offset, target)

    def reset_env(self, key, params: PlaneParams, bank) -> PlaneState:
        """Random volume; the target tilted by ``U(0, max_start_angle_deg)`` in a random direction and
        shifted by ``U(-max_start_offset_mm, max_start_offset_mm)``."""
        n_volumes = bank.levels[0].shape[0]
        u = jax.random.uniform(key, (4,), jnp.float32)
        volume = jnp.minimum(jnp.floor(u[0] * n_volumes).astype(jnp.int32), n_volumes - 1)
        tilt = u[1] * jnp.asarray(params.max_start_angle_deg, jnp.float32)
        direction = u[2] * 2.0 * jnp.pi
        shift = (2.0 * u[3] - 1.0) * jnp.asarray(params.max_start_offset_mm, jnp.float32)
        return self._perturbed_state(bank, volume, tilt, direction, shift)

    # -------------------------------------------------------------- evaluation starts (task protocol)

    def eval_params(self, params: PlaneParams) -> PlaneParams:
        """No stop at the target (that uses the ground truth): agents run until they oscillate."""
        return params.replace(terminate_at_target=0.0)

    def eval_states(self, params, bank, n_starts: int, seed: int = 0) -> PlaneState:
        """``E = n_volumes * n_starts`` fixed start states: per volume, ``n_starts`` perturbations of its
        target drawn once from ``seed`` (tilt ``U(0, max_start_angle_deg)`` in a direction ``U(0, 2 pi)``,
        shift ``U(±max_start_offset_mm)``), the same perturbations for every volume."""
        self.check_bank(bank)
        params = self.default_params if params is None else params
        if not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
            raise ConfigError(f"{self.name}: n_starts must be a positive int, got {n_starts!r}")
        rng = np.random.default_rng(seed)
        tilt = rng.uniform(0.0, float(params.max_start_angle_deg), n_starts)
        direction = rng.uniform(0.0, 2 * np.pi, n_starts)
        shift = rng.uniform(-1.0, 1.0, n_starts) * float(params.max_start_offset_mm)
        n_vol = bank.n_volumes
        vols = np.repeat(np.arange(n_vol, dtype=np.int32), n_starts)
        tile = lambda x: jnp.asarray(np.tile(x, n_vol), jnp.float32)  # noqa: E731
        return self._batch_perturbed(bank, jnp.asarray(vols), tile(tilt), tile(direction), tile(shift))

    @functools.partial(jax.jit, static_argnums=(0,))
    def _batch_perturbed(self, bank, volumes, tilt, direction, shift):
        return jax.vmap(self._perturbed_state, in_axes=(None, 0, 0, 0, 0))(bank, volumes, tilt, direction, shift)

    def prior_states(self, bank, n_starts: int = 1, seed: int = 0, max_angle_deg: float = 10.0, normal=None,
                     offset: float = 0.0) -> PlaneState:
        """Start states that need no ground truth: per volume, a prior plane (start 0) and ``n_starts - 1``
        copies tilted by ``U(0, max_angle_deg)`` in seeded directions, at the coarsest scale.

        The prior is ``normal`` ``(3,)`` (world; default: the definition's ``normal_axis``) at ``offset`` mm
        about each volume's pivot (e.g. a template's plane placed relative to its grid centre).
        What :mod:`jaxmed.commands.plane` uses on a new image.
        """
        self.check_bank(bank)
        if not isinstance(n_starts, (int, np.integer)) or n_starts < 1:
            raise ConfigError(f"{self.name}: n_starts must be a positive int, got {n_starts!r}")
        prior = np.eye(3)[self.definition.normal_axis_index] if normal is None else np.asarray(normal, np.float64)
        if prior.shape != (3,) or not np.all(np.isfinite(prior)) or np.linalg.norm(prior) < 1e-6:
            raise ConfigError(f"{self.name}: the prior normal must be a finite non-zero 3-vector, got {normal!r}")
        rng = np.random.default_rng(seed)
        tilt = np.concatenate([[0.0], rng.uniform(0.0, max_angle_deg, n_starts - 1)])
        direction = np.concatenate([[0.0], rng.uniform(0.0, 2 * np.pi, n_starts - 1)])
        n_vol = bank.n_volumes
        vols = np.repeat(np.arange(n_vol, dtype=np.int32), n_starts)
        tile = lambda x: jnp.asarray(np.tile(x, n_vol), jnp.float32)  # noqa: E731
        unit = jnp.asarray(prior / np.linalg.norm(prior), jnp.float32)
        return self._batch_prior(bank, jnp.asarray(vols), tile(tilt), tile(direction), unit, jnp.asarray(offset, jnp.float32))

    @functools.partial(jax.jit, static_argnums=(0,))
    def _batch_prior(self, bank, volumes, tilt, direction, prior, offset):
        u, v = plane_basis(prior, jnp.eye(3, dtype=jnp.float32)[self.definition.in_plane_axis_index])

        def one(volume, tilt, direction):
            normal, o = perturbed_plane(prior, offset, u, v, tilt, direction, 0.0)
            return self._initial_state(bank, volume, normal, o)

        return jax.vmap(one)(volumes, tilt, direction)

    def states_at(self, bank, volumes, normals, offsets) -> PlaneState:
        """Deterministic start states, batched: ``volumes`` ``(E,)``, ``normals`` ``(E, 3)`` (world),
        ``offsets`` ``(E,)`` mm *world* offsets ``d`` (``n . x = d``), at the coarsest scale."""
        self.check_bank(bank)
        return self._batch_world(bank, jnp.asarray(volumes, jnp.int32), jnp.asarray(normals, jnp.float32),
                                 jnp.asarray(offsets, jnp.float32))

    @functools.partial(jax.jit, static_argnums=(0,))
    def _batch_world(self, bank, volumes, normals, offsets):
        def one(volume, normal, d):
            normal = _unit(normal)
            return self._initial_state(bank, volume, normal, d - vdot(normal, self.pivot(bank, volume)))

        return jax.vmap(one)(volumes, normals, offsets)

    def eval_metrics(self, state: PlaneState, params, bank) -> dict[str, jax.Array]:
        """``{"angle_deg", "distance_mm", "landmark_distance_mm"}``, each ``(A,)`` float32 (module docstring)."""
        normal, d = self.plane_world(state, bank)
        idx = jnp.asarray([bank.label_index(label) for label in self.definition.labels])
        points = bank.landmarks_world[state.volume][idx]
        angle, distance = self._angle_distance(state, normal, d)
        landmark = jax.vmap(lambda n, o: self.definition.landmark_distance(points, n, o))(normal, d)
        return {"angle_deg": angle, "distance_mm": distance, "landmark_distance_mm": landmark}

    def _angle_distance(self, state: PlaneState, normal, d):
        """``(angle_deg (A,), distance_mm (A,))`` of world planes against the state's stored target."""
        angle = jax.vmap(lambda n, t: plane_distance_angle(n, 0.0, t[:3], 0.0)[0])(normal, state.target)
        distance = jnp.abs(jax.vmap(point_plane_distance)(state.reference, normal, d))
        return angle, distance

    # -------------------------------------------------------------- step

    def _move(self, normal, offset, action, scale, limit):
        """One agent's move: ``(normal (3,), offset ())`` after ``action`` at scale index ``scale``."""
        c = self.config
        param = action // 2
        sign = jnp.where(action % 2 == 0, 1.0, -1.0)
        angle_step = jnp.asarray(c.angle_steps, jnp.float32)[scale]
        offset_step = jnp.asarray(c.offset_steps, jnp.float32)[scale]
        rotate = param < 3
        tilted = tilt_direction_angle(normal, jnp.minimum(param, 2), sign * angle_step)
        new_normal = jnp.where(rotate, tilted, normal)
        new_offset = jnp.where(rotate, offset, jnp.clip(offset + sign * offset_step, -limit, limit))
        return self._canonical(new_normal, new_offset)

    def step_env(self, key, state: PlaneState, action, params: PlaneParams, bank):
        """One transition, no auto-reset: ``(state, reward, terminated, truncated, info)``."""
        del key  # deterministic
        c = self.config
        action = jnp.reshape(jnp.asarray(action, jnp.int32), (1,))
        live = ~state.done
        limit = self.max_offset(bank, state.volume)
        moved_n, moved_o = jax.vmap(self._move, in_axes=(0, 0, 0, 0, None))(state.normal, state.offset, action, state.scale, limit)
        normal = jnp.where(live[:, None], moved_n, state.normal)
        offset = jnp.where(live, moved_o, state.offset)

        error = jax.vmap(plane_error)(normal, offset, state.target[:, :3], state.target[:, 3])
        clip = jnp.asarray(params.reward_clip, jnp.float32)
        reward = jnp.where(live, jnp.clip(state.prev_error - error, -clip, clip), 0.0).astype(jnp.float32)

        plane = jnp.concatenate([normal, offset[:, None]], axis=-1)  # (A, 4)
        pushed = jnp.concatenate([plane[:, None, :], state.history[:, :-1]], axis=1)  # (A, H, 4)
        tol = jnp.asarray(params.osc_tolerance, jnp.float32)
        angle_tol = tol * jnp.asarray(c.angle_steps, jnp.float32)[state.scale]  # (A,)
        offset_tol = tol * jnp.asarray(c.offset_steps, jnp.float32)[state.scale]
        cos_sim = jnp.einsum("ahj,aj->ah", pushed[..., :3], normal, precision=HIGHEST)
        same = (cos_sim >= jnp.cos(jnp.radians(angle_tol))[:, None]) & (jnp.abs(pushed[..., 3] - offset[:, None]) <= offset_tol[:, None])
        oscillated, since = oscillation(same, state.since_switch, c.osc_window, params.osc_repeats, live)

        at_finest = state.scale == 0
        switch = oscillated & ~at_finest
        thr = jnp.asarray(params.terminate_at_target, jnp.float32)
        reached = at_finest & (thr > 0) & (error <= thr)
        finished = live & ((oscillated & at_finest) | reached)

        new_state = state.replace(
            normal=normal,
            offset=offset,
            scale=jnp.where(switch, state.scale - 1, state.scale),
            history=jnp.where(live[:, None, None], pushed, state.history),
            since_switch=jnp.where(switch, 0, jnp.where(live, since, state.since_switch)),
            done=state.done | finished,
            t=state.t + 1,
            prev_error=jnp.where(live, error, state.prev_error),
        )
        terminated, truncated, ended = episode_end(new_state.done, new_state.t, params.max_steps)
        world_n, world_d = self.plane_world(new_state, bank)
        angle, distance = self._angle_distance(new_state, world_n, world_d)
        info = {
            "angle_deg": angle,
            "distance_mm": distance,
            "error": new_state.prev_error,
            "final_angle_deg": jnp.where(ended, angle, jnp.nan),
            "final_distance_mm": jnp.where(ended, distance, jnp.nan),
            "oscillated": oscillated,
            "scale": new_state.scale,
        }
        return new_state, reward, terminated, truncated, info

    # -------------------------------------------------------------- observation

    def get_obs(self, state: PlaneState, params=None, bank=None) -> jax.Array:
        """``(A, k, S, H, W)`` storage dtype: slabs on the ``k`` newest planes at each agent's scale."""
        return self._render(bank, state.volume, state.history[:, : self.config.frames], state.scale)

    def obs_state(self, state: PlaneState) -> PlaneObsState:
        return PlaneObsState(
            volume=state.volume.astype(jnp.int32),
            planes=state.history[:, : self.config.frames].astype(jnp.float32),
            scale=state.scale.astype(jnp.int8),
        )

    def render(self, obs_state: PlaneObsState, bank) -> jax.Array:
        """``render(obs_state(s), bank) == get_obs(s, params, bank)``."""
        return self._render(bank, obs_state.volume, obs_state.planes, obs_state.scale.astype(jnp.int32))

    def level_spacing(self, bank, volume, level: int) -> jax.Array:
        """``()`` mm: the mean voxel size of a bank level (static ``level``) of ``volume``."""
        return jnp.mean(jnp.linalg.norm(bank.affines[level, volume, :3, :3], axis=0))

    def _render(self, bank, volume, planes, scale) -> jax.Array:
        """Slabs for ``planes`` ``(A, k, 4)`` (normal, offset about the pivot) at scale indices ``scale``
        ``(A,)``. One configured level: sampled directly. Several: from the bank's packed buffer when it
        has one (``build_bank(packed=True)``: each slab sampled once, at its own level), else every
        distinct level is sampled and the agent's own selected (several times the work)."""
        c = self.config
        pivot = self.pivot(bank, volume)
        ref_axis = jnp.eye(3, dtype=jnp.float32)[self.definition.in_plane_axis_index]
        normals, offsets = planes[..., :3], planes[..., 3]
        u, v = jax.vmap(jax.vmap(lambda n: plane_basis(n, ref_axis)))(normals)
        centres = pivot + offsets[..., None] * normals
        distinct = sorted(set(c.levels))
        slab_kw = dict(size=(c.size, c.size), n_slices=c.n_slices, margin=bank.margin)
        if len(distinct) > 1 and bank.packed is not None:
            agent_level = jnp.asarray(c.levels, jnp.int32)[scale]  # (A,) bank levels

            def one_agent(level, centres, normals, u, v):
                aff = bank.affines[level, volume]
                h = jnp.mean(jnp.linalg.norm(aff[:3, :3], axis=0))
                sample = functools.partial(sample_plane_world_packed, bank.packed, bank.level_shapes, level, volume,
                                           jnp.linalg.inv(aff), spacing=h, slice_spacing=c.slice_gap * h, **slab_kw)
                return jax.vmap(sample)(centres, normals, u, v)

            out = jax.vmap(one_agent)(agent_level, centres, normals, u, v)  # (A, k, S, H, W)
        else:
            agent_level = jnp.asarray(c.levels, jnp.int32)[scale]
            out = None
            for level in distinct:
                to_voxel = jnp.linalg.inv(bank.affines[level, volume])
                h = self.level_spacing(bank, volume, level)
                sample = functools.partial(sample_plane_world_from_stack, bank.levels[level], volume, to_voxel,
                                           spacing=h, slice_spacing=c.slice_gap * h, **slab_kw)
                slab = jax.vmap(jax.vmap(sample))(centres, normals, u, v)  # (A, k, S, H, W)
                out = slab if out is None else jnp.where((agent_level == level)[:, None, None, None, None], slab, out)
        dtype = bank.levels[0].dtype
        if dtype == jnp.uint8:
            return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)
        return out.astype(dtype)
