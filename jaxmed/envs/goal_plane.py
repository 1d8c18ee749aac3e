"""Goal-conditioned view navigation: one policy that finds whichever standard view plane it is shown.

After Amadou et al., "Goal-conditioned reinforcement learning for ultrasound navigation guidance",
MICCAI 2024 (one agent guides the probe to any requested standard view, the goal given as input),
on the view-plane task of Alansary et al., MICCAI 2018 (:mod:`jaxmed.envs.plane`).

Design (the goal lives in the observation, so every learner and network works unchanged):

* Dynamics, actions, reward, multi-scale oscillation / termination, starts and slab rendering are
  those of :class:`jaxmed.envs.plane.PlaneEnv`, run on a *goal frame* view of the bank. Each goal
  plane definition (:mod:`jaxmed.data.planes`) names the world axis its normal is close to
  (``normal_axis``) and the axis that orients its images (``in_plane_axis``). The goal frame is the
  proper rotation ``R`` (``(3, 3)``, world -> frame) that takes ``in_plane_axis`` to +x, the normal
  axis to +z and their cross product ``normal x in_plane`` to +y. The view of the bank has affines
  ``R @ affine`` and landmarks ``R x`` (16 numbers per volume and level: nothing image-sized); the
  plane env runs in it with a frame definition whose normal axis is +z and in-plane axis +x. Because
  ``plane_basis`` and the slab sampling commute with proper rotations, the slabs are exactly those
  a plane env with the goal's own definition renders on the same world plane, and the reward and
  metrics (angles, distances) are rotation invariant. In the frame every goal's normal is near +z,
  so an action means the same thing for every goal (``±theta_x``, ``±theta_y`` tilt the plane about
  the frame's in-plane axes, ``±theta_z`` is nearly a no-op, ``±offset`` shifts along the normal).
* Goal source: at reset an episode draws a goal plane ``g`` uniformly from ``config.goals`` and a
  volume other than the reference. The target is the goal definition applied to the episode volume's
  landmarks; the *goal image* is the slab sampled on the same definition's plane in the *reference
  volume* (``config.reference_volume``, a bank index: the template when the bank is built as
  ``[template] + subjects``), at the agent's current scale. A plane never trained on can be asked
  for by its goal image (and the orientation of its frame): :meth:`GoalPlaneEnv.states_at` with any
  registered definition.

Shapes and units (one agent, ``A = 1``; ``k`` = ``config.frames``, ``S`` = ``config.n_slices``,
``H = W = config.size``; geometry in world RAS mm, degrees):

* action ``(1,)`` int32 in ``0..7`` (a scalar is accepted), as the plane env.
* observation ``(1, k + 1, S, H, W)`` in the bank's storage dtype: channels ``0..k-1`` the plane env's
  slabs on the ``k`` newest planes, channel ``k`` the goal slab (the goal plane in the reference
  volume, sampled at the agent's current level with the same size, spacing and slice gap).
* reward ``(1,)`` float32: ``clip(E_prev - E_new, ±reward_clip)`` with ``E = angle (deg) + offset
  difference (mm)`` to the goal plane of the episode's volume (the plane env's reward).
* ``info``: the plane env's (``angle_deg``, ``distance_mm``, ``final_*``, ``error``, ``oscillated``,
  ``scale``) plus ``goal`` ``(1,)`` int32.
* evaluation: :meth:`GoalPlaneEnv.eval_states` covers every goal from every start of every
  non-reference volume; :meth:`GoalPlaneEnv.eval_metrics` returns ``angle_deg``, ``distance_mm`` and
  ``landmark_distance_mm`` (``(1,)`` each, against the episode's goal);
  :attr:`GoalPlaneEnv.metric_labels` is ``("goal",)`` (the goal changes per episode) and
  :meth:`~jaxmed.envs.goals.GoalConditionedEnv.metric_stats` breaks a result down per goal plane.

Replay without pixels: :meth:`GoalPlaneEnv.obs_state` keeps the plane env's obs state (in the frame),
the frame rotation ``(3, 3)``, the goal plane ``(1, 4)`` (frame normal, offset about the reference's
pivot) and the reference volume index: ``5 + 16 k + 36 + 16 + 4`` bytes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmed.data.planes import PLANES, PlaneDefinition, _three_points, get_plane
from jaxmed.envs.base import Box, Discrete, check_discrete_action, check_labels_present, check_volume_bank, image_box
from jaxmed.envs.goals import GoalConditionedEnv, NavFields, check_goal_config
from jaxmed.envs.plane import N_ACTIONS, PlaneConfig, PlaneEnv, PlaneObsState, PlaneParams, PlaneState, perturbed_plane
from jaxmed.errors import ConfigError
from jaxmed.ops.linalg import HIGHEST, matmul, matvec, vdot
from jaxmed.ops.plane import plane_basis

_AXES = {"R": 0, "A": 1, "S": 2}


def _parallel_through_l3(points):
    """The plane parallel to the one through ``L0, L1, L2`` that passes through ``L3`` (points ``(4, 3)``)."""
    n, _ = _three_points(points[:3])
    return n, vdot(n, points[3])


#: Goal planes beyond :data:`jaxmed.data.planes.PLANES` (phantoms with two goal planes).
EXTRA_GOAL_PLANES: dict[str, PlaneDefinition] = {
    "phantom_parallel_l3": PlaneDefinition(
        "phantom_parallel_l3", ("L0", "L1", "L2", "L3"), ("L3",), "S", "R",
        "plane parallel to the phantom plane (L0, L1, L2) through landmark L3", _parallel_through_l3),
}


def goal_definition(name: str) -> PlaneDefinition:
    """The plane definition of goal ``name``: a registered plane or one of :data:`EXTRA_GOAL_PLANES`."""
    if name in EXTRA_GOAL_PLANES:
        return EXTRA_GOAL_PLANES[name]
    if name not in PLANES:
        raise ConfigError(f"unknown goal plane {name!r}; available: {', '.join(list(PLANES) + list(EXTRA_GOAL_PLANES))}")
    return get_plane(name)


def frame_rotation(definition: PlaneDefinition) -> np.ndarray:
    """``(3, 3)`` float32 proper rotation world -> goal frame: rows ``e_in_plane``, ``e_normal x
    e_in_plane``, ``e_normal`` (the definition's axes go to +x and +z)."""
    n = np.eye(3)[_AXES[definition.normal_axis]]
    i = np.eye(3)[_AXES[definition.in_plane_axis]]
    if abs(n @ i) > 0.5:
        raise ConfigError(f"goal plane {definition.name!r}: normal axis and in-plane axis must differ")
    return np.stack([i, np.cross(n, i), n]).astype(np.float32)


#: A registered plane whose axes are those of the goal frame (normal +S, rows along +R): the frame
#: definition the plane env runs with (only its axes are used; targets come from the goals).
FRAME_PLANE = next(name for name, d in PLANES.items() if (d.normal_axis, d.in_plane_axis) == ("S", "R"))


@dataclasses.dataclass(frozen=True)
class GoalPlaneConfig:
    """Static configuration (hashable).

    Attributes:
      goals: the goal planes an episode draws from (:func:`goal_definition` names).
      size, n_slices, frames, levels, angle_steps, offset_steps, slice_gap, osc_window: as
        :class:`jaxmed.envs.plane.PlaneConfig` (and its defaults).
      reference_volume: bank index of the annotated image the goal slabs are cut from.
    """

    goals: tuple[str, ...] = ("acpc_axial", "midsagittal")
    size: int = PlaneConfig.size
    n_slices: int = PlaneConfig.n_slices
    frames: int = PlaneConfig.frames
    levels: tuple[int, ...] = PlaneConfig.levels
    angle_steps: tuple[float, ...] = PlaneConfig.angle_steps
    offset_steps: tuple[float, ...] = PlaneConfig.offset_steps
    slice_gap: float = PlaneConfig.slice_gap
    osc_window: int = PlaneConfig.osc_window
    reference_volume: int = 0

    def __post_init__(self):
        for g in check_goal_config(self, "plane"):
            frame_rotation(goal_definition(g))  # ConfigError for unknown names
        nav = self.plane_config()  # validates the plane env's options
        for name in ("levels", "angle_steps", "offset_steps", "slice_gap"):
            object.__setattr__(self, name, getattr(nav, name))

    def plane_config(self) -> PlaneConfig:
        """The plane env config the dynamics run with, in the goal frame."""
        return PlaneConfig(target=FRAME_PLANE, size=self.size, n_slices=self.n_slices, frames=self.frames, levels=self.levels,
                              angle_steps=self.angle_steps, offset_steps=self.offset_steps, slice_gap=self.slice_gap,
                              osc_window=self.osc_window)

    @property
    def definitions(self) -> tuple[PlaneDefinition, ...]:
        return tuple(goal_definition(g) for g in self.goals)

    @property
    def labels(self) -> tuple[str, ...]:
        """Every landmark the goal definitions read (first-seen order)."""
        return tuple(dict.fromkeys(label for d in self.definitions for label in d.labels))


@struct.dataclass
class GoalPlaneState(NavFields):
    """Plane env state (in the goal frame) plus the goal.

    Attributes:
      nav: :class:`jaxmed.envs.plane.PlaneState`, geometry in the goal frame.
      goal: ``(1,)`` int32 index into ``config.goals``.
      frame: ``(3, 3)`` float32 rotation world -> goal frame.
      goal_volume: ``()`` int32, bank volume the goal slab is cut from.
      goal_plane: ``(1, 4)`` float32, the goal plane there (frame normal, offset about its pivot, mm).
    """

    nav: PlaneState
    goal: jax.Array
    frame: jax.Array
    goal_volume: jax.Array
    goal_plane: jax.Array


@struct.dataclass
class GoalPlaneObsState:
    """What the observation is rendered from: ``nav`` the plane env's :class:`PlaneObsState` (frame),
    ``frame`` ``(3, 3)``, ``goal_volume`` ``()`` int32, ``goal_plane`` ``(1, 4)`` float32."""

    nav: PlaneObsState
    frame: jax.Array
    goal_volume: jax.Array
    goal_plane: jax.Array


def frame_view(bank, frame):
    """The bank seen in the goal frame: affines ``R @ affine`` and landmarks ``R x`` (``frame`` = ``R``
    ``(3, 3)``); image data untouched."""
    rot = jnp.zeros((4, 4), jnp.float32).at[:3, :3].set(frame).at[3, 3].set(1.0)
    return bank.replace(affines=jnp.einsum("ij,lnjk->lnik", rot, bank.affines, precision=HIGHEST),
                        landmarks_world=matmul(bank.landmarks_world, frame.T))


class GoalPlaneEnv(GoalConditionedEnv, config=GoalPlaneConfig, params=PlaneParams, name="goal-plane"):
    """Goal-conditioned view-plane search (module docstring): a :class:`GoalPlaneConfig`, the bank's
    landmark labels (checked now against every goal definition when given) and the env's name."""

    def __init__(self, config: GoalPlaneConfig | None = None, labels: Sequence[str] | None = None, name: str | None = None):
        super().__init__(config, labels, name)
        self.nav = PlaneEnv(self.config.plane_config(), name=self.name)
        self._frames = np.stack([frame_rotation(d) for d in self.config.definitions])  # (G, 3, 3)

    # -------------------------------------------------------------- descriptions

    @property
    def required_labels(self) -> tuple[str, ...]:
        return self.config.labels

    @property
    def wants_packed_bank(self) -> bool:
        return self.nav.wants_packed_bank

    def observation_space(self, params=None, bank=None) -> Box:
        """``(1, k + 1, S, H, W)``."""
        c = self.config
        return image_box((1, c.frames + 1, c.n_slices, c.size, c.size), bank)

    def action_space(self, params=None) -> Discrete:
        return Discrete(N_ACTIONS, (1,))


    # -------------------------------------------------------------- checks

    def check_labels(self, labels: Sequence[str]) -> None:
        """The landmarks of every goal plane's definition among ``labels``."""
        for d in self.config.definitions:
            check_labels_present(d.labels, labels, f"{self.name}: goal plane {d.name!r} needs landmark(s)")

    def check_bank(self, bank) -> None:
        """A VolumeBank with the configured levels, the goals' landmarks, the reference volume and at
        least one other volume (host side, static attributes only)."""
        check_volume_bank(self, bank, self.config.levels)
        self.check_labels(bank.labels)
        self.check_reference_volume(bank, "slabs")

    def check_action(self, action):
        return check_discrete_action(self, action, N_ACTIONS, "see jaxmed.envs.plane.ACTION_NAMES")

    # -------------------------------------------------------------- goal planes

    def _goal_planes(self, bank, volume, definitions=None):
        """Every goal's plane in ``volume`` (world): ``(normal (G, 3), d (G,), reference point (G, 3))``,
        normals oriented along each definition's normal axis."""
        out = []
        for d in definitions or self.config.definitions:
            points = bank.landmarks_world[volume][jnp.asarray([bank.label_index(label) for label in d.labels])]
            n, off = d.plane(points)
            sign = jnp.where(n[d.normal_axis_index] < 0, -1.0, 1.0)
            n, off = n * sign, off * sign
            out.append((n, off, d.reference_point(points, n, off)))
        return tuple(jnp.stack(x) for x in zip(*out))

    def _frame_target(self, bank, fbank, frame, volume, goal):
        """The goal plane ``goal`` of ``volume`` in the frame: ``(normal (3,), offset about the frame
        pivot (), reference point (3,))`` (the plane env's target triple)."""
        n, d, ref = (x[goal] for x in self._goal_planes(bank, volume))
        n = matvec(frame, n)
        return n, d - vdot(n, self.nav.pivot(fbank, volume)), matvec(frame, ref)

    # -------------------------------------------------------------- reset

    def _state(self, bank, volume, goal, frame, normal, offset, target=None) -> GoalPlaneState:
        """State with the frame plane ``(normal (3,), offset about the pivot ())`` and goal index ``goal``
        (``target``: :meth:`_frame_target` of the volume, computed when not given)."""
        fbank = frame_view(bank, frame)
        target = self._frame_target(bank, fbank, frame, volume, goal) if target is None else target
        ref = self.config.reference_volume
        n_g, o_g, _ = self._frame_target(bank, fbank, frame, ref, goal)
        nav = self.nav._initial_state(fbank, volume, normal, offset, target)
        return GoalPlaneState(nav=nav, goal=jnp.reshape(jnp.asarray(goal, jnp.int32), (1,)), frame=frame,
                              goal_volume=jnp.asarray(ref, jnp.int32), goal_plane=jnp.concatenate([n_g, o_g[None]])[None])

    def _perturbed(self, bank, volume, goal, tilt_deg, direction_rad, shift_mm) -> GoalPlaneState:
        frame = jnp.asarray(self._frames)[goal]
        target = self._frame_target(bank, frame_view(bank, frame), frame, volume, goal)
        n_t, o_t, _ = target
        u, v = plane_basis(n_t, jnp.eye(3, dtype=jnp.float32)[0])
        normal, offset = perturbed_plane(n_t, o_t, u, v, tilt_deg, direction_rad, shift_mm)
        return self._state(bank, volume, goal, frame, normal, offset, target)

    def reset_env(self, key, params: PlaneParams, bank) -> GoalPlaneState:
        """A non-reference volume, a goal plane, and its target tilted by ``U(0, max_start_angle_deg)``
        in a random direction and shifted by ``U(±max_start_offset_mm)`` (as the plane env)."""
        n = bank.levels[0].shape[0]
        k_goal, k_u = jax.random.split(key)
        u = jax.random.uniform(k_u, (4,), jnp.float32)
        volume = jnp.minimum(jnp.floor(u[0] * (n - 1)).astype(jnp.int32), n - 2)
        volume = volume + (volume >= self.config.reference_volume)
        goal = jax.random.randint(k_goal, (), 0, len(self.config.goals), jnp.int32)
        tilt = u[1] * jnp.asarray(params.max_start_angle_deg, jnp.float32)
        shift = (2.0 * u[3] - 1.0) * jnp.asarray(params.max_start_offset_mm, jnp.float32)
        return self._perturbed(bank, volume, goal, tilt, u[2] * 2.0 * jnp.pi, shift)

    def states_at(self, bank, volumes, goals, normals, offsets) -> GoalPlaneState:
        """Deterministic start states, batched: ``volumes`` ``(E,)``, ``goals`` ``(E,)`` indices into
        ``config.goals``, start planes ``normals`` ``(E, 3)`` (world) and ``offsets`` ``(E,)`` world
        offsets ``d`` mm (``n . x = d``), at the coarsest scale."""
        self.check_bank(bank)
        goals = np.asarray(goals)
        if goals.size and (goals.min() < 0 or goals.max() >= len(self.config.goals)):
            raise ConfigError(f"{self.name}: goal indices must lie in 0..{len(self.config.goals) - 1}, got {np.unique(goals).tolist()}")
        normals = np.asarray(normals, np.float64)
        if normals.ndim != 2 or normals.shape[1] != 3 or not np.all(np.isfinite(normals)) or np.any(np.linalg.norm(normals, axis=1) < 1e-6):
            raise ConfigError(f"{self.name}: start normals must be finite non-zero (E, 3) vectors, got shape {normals.shape}")
        return self._batch_world(bank, jnp.asarray(volumes, jnp.int32), jnp.asarray(goals, jnp.int32),
                                 jnp.asarray(normals, jnp.float32), jnp.asarray(offsets, jnp.float32))

    @functools.partial(jax.jit, static_argnums=(0,))
    def _batch_world(self, bank, volumes, goals, normals, offsets):
        def one(volume, goal, normal, d):
            frame = jnp.asarray(self._frames)[goal]
            n = matvec(frame, normal / jnp.linalg.norm(normal))
            return self._state(bank, volume, goal, frame, n, d - vdot(n, self.nav.pivot(frame_view(bank, frame), volume)))

        return jax.vmap(one)(volumes, goals, normals, offsets)

    # -------------------------------------------------------------- evaluation (task protocol)

    def eval_params(self, params: PlaneParams) -> PlaneParams:
        """No stop at the goal (ground truth): agents run until they oscillate."""
        return params.replace(terminate_at_target=0.0)

    def eval_states(self, params, bank, n_starts: int, seed: int = 0) -> GoalPlaneState:
        """``E = (n_volumes - 1) * G * n_starts`` fixed starts: every non-reference volume, every goal,
        ``n_starts`` perturbations of that goal's plane drawn once from ``seed`` (tilt
        ``U(0, max_start_angle_deg)`` in a direction ``U(0, 2 pi)``, shift ``U(±max_start_offset_mm)``),
        the same perturbations for every volume and goal."""
        self.check_bank(bank)
        params = self.default_params if params is None else params
        if not isinstance(n_starts, (int, np.integer)) or isinstance(n_starts, bool) or n_starts < 1:
            raise ConfigError(f"{self.name}: n_starts must be a positive int, got {n_starts!r}")
        rng = np.random.default_rng(seed)
        tilt = rng.uniform(0.0, float(params.max_start_angle_deg), n_starts)
        direction = rng.uniform(0.0, 2 * np.pi, n_starts)
        shift = rng.uniform(-1.0, 1.0, n_starts) * float(params.max_start_offset_mm)
        vols = [v for v in range(bank.n_volumes) if v != self.config.reference_volume]
        G = len(self.config.goals)
        vol = np.repeat(np.asarray(vols, np.int32), G * n_starts)
        goal = np.tile(np.repeat(np.arange(G, dtype=np.int32), n_starts), len(vols))
        tile = lambda x: jnp.asarray(np.tile(x, len(vols) * G), jnp.float32)  # noqa: E731
        return self._batch_perturbed(bank, jnp.asarray(vol), jnp.asarray(goal), tile(tilt), tile(direction), tile(shift))

    @functools.partial(jax.jit, static_argnums=(0,))
    def _batch_perturbed(self, bank, volumes, goals, tilt, direction, shift):
        return jax.vmap(self._perturbed, in_axes=(None, 0, 0, 0, 0, 0))(bank, volumes, goals, tilt, direction, shift)

    def plane_world(self, state: GoalPlaneState, bank) -> tuple[jax.Array, jax.Array]:
        """The agent's plane in world coordinates: ``(normal (1, 3), d (1,))`` with ``n . x = d``."""
        n, d = self.nav.plane_world(state.nav, frame_view(bank, state.frame))
        return matmul(n, state.frame), d

    def eval_metrics(self, state: GoalPlaneState, params, bank) -> dict[str, jax.Array]:
        """``{"angle_deg", "distance_mm", "landmark_distance_mm"}``, each ``(1,)`` float32, against the
        episode's goal plane (:meth:`jaxmed.envs.plane.PlaneEnv.eval_metrics`)."""
        frame_normal, d = self.nav.plane_world(state.nav, frame_view(bank, state.frame))
        angle, distance = self.nav._angle_distance(state.nav, frame_normal, d)
        normal = matmul(frame_normal, state.frame)  # world
        per_goal = []
        for definition in self.config.definitions:
            points = bank.landmarks_world[state.volume][jnp.asarray([bank.label_index(label) for label in definition.labels])]
            per_goal.append(jax.vmap(lambda n, o: definition.landmark_distance(points, n, o))(normal, d))
        landmark = jnp.stack(per_goal)[state.goal[0]]
        return {"angle_deg": angle, "distance_mm": distance, "landmark_distance_mm": landmark}

    # -------------------------------------------------------------- step

    def step_env(self, key, state: GoalPlaneState, action, params: PlaneParams, bank):
        """The plane env's transition in the goal frame: ``(state, reward, terminated, truncated, info)``."""
        nav, reward, terminated, truncated, info = self.nav.step_env(key, state.nav, action, params, frame_view(bank, state.frame))
        return state.replace(nav=nav), reward, terminated, truncated, dict(info, goal=state.goal)

    # -------------------------------------------------------------- observation

    def _goal_slab(self, fbank, goal_volume, goal_plane, scale) -> jax.Array:
        """``(1, 1, S, H, W)``: the goal plane's slab in the reference volume at scale indices ``scale``."""
        return self.nav._render(fbank, goal_volume, goal_plane[:, None, :], scale)

    def _observation(self, bank, nav_obs: PlaneObsState, frame, goal_volume, goal_plane) -> jax.Array:
        fbank = frame_view(bank, frame)
        scale = nav_obs.scale.astype(jnp.int32)
        frames = self.nav._render(fbank, nav_obs.volume, nav_obs.planes, scale)
        return jnp.concatenate([frames, self._goal_slab(fbank, goal_volume, goal_plane, scale)], axis=1)

    def get_obs(self, state: GoalPlaneState, params=None, bank=None) -> jax.Array:
        """``(1, k + 1, S, H, W)``: the slabs on the ``k`` newest planes, then the goal slab."""
        return self._observation(bank, self.nav.obs_state(state.nav), state.frame, state.goal_volume, state.goal_plane)

    def obs_state(self, state: GoalPlaneState) -> GoalPlaneObsState:
        return GoalPlaneObsState(nav=self.nav.obs_state(state.nav), frame=state.frame.astype(jnp.float32),
                                 goal_volume=state.goal_volume.astype(jnp.int32), goal_plane=state.goal_plane.astype(jnp.float32))

    def render(self, obs_state: GoalPlaneObsState, bank) -> jax.Array:
        """``render(obs_state(s), bank) == get_obs(s, params, bank)``."""
        return self._observation(bank, obs_state.nav, obs_state.frame, obs_state.goal_volume, obs_state.goal_plane)
