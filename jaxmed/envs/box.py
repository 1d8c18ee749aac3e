"""Bounding-box environment: one agent moves, scales and deforms an axis-aligned 3D box onto a structure.

The formulation of

* Caicedo & Lazebnik, "Active object localization with deep reinforcement learning", ICCV 2015 (a
  box transformed by discrete actions with steps relative to its size, reward ``sign(ΔIoU)``, a
  trigger action rewarded ``+η`` / ``-η`` by an IoU threshold ``τ``);
* Maicas et al., "Deep reinforcement learning for active breast lesion detection from DCE-MRI",
  MICCAI 2017 (the 3D box: translations, scaling, trigger; observation = the box content resampled to
  a fixed grid);
* Navarro et al., "Deep reinforcement learning for organ localization in CT", MIDL 2020 (11 actions:
  6 translations, 2 global scalings, 3 aspect-ratio deformations; reward ``sign(ΔIoU)``; mean IoU
  0.63 on VISCERAL CT).

Shapes and units (one agent, ``A = 1``, so the Q-networks of the landmark envs apply unchanged;
``k`` = ``config.frames``, ``G`` = ``config.grid_size``, ``H = max(k, osc_window)``):

* box: world RAS mm, axis-aligned in world space, stored as ``(centre (3,), size (3,))`` = 6 floats;
  the box is ``[centre - size / 2, centre + size / 2]``.
* target: the axis-aligned world bounding box of the bank landmarks labelled ``"<structure>#<i>"``
  of the episode's volume (points on the structure's surface carried through each subject's warp,
  see :mod:`jaxmed.data.anatomy`; ``organ#i`` points on an ellipsoid for the phantom tests).
* action ``(1,)`` int32 (a scalar is accepted), ``α`` = ``params.alpha``, ``s`` = the box size:
  ``0/1``: centre x ``+/- α s_x``; ``2/3``: y; ``4/5``: z (translations keep the size);
  ``6``: bigger, ``7``: smaller (every side times ``1 + α`` / divided by ``1 + α``, about the centre);
  ``8`` thinner, ``9`` flatter, ``10`` taller (Navarro's aspect-ratio deformations): each divides one
  side by ``1 + α`` about the centre, x (thinner), z (flatter) and y (the box becomes taller relative
  to its depth); together with the global scalings every aspect ratio is reachable, and every move
  has an exact inverse up to rounding (bigger/smaller, ±translation). ``11``: trigger (only when
  ``config.trigger``): the agent declares it has found the structure. After every move the centre
  is clipped into the volume's world bounding box and each side into ``[min_size_mm, extent]``.
* reward ``(1,)`` float32: a move is rewarded ``sign(IoU_new - IoU_old)`` (``config.reward ==
  "sign"``) or ``reward_scale * (IoU_new - IoU_old)`` (``"delta"``); the trigger ``+trigger_reward``
  if ``IoU >= trigger_iou`` else ``-trigger_reward``.
* termination (``done`` ``(1,)``): the trigger, or (``osc_repeats > 0``) an oscillation: the new box
  equals (within 1e-3 mm per coordinate) at least ``osc_repeats`` of the newest ``min(osc_window,
  t + 1)`` boxes, itself included. ``terminated = all(done)``; ``truncated = t >= max_steps`` and not
  terminated.
* observation ``(1, k, G, G, G)`` in the bank's storage dtype (uint8 rounded, not truncated): frame
  ``f`` is the content of the ``f``-th newest box (frame 0 = now; Alansary-style frame history; the
  papers' one-hot action history cannot enter a pixel-only Q-network) enlarged by ``context`` of its
  size on every side, trilinearly resampled on a ``G³`` grid whose corner samples sit on the enlarged
  box's corners (:func:`jaxmed.ops.resample.box_to_grid_affine`), zero outside the volume. Each frame
  is read from the coarsest of ``config.levels`` whose voxels are no larger than the grid spacing
  (``max level spacing <= min grid spacing``; the finest when none is), so a large box costs the same
  as a small one and is averaged over the level's pooled voxels instead of point-sampling level 0.
  With several levels, a bank built with ``packed=True`` (:attr:`BoxEnv.wants_packed_bank`) reads
  each sample from its frame's level in one gather; otherwise every candidate level is sampled and
  selected (3x the gathers for three levels).
* ``info``: ``iou`` ``(1,)``, ``final_iou``, ``final_centre_error_mm``, ``final_wall_distance_mm``
  (``(1,)``, NaN unless the episode ended), ``triggered``, ``oscillated`` ``(1,)`` bool; all of the
  pre-reset state. ``info["final_state"]`` (added by :meth:`Environment.step`) is the ended state.

Replay without pixels: :meth:`BoxEnv.obs_state` is the volume index and the ``k`` newest boxes
(``4 + 24 k`` bytes); :meth:`BoxEnv.render` re-renders them.

Evaluation: :meth:`BoxEnv.eval_states` starts from fixed boxes: per volume, the box centred in the
volume with sides ``(start_size_lo + start_size_hi) / 2`` times the volume's world extent, then
``n_starts - 1`` boxes drawn once (seeded) from the training start distribution.
:meth:`BoxEnv.eval_metrics` gives ``iou``, ``centre_error_mm`` and ``wall_distance_mm`` (mean absolute
distance of the six faces to the target's, Navarro's wall distance).
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
from jaxmed.envs.base import (
    Box,
    ConfiguredEnv,
    Discrete,
    check_discrete_action,
    check_levels,
    check_volume_bank,
    episode_end,
    image_box,
)
from jaxmed.errors import ConfigError, LandmarkError
from jaxmed.ops.iou import box_iou
from jaxmed.ops.linalg import apply_affine, matmul
from jaxmed.ops.resample import affine_grid, box_to_grid_affine, trilinear_levels

N_MOVES = 11
ACTION_NAMES = ("+x", "-x", "+y", "-y", "+z", "-z", "bigger", "smaller", "thinner", "flatter", "taller", "trigger")
OSC_TOLERANCE_MM = 1e-3
REWARDS = ("sign", "delta")


def structure_labels(labels: Sequence[str], structure: str) -> tuple[str, ...]:
    """The labels ``"<structure>#<i>"`` among ``labels``, in their order."""
    prefix = f"{structure}#"
    return tuple(l for l in labels if l.startswith(prefix))


def target_point_labels(env_name: str, structure: str, n_points: int, labels: Sequence[str] | None) -> tuple[str, ...]:
    """The bank labels a box env reads for ``structure``.

    ``n_points > 0``: exactly ``"<structure>#000" ... "<structure>#{n-1}"``; ``n_points == 0``: every
    ``"<structure>#<i>"`` among ``labels``, or, without ``labels``, the point count of the anatomy
    definition (:data:`jaxmed.data.anatomy.STRUCTURES`). Checked against ``labels`` when given:
    :class:`LandmarkError` naming the structures the labels have points for.
    """
    from jaxmed.data.anatomy import STRUCTURES, point_labels

    if n_points > 0:
        wanted = point_labels(structure, n_points)
    elif labels is not None:
        wanted = structure_labels(labels, structure)
    elif structure in STRUCTURES:
        wanted = point_labels(structure, STRUCTURES[structure].n_points)
    else:
        raise ConfigError(f"{env_name}: structure {structure!r} is not one of jaxmed.data.anatomy.STRUCTURES "
                          f"({', '.join(STRUCTURES)}): give n_points or the bank labels")
    if labels is not None:
        missing = [l for l in wanted if l not in labels]
        if len(wanted) < 2 or missing:
            groups = sorted({l.split("#", 1)[0] for l in labels if "#" in l})
            raise LandmarkError(
                f"{env_name}: unknown structure {structure!r}: the bank lacks its points "
                f"({len(wanted) - len(missing)} of {max(len(wanted), 2)} labelled '{structure}#<i>'); structures with "
                f"points: {', '.join(groups) or 'none'} (see jaxmed.data.anatomy.structure_landmarks)"
            )
    return wanted


# ------------------------------------------------------------------ configuration, params, state


@dataclasses.dataclass(frozen=True)
class BoxConfig:
    """Static configuration (hashable; fixes the array shapes).

    Attributes:
      structure: the target structure; its points are the bank labels ``"<structure>#<i>"``.
      n_points: how many points (labels ``#000 .. #{n-1}``); 0: all of the bank's, or the anatomy
        definition's count (:func:`target_point_labels`).
      grid_size: ``G``, samples per side of the resampled observation.
      frames: ``k``, boxes rendered into the observation (frame 0 = now).
      context: margin added on every side of the box before resampling, as a fraction of its size.
      levels: bank pyramid levels the observation may be read from, finest first, strictly increasing.
      trigger: add the trigger action (12 actions instead of 11).
      reward: ``"sign"`` (sign of the IoU change, the papers') or ``"delta"`` (scaled IoU change).
      osc_window: how many recent boxes the oscillation test looks at.
    """

    structure: str = "organ"
    n_points: int = bounded(0, 0)
    grid_size: int = bounded(32, 2)
    frames: int = bounded(1, 1)
    context: float = bounded(0.25, 0.0, 2.0)  # fraction of the box size
    levels: tuple[int, ...] = (0,)
    trigger: bool = False
    reward: str = "sign"
    osc_window: int = bounded(8, 1)

    def __post_init__(self):
        check_fields(self)
        if not self.structure or "#" in self.structure:
            raise ConfigError(f"BoxConfig: structure must be a non-empty name without '#', got {self.structure!r}")
        check_levels(self, "BoxConfig")
        if self.reward not in REWARDS:
            raise ConfigError(f"BoxConfig: reward must be one of {REWARDS}, got {self.reward!r}")

    @property
    def n_actions(self) -> int:
        return N_MOVES + int(self.trigger)

    @property
    def history_len(self) -> int:
        return max(self.frames, self.osc_window)


@struct.dataclass
class BoxParams:
    """Numeric parameters (pytree leaves: vmap over them for sweeps).

    Attributes:
      max_steps: episode length limit (truncation).
      alpha: step size relative to the box size (translations ``α s``, scalings ``1 + α``).
      trigger_reward: ``η``, the trigger's reward magnitude.
      trigger_iou: ``τ``, the IoU at or above which the trigger is rewarded ``+η``.
      reward_scale: factor of the IoU change for ``reward == "delta"``.
      osc_repeats: occurrences of the new box among the recent ones that end the episode (0: never).
      min_size_mm: smallest box side, mm.
      start_size_lo, start_size_hi: training start boxes have sides uniform in this range, as
        fractions of the volume's world extent per axis.
      start_centre_range: training start centres lie uniformly within ± this fraction of the extent
        around the volume centre.
      start_target_jitter: ``> 0``: start instead near the target: centre ± this fraction of the
        target size, sides the target's times a factor in ``[1 / (1 + j), 1 + j]`` (uses the ground
        truth: a curriculum for training only).
    """

    max_steps: int = bounded(100, 1)
    alpha: float = bounded(0.2, 0.0, 1.0, low_open=True, high_open=True)
    trigger_reward: float = bounded(3.0, 0.0)
    trigger_iou: float = bounded(0.6, 0.0, 1.0)
    reward_scale: float = bounded(10.0, 0.0, low_open=True)
    osc_repeats: int = bounded(3, 0)
    min_size_mm: float = bounded(4.0, 0.0, low_open=True)
    start_size_lo: float = bounded(0.3, 0.0, 1.0, low_open=True)
    start_size_hi: float = bounded(0.7, 0.0, 1.0, low_open=True)
    start_centre_range: float = bounded(0.2, 0.0, 1.0)
    start_target_jitter: float = bounded(0.0, 0.0)


@struct.dataclass
class BoxState:
    """Per-environment state: a few hundred bytes, no pixels.

    Attributes:
      volume: ``()`` int32, bank index of the volume.
      history: ``(1, H, 6)`` float32, the newest ``H`` boxes ``(centre, size)`` in world mm, newest
        first (``history[:, 0]`` is the current box); refilled with the start box at reset.
      done: ``(1,)`` bool.
      t: ``()`` int32, steps taken.
      iou: ``(1,)`` float32, IoU of the current box with the target.
    """

    volume: jax.Array
    history: jax.Array
    done: jax.Array
    t: jax.Array
    iou: jax.Array

    @property
    def box(self) -> jax.Array:
        """``(1, 6)`` the current box ``(centre, size)``, mm."""
        return self.history[:, 0]


@struct.dataclass
class BoxObsState:
    """What an observation is rendered from: ``volume`` ``()`` int32 and ``boxes`` ``(1, k, 6)`` float32 mm."""

    volume: jax.Array
    boxes: jax.Array


# ------------------------------------------------------------------ geometry helpers (pure, jittable)


def box_corners(box: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(..., 6)`` ``(centre, size)`` -> ``(box_min, box_max)``, each ``(..., 3)``."""
    return box[..., :3] - 0.5 * box[..., 3:], box[..., :3] + 0.5 * box[..., 3:]


def apply_action(box: jax.Array, action: jax.Array, alpha) -> jax.Array:
    """The box ``(6,)`` after move ``action`` in ``0..10`` (no clipping; a trigger leaves it unchanged)."""
    centre, size = box[:3], box[3:]
    axis = jnp.arange(3)
    translate = action < 6
    sign = jnp.where(action % 2 == 0, 1.0, -1.0)
    centre = jnp.where(translate & (axis == action // 2), centre + sign * alpha * size, centre)
    grow = 1.0 + alpha
    factor = jnp.ones(3)
    factor = jnp.where(action == 6, grow, factor)
    factor = jnp.where(action == 7, 1.0 / grow, factor)
    deform_axis = jnp.asarray([0, 2, 1])[jnp.clip(action - 8, 0, 2)]  # thinner: x, flatter: z, taller: y
    factor = jnp.where((action >= 8) & (action <= 10) & (axis == deform_axis), 1.0 / grow, factor)
    return jnp.concatenate([centre, size * factor])


def volume_world_bounds(affine: jax.Array, extent: jax.Array) -> tuple[jax.Array, jax.Array]:
    """World bounding box ``(lo (3,), hi (3,))`` mm of the voxel centres of a grid of ``extent`` voxels."""
    corners = jnp.stack(jnp.meshgrid(*[jnp.asarray([0.0, 1.0])] * 3, indexing="ij"), -1).reshape(8, 3)
    vox = corners * (extent.astype(jnp.float32) - 1.0)
    world = apply_affine(vox, affine)
    return world.min(0), world.max(0)


def start_box(lo, hi, u, size_lo, size_hi, centre_range) -> jax.Array:
    """A random box ``(6,)`` ``(centre, size)`` in a volume with world bounds ``lo``, ``hi`` ``(3,)`` mm,
    from 6 uniforms ``u`` in [0, 1): sides ``(size_lo + u[:3] (size_hi - size_lo)) * extent``, centre
    ``middle + (2 u[3:] - 1) centre_range * extent``; ``u = 0.5`` gives the centred box of middle size.
    The start distribution of the box and corner-pair environments."""
    extent, middle = hi - lo, 0.5 * (lo + hi)
    size = extent * (size_lo + u[0:3] * (size_hi - size_lo))
    centre = middle + (2.0 * u[3:6] - 1.0) * centre_range * extent
    return jnp.concatenate([centre, size])


# ------------------------------------------------------------------ the environment


class BoxEnv(ConfiguredEnv, config=BoxConfig, params=BoxParams, name="box"):
    """Single-agent bounding-box search (module docstring).

    Args:
      config: a :class:`BoxConfig`.
      labels: the landmark labels of the bank(s) this env will run on (``bank.labels``): the target's
        point labels are resolved from them now (:class:`LandmarkError` if the structure has fewer
        than two points there). Without them the labels are resolved from each bank, and
        :attr:`required_labels` is unavailable.
      name: the name reported by :attr:`name`.
    """

    # -------------------------------------------------------------- descriptions

    def observation_space(self, params=None, bank=None) -> Box:
        """``(1, k, G, G, G)``; dtype of ``bank`` when given (float32 otherwise)."""
        c = self.config
        return image_box((1, c.frames, c.grid_size, c.grid_size, c.grid_size), bank)

    def action_space(self, params=None) -> Discrete:
        return Discrete(self.config.n_actions, (1,))

    @property
    def wants_packed_bank(self) -> bool:
        """Whether a bank with the packed pyramid (``build_bank(..., packed=True)``) makes this env
        faster: with several ``levels`` every sample is then one gather from its frame's level
        instead of one per candidate level (measured 3-5x faster rendering on CPU)."""
        return len(self.config.levels) > 1

    @property
    def required_labels(self) -> tuple[str, ...]:
        """The target structure's point labels ``"<structure>#<i>"`` (:func:`target_point_labels`)."""
        return self._point_labels(self.labels)

    @property
    def metric_labels(self) -> tuple[str, ...]:
        return (self.config.structure,)

    # -------------------------------------------------------------- host-side checks

    def _point_labels(self, labels: Sequence[str] | None) -> tuple[str, ...]:
        return target_point_labels(self.name, self.config.structure, self.config.n_points, labels)

    def check_labels(self, labels: Sequence[str]) -> None:
        """At least two points of the target structure among ``labels``."""
        self._point_labels(labels)

    def _point_indices(self, bank) -> np.ndarray:
        return np.array([bank.labels.index(l) for l in self._point_labels(bank.labels)], np.int32)

    def check_bank(self, bank) -> None:
        """Raise a :class:`ConfigError` / :class:`LandmarkError` if ``bank`` cannot serve this env
        (static attributes only, so a traced bank works too)."""
        check_volume_bank(self, bank, self.config.levels)
        self._point_indices(bank)

    def check_action(self, action):
        """Raise :class:`ConfigError` unless ``action`` is one integer in ``0..n_actions-1`` (shape ``(1,)`` or ``()``)."""
        return check_discrete_action(self, action, self.config.n_actions, "±x, ±y, ±z, bigger, smaller, thinner, flatter, taller, trigger")


    # -------------------------------------------------------------- geometry

    def target_box(self, bank, volume) -> tuple[jax.Array, jax.Array]:
        """``(box_min, box_max)`` ``(3,)`` world mm: the bounding box of the structure's points in ``volume``."""
        points = bank.landmarks_world[volume][jnp.asarray(self._point_indices(bank))]
        return points.min(0), points.max(0)

    def _iou(self, bank, volume, box) -> jax.Array:
        """``(1,)`` IoU of boxes ``(1, 6)`` with the target."""
        lo, hi = box_corners(box)
        t_lo, t_hi = self.target_box(bank, volume)
        return box_iou(lo, hi, t_lo, t_hi)

    def _clip(self, bank, volume, box, params) -> jax.Array:
        """Centre into the volume's world bounds, sides into ``[min_size_mm, extent]``; ``(..., 6)``."""
        lo, hi = volume_world_bounds(bank.affines[0, volume], bank.shapes[0, volume])
        size = jnp.clip(box[..., 3:], params.min_size_mm, jnp.maximum(hi - lo, params.min_size_mm))
        return jnp.concatenate([jnp.clip(box[..., :3], lo, hi), size], axis=-1)

    def boxes_world(self, state: BoxState) -> jax.Array:
        """``(1, 2, 3)`` the current box's ``(min, max)`` corners, world mm (the agent's answer)."""
        return jnp.stack(box_corners(state.box), axis=-2)

    # -------------------------------------------------------------- reset

    def _initial_state(self, bank, volume, box, params) -> BoxState:
        c = self.config
        volume = jnp.asarray(volume, jnp.int32)
        box = self._clip(bank, volume, jnp.broadcast_to(jnp.asarray(box, jnp.float32), (1, 6)), params)
        return BoxState(
            volume=volume,
            history=jnp.broadcast_to(box[:, None, :], (1, c.history_len, 6)),
            done=jnp.zeros((1,), bool),
            t=jnp.zeros((), jnp.int32),
            iou=self._iou(bank, volume, box),
        )

    def _start_box(self, bank, volume, u, params) -> jax.Array:
        """A training start box ``(6,)`` from 9 uniforms ``u`` in [0, 1) (module docstring)."""
        lo, hi = volume_world_bounds(bank.affines[0, volume], bank.shapes[0, volume])
        random_box = start_box(lo, hi, u[:6], params.start_size_lo, params.start_size_hi, params.start_centre_range)
        jitter = jnp.asarray(params.start_target_jitter, jnp.float32)
        t_lo, t_hi = self.target_box(bank, volume)
        t_size = t_hi - t_lo
        near_centre = 0.5 * (t_lo + t_hi) + (2.0 * u[3:6] - 1.0) * jitter * t_size
        near_size = t_size * jnp.exp((2.0 * u[6:9] - 1.0) * jnp.log1p(jitter))
        return jnp.where(jitter > 0, jnp.concatenate([near_centre, near_size]), random_box)

    def reset_env(self, key, params: BoxParams, bank) -> BoxState:
        """Random volume and start box (module docstring)."""
        n_volumes = bank.levels[0].shape[0]
        u = jax.random.uniform(key, (10,), jnp.float32)
        volume = jnp.minimum(jnp.floor(u[0] * n_volumes).astype(jnp.int32), n_volumes - 1)
        return self._initial_state(bank, volume, self._start_box(bank, volume, u[1:], params), params)

    def states_at(self, bank, volumes, boxes, params=None) -> BoxState:
        """Deterministic start states, batched: ``volumes`` ``(E,)`` int, ``boxes`` ``(E, 6)`` or ``(E, 1, 6)``
        ``(centre, size)`` world mm (clipped like every box)."""
        params = self.default_params if params is None else params
        self.check_bank(bank)
        volumes = jnp.asarray(volumes, jnp.int32)
        boxes = jnp.asarray(boxes, jnp.float32).reshape(volumes.shape[0], 6)
        return self._batch_states(bank, volumes, boxes, params)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _batch_states(self, bank, volumes, boxes, params):
        return jax.vmap(self._initial_state, in_axes=(None, 0, 0, None))(bank, volumes, boxes, params)

    def eval_states(self, params, bank, n_starts: int, seed: int = 0) -> BoxState:
        """``E = n_volumes * n_starts`` start states: per volume the centred box of middle size, then
        ``n_starts - 1`` boxes drawn (``seed``) from the training start distribution (never near the target)."""
        params = self.default_params if params is None else params
        self.check_bank(bank)
        if n_starts < 1:
            raise ConfigError(f"{self.name}: n_starts must be >= 1, got {n_starts}")
        rng = np.random.default_rng(seed)
        vols, boxes = [], []
        random_starts = params.replace(start_target_jitter=0.0)
        for v in range(bank.n_volumes):
            u = rng.uniform(size=(n_starts, 9)).astype(np.float32)
            u[0] = [0.5] * 6 + [0.0] * 3  # the centred start of middle size
            boxes.append(np.asarray(jax.vmap(lambda ui: self._start_box(bank, v, ui, random_starts))(jnp.asarray(u))))
            vols.append(np.full(n_starts, v, np.int32))
        return self.states_at(bank, np.concatenate(vols), np.concatenate(boxes), params)

    # -------------------------------------------------------------- step

    def step_env(self, key, state: BoxState, action, params: BoxParams, bank):
        """One transition, no auto-reset: ``(state, reward, terminated, truncated, info)``."""
        del key  # deterministic dynamics
        c = self.config
        action = jnp.reshape(jnp.asarray(action, jnp.int32), (1,))
        live = ~state.done
        trigger = live & (action == N_MOVES) if c.trigger else jnp.zeros((1,), bool)
        moved = jax.vmap(apply_action, in_axes=(0, 0, None))(state.box, action, params.alpha)
        box = jnp.where((live & ~trigger)[:, None], self._clip(bank, state.volume, moved, params), state.box)
        iou = self._iou(bank, state.volume, box)

        diff = iou - state.iou
        move_reward = jnp.sign(diff) if c.reward == "sign" else params.reward_scale * diff
        trigger_reward = jnp.where(iou >= params.trigger_iou, params.trigger_reward, -params.trigger_reward)
        reward = jnp.where(live, jnp.where(trigger, trigger_reward, move_reward), 0.0).astype(jnp.float32)

        moving = live & ~trigger
        pushed = jnp.concatenate([box[:, None, :], state.history[:, :-1]], axis=1)
        window = jnp.minimum(c.osc_window, state.t + 2)  # the new box and the newest t + 1 before it
        recent = jnp.arange(c.history_len) < window
        same = jnp.all(jnp.abs(pushed - box[:, None, :]) <= OSC_TOLERANCE_MM, axis=-1) & recent  # (1, H)
        oscillated = moving & (params.osc_repeats > 0) & (jnp.sum(same, axis=-1) >= params.osc_repeats)

        new_state = BoxState(
            volume=state.volume,
            history=jnp.where(moving[:, None, None], pushed, state.history),
            done=state.done | trigger | oscillated,
            t=state.t + 1,
            iou=iou,
        )
        terminated, truncated, ended = episode_end(new_state.done, new_state.t, params.max_steps)
        metrics = self._metrics(bank, state.volume, box)
        nan = jnp.full((1,), jnp.nan, jnp.float32)
        info = {
            "iou": iou,
            "final_iou": jnp.where(ended, iou, nan),
            "final_centre_error_mm": jnp.where(ended, metrics["centre_error_mm"], nan),
            "final_wall_distance_mm": jnp.where(ended, metrics["wall_distance_mm"], nan),
            "triggered": trigger,
            "oscillated": oscillated,
        }
        return new_state, reward, terminated, truncated, info

    # -------------------------------------------------------------- metrics

    def _metrics(self, bank, volume, box) -> dict[str, jax.Array]:
        lo, hi = box_corners(box)
        t_lo, t_hi = self.target_box(bank, volume)
        centre_error = jnp.linalg.norm(0.5 * (lo + hi) - 0.5 * (t_lo + t_hi), axis=-1)
        wall = 0.5 * (jnp.mean(jnp.abs(lo - t_lo), axis=-1) + jnp.mean(jnp.abs(hi - t_hi), axis=-1))
        return {"iou": box_iou(lo, hi, t_lo, t_hi), "centre_error_mm": centre_error, "wall_distance_mm": wall}

    def eval_metrics(self, state: BoxState, params, bank) -> dict[str, jax.Array]:
        """``{"iou", "centre_error_mm", "wall_distance_mm"}``, each ``(1,)`` float32, of the current box."""
        return self._metrics(bank, state.volume, state.box)

    # -------------------------------------------------------------- observation

    def get_obs(self, state: BoxState, params=None, bank=None) -> jax.Array:
        """``(1, k, G, G, G)`` storage dtype: the contents of the ``k`` newest boxes (module docstring)."""
        return self._render(bank, state.volume, state.history[:, : self.config.frames])

    def obs_state(self, state: BoxState) -> BoxObsState:
        return BoxObsState(volume=state.volume.astype(jnp.int32), boxes=state.history[:, : self.config.frames])

    def render(self, obs_state: BoxObsState, bank) -> jax.Array:
        """``render(obs_state(s), bank) == get_obs(s, params, bank)``."""
        return self._render(bank, obs_state.volume, obs_state.boxes)

    def frame_level(self, bank, volume, box) -> jax.Array:
        """``()`` int32 bank level a box ``(6,)`` is read from (module docstring)."""
        c = self.config
        window = box[3:] * (1.0 + 2.0 * c.context)
        grid_spacing = jnp.min(window) / (c.grid_size - 1)
        levels = jnp.asarray(c.levels, jnp.int32)
        spacing = jnp.max(jnp.linalg.norm(bank.affines[levels, volume, :3, :3], axis=-2), axis=-1)  # (L,)
        fine_enough = spacing <= grid_spacing * (1.0 + 1e-4)
        return levels[jnp.max(jnp.where(fine_enough, jnp.arange(len(c.levels)), 0))]

    def _render(self, bank, volume, boxes) -> jax.Array:
        """Resampled contents of boxes ``(1, k, 6)`` of ``volume``: ``(1, k, G, G, G)`` storage dtype."""
        c = self.config
        g = c.grid_size
        dtype = bank.levels[0].dtype

        def frame(box):
            window = box[3:] * (1.0 + 2.0 * c.context)
            to_world = box_to_grid_affine(box[:3] - 0.5 * window, box[:3] + 0.5 * window, g)
            if len(c.levels) == 1:
                level = c.levels[0]
            else:
                level = self.frame_level(bank, volume, box)
            to_voxel = matmul(jnp.linalg.inv(bank.affines[level, volume]), to_world)
            values = trilinear_levels(bank.levels, bank.shapes[:, volume], volume, level, affine_grid(to_voxel, g),
                                      bank.margin, 0.0, candidates=c.levels, packed=bank.packed)
            if dtype == jnp.uint8:
                return jnp.clip(jnp.round(values), 0, 255).astype(jnp.uint8)
            return values.astype(dtype)

        return jax.vmap(jax.vmap(frame))(boxes)
