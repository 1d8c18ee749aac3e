"""Goal-conditioned landmark navigation: one agent that walks to whichever landmark it is shown.

After Amadou et al., "Goal-conditioned reinforcement learning for ultrasound navigation guidance",
MICCAI 2024: instead of one agent per target, a single policy receives the goal as input and is
rewarded for approaching it. Here the goal is a *goal image*: the crop of an annotated reference
image around the target landmark, so a landmark never trained on can be asked for by example. A
goal *id* is encoded the same way (the id selects which reference crop is shown); no learned id
embedding is used, because that would need a second network input and a change to every learner.

Design (the goal lives in the observation, so every learner and network works unchanged):

* Dynamics, reward, oscillation / multi-scale termination and frames are exactly those of
  :class:`jaxmed.envs.landmark.LandmarkEnv` (Ghesu 2016/2019, Alansary 2019): this env runs that
  env on a *goal view* of the bank, a :class:`VolumeBank` whose ``A`` landmarks are the agents'
  current goals (world mm, one per agent), so the reward is the decrease of the distance (mm) to
  the episode's goal, clipped to ``± reward_clip``.
* Goal source: every goal is a (bank volume, level-0 voxel) pair. At reset each agent draws a goal
  label uniformly from ``config.goals``; its goal image is the crop of the *reference volume*
  (``config.reference_volume``, a bank index: the template when the bank is built as ``[template]
  + subjects``) around that label's landmark, and its target is that label's landmark in the
  episode's volume. Episodes never run in the reference volume (that would show the answer).
  Hindsight relabelling (``dqn.her``, through :meth:`GoalLandmarkEnv.relabel`) sets the source to
  the *episode's own* volume at an achieved position; a user's example image (``jaxmed detect --goal-patch``) is a bank volume
  too. The bank stays an argument: nothing image-sized is held by the env.

Shapes and units (``A`` = ``config.n_agents``, ``k`` = ``config.frames``, ``D`` = ``crop_size``):

* action ``(A,)`` int32 in ``0..5`` (as the landmark env; a scalar for one agent).
* observation ``(A, k + 1, D, D, D)`` in the bank's storage dtype: channels ``0..k-1`` the landmark
  env's frames (crops around the ``k`` newest positions at the agent's current level), channel
  ``k`` the goal image: the crop of volume ``goal_volume`` around level-0 voxel ``goal_vox // f``
  at the agent's *current* level ``f``.
* reward ``(A,)`` float32 mm; ``info`` as the landmark env (``distance_mm``, ``final_distance_mm``
  to the goal, ``oscillated``, ``level``) plus ``goal`` ``(A,)`` int32.
* evaluation: :meth:`eval_states` covers every goal label from every start of every non-reference
  volume; :meth:`eval_metrics` returns ``distance_mm`` to the goal; :attr:`metric_labels` is
  ``"goal"`` per agent (the goal changes per episode), and :meth:`GoalConditionedEnv.metric_stats` breaks a
  result down per goal label.
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
from jaxmed.envs.base import Box, Discrete, image_box
from jaxmed.envs.goals import GoalConditionedEnv, NavFields, check_goal_config
from jaxmed.envs.landmark import (
    N_ACTIONS,
    LandmarkConfig,
    LandmarkEnv,
    LandmarkObsState,
    LandmarkParams,
    LandmarkState,
    distance_reward,
    reached_target,
)
from jaxmed.errors import ConfigError
from jaxmed.ops.linalg import apply_affine


@dataclasses.dataclass(frozen=True)
class GoalLandmarkConfig:
    """Static configuration.

    Attributes:
      goals: the goal landmark labels an episode draws from (bank labels).
      n_agents: ``A``, agents per environment, each with its own goal.
      crop_size, frames, levels, osc_window: as :class:`LandmarkConfig`.
      reference_volume: bank index of the annotated image the goal crops are cut from.

    Hindsight relabelling is a learner option (``dqn.her``); this env offers the hooks it calls
    (:meth:`GoalLandmarkEnv.achieved_goal`, :meth:`GoalLandmarkEnv.relabel`).
    """

    goals: tuple[str, ...] = ("L0",)
    n_agents: int = bounded(1, 1)
    crop_size: int = 45
    frames: int = 4
    levels: tuple[int, ...] = (0,)
    osc_window: int = 8
    reference_volume: int = 0

    def __post_init__(self):
        check_goal_config(self, "landmark label")
        check_fields(self)
        nav = self.nav_config()  # validates crop_size / frames / levels / osc_window
        object.__setattr__(self, "levels", nav.levels)

    def nav_config(self) -> LandmarkConfig:
        """The landmark env config the dynamics run with (targets: the per-agent goal slots)."""
        return LandmarkConfig(targets=goal_slots(self.n_agents), crop_size=self.crop_size, frames=self.frames,
                                 levels=self.levels, osc_window=self.osc_window)


def goal_slots(n_agents: int) -> tuple[str, ...]:
    """Internal landmark labels of the goal view (one per agent)."""
    return tuple(f"__goal{i}" for i in range(n_agents))


@struct.dataclass
class GoalLandmarkState(NavFields):
    """Landmark env state plus the goals.

    Attributes:
      nav: :class:`jaxmed.envs.landmark.LandmarkState` (target = the goal).
      goal: ``(A,)`` int32, index into ``config.goals`` (``-1``: a goal not among them, e.g. relabelled).
      goal_world: ``(A, 3)`` float32, the goal's world position (mm) in the episode's volume.
      goal_volume: ``()`` int32, bank volume the goal image is cut from.
      goal_vox: ``(A, 3)`` int32, level-0 voxel of ``goal_volume`` the goal image is centred on.
      osc_done: ``(A,)`` bool, the agent stopped by oscillating at the finest level (the part of
        ``nav.done`` that does not depend on the goal; hindsight relabelling needs it).
    """

    nav: LandmarkState
    goal: jax.Array
    goal_world: jax.Array
    goal_volume: jax.Array
    goal_vox: jax.Array
    osc_done: jax.Array

    pos = property(lambda self: self.nav.pos)  # (A, 3) level-0 voxels, as the landmark state's


@struct.dataclass
class GoalLandmarkObsState:
    """What the observation (and hindsight relabelling) needs: ``nav`` the landmark env's
    :class:`LandmarkObsState`, ``goal_volume`` ``()`` int32, ``goal_vox`` ``(A, 3)`` int16, ``osc_done`` ``(A,)`` bool."""

    nav: LandmarkObsState
    goal_volume: jax.Array
    goal_vox: jax.Array
    osc_done: jax.Array


class GoalLandmarkEnv(GoalConditionedEnv, config=GoalLandmarkConfig, params=LandmarkParams, name="goal-landmark",
                      label_field="goals", label_role="goal"):
    """Goal-conditioned landmark navigation (module docstring); reads the goal landmarks
    (:attr:`required_labels`)."""

    def __init__(self, config: GoalLandmarkConfig | None = None, labels: Sequence[str] | None = None, name: str | None = None):
        super().__init__(config, labels, name)
        self.nav = LandmarkEnv(self.config.nav_config(), name=self.name)

    # -------------------------------------------------------------- descriptions

    @property
    def n_agents(self) -> int:
        return self.config.n_agents

    def observation_space(self, params=None, bank=None) -> Box:
        """``(A, k + 1, D, D, D)``."""
        c = self.config
        return image_box((c.n_agents, c.frames + 1, c.crop_size, c.crop_size, c.crop_size), bank)

    def action_space(self, params=None) -> Discrete:
        return Discrete(N_ACTIONS, (self.n_agents,))

    # -------------------------------------------------------------- checks

    def check_bank(self, bank) -> None:
        """Goals among the bank's labels, a reference volume and at least one other volume, crop and
        levels within the bank (host side, static attributes only)."""
        if bank is None or not hasattr(bank, "levels") or not hasattr(bank, "margin"):
            raise ConfigError(f"{self.name}: needs a VolumeBank (jaxmed.data.bank.build_bank), got {type(bank).__name__}")
        self.check_labels(bank.labels)
        self.check_reference_volume(bank, "crops")
        self.nav.check_bank(bank.replace(labels=self.nav.config.targets))

    def check_action(self, action):
        return self.nav.check_action(action)

    def _goal_indices(self, bank) -> np.ndarray:
        """``(G,)`` int32 bank landmark index of every goal label (static)."""
        return np.array([bank.label_index(g) for g in self.config.goals], np.int32)

    # -------------------------------------------------------------- the goal view of the bank

    def goal_view(self, bank, goal_world):
        """The bank as the landmark env should see it: its ``A`` landmarks are ``goal_world`` ``(A, 3)``
        mm (in every volume; only the episode's volume is ever read by the landmark dynamics)."""
        n = bank.landmarks_world.shape[0]
        world = jnp.broadcast_to(goal_world[None].astype(jnp.float32), (n,) + goal_world.shape)
        return bank.replace(labels=self.nav.config.targets, landmarks_world=world)  # landmarks_vox is not read

    # -------------------------------------------------------------- reset

    def _state(self, bank, volume, start, goal, goal_world, goal_volume, goal_vox) -> GoalLandmarkState:
        nav = self.nav._initial_state(self.goal_view(bank, goal_world), volume, start)
        return GoalLandmarkState(nav=nav, goal=jnp.asarray(goal, jnp.int32), goal_world=goal_world.astype(jnp.float32),
                            goal_volume=jnp.asarray(goal_volume, jnp.int32), goal_vox=jnp.asarray(goal_vox, jnp.int32),
                            osc_done=jnp.zeros((self.n_agents,), bool))

    def _labelled_goal(self, bank, volume, goal):
        """``(goal_world (A, 3) mm in ``volume``, goal_vox (A, 3) level-0 voxels of the reference)`` of goal indices ``goal``."""
        idx = jnp.asarray(self._goal_indices(bank))[goal]
        ref = self.config.reference_volume
        return bank.landmarks_world[volume, idx], jnp.round(bank.landmarks_vox[0, ref, idx]).astype(jnp.int32)

    def reset_env(self, key, params: LandmarkParams, bank) -> GoalLandmarkState:
        """A non-reference volume, a goal label per agent, random starts (central 80 % of the volume,
        or ± ``start_radius_mm`` around the goal)."""
        c = self.config
        A = c.n_agents
        n = bank.levels[0].shape[0]
        k_goal, k_u = jax.random.split(key)
        u = jax.random.uniform(k_u, (1 + 6 * A,), jnp.float32)
        volume = jnp.minimum(jnp.floor(u[0] * (n - 1)).astype(jnp.int32), n - 2)
        volume = volume + (volume >= c.reference_volume)
        goal = jax.random.randint(k_goal, (A,), 0, len(c.goals), jnp.int32)
        goal_world, goal_vox = self._labelled_goal(bank, volume, goal)
        u_centre, u_radius = u[1:].reshape(2, A, 3)
        ext = bank.shapes[0, volume].astype(jnp.float32)
        lo, hi = jnp.floor(0.1 * (ext - 1)), jnp.ceil(0.9 * (ext - 1))
        central = jnp.minimum(lo + jnp.floor(u_centre * (hi - lo + 1)), hi).astype(jnp.int32)
        radius = jnp.asarray(params.start_radius_mm, jnp.float32)
        inv = jnp.linalg.inv(bank.affines[0, volume])
        near = jnp.round(apply_affine(goal_world + (2.0 * u_radius - 1.0) * radius, inv)).astype(jnp.int32)
        start = jnp.where(radius > 0, near, central)
        return self._state(bank, volume, start, goal, goal_world, jnp.asarray(c.reference_volume, jnp.int32), goal_vox)

    def states_at(self, bank, volumes, starts, goals) -> GoalLandmarkState:
        """Deterministic start states, batched: ``volumes`` ``(E,)``, ``starts`` ``(E, A, 3)`` level-0
        voxels, ``goals`` ``(E, A)`` indices into ``config.goals`` (goal images from the reference)."""
        self.check_bank(bank)
        goals = np.asarray(goals)
        if goals.size and (goals.min() < 0 or goals.max() >= len(self.config.goals)):
            raise ConfigError(f"{self.name}: goal indices must lie in 0..{len(self.config.goals) - 1}, got {np.unique(goals).tolist()}")
        return self._states_at(bank, jnp.asarray(volumes, jnp.int32), jnp.asarray(starts, jnp.int32), jnp.asarray(goals, jnp.int32))

    @functools.partial(jax.jit, static_argnums=(0,))
    def _states_at(self, bank, volumes, starts, goals):
        def one(volume, start, goal):
            goal_world, goal_vox = self._labelled_goal(bank, volume, goal)
            return self._state(bank, volume, start, goal, goal_world, self.config.reference_volume, goal_vox)

        return jax.vmap(one)(volumes, starts, goals)

    def with_goal(self, state: GoalLandmarkState, bank, goal_volume, goal_vox, goal_world=None) -> GoalLandmarkState:
        """``state`` (unbatched) with a goal given by example: the image of bank volume ``goal_volume``
        around level-0 voxel(s) ``goal_vox`` ``(3,)`` / ``(A, 3)``. ``goal_world`` ``(A, 3)`` mm is the
        goal in the episode's volume when known (it only drives rewards and metrics; NaN otherwise)."""
        A = self.n_agents
        goal_vox = jnp.broadcast_to(jnp.round(jnp.asarray(goal_vox)).astype(jnp.int32), (A, 3))
        if goal_world is None:
            world = jnp.full((A, 3), jnp.nan, jnp.float32)
        else:
            world = jnp.broadcast_to(jnp.asarray(goal_world, jnp.float32), (A, 3))
        return self._state(bank, state.nav.volume, state.nav.pos, jnp.full((A,), -1, jnp.int32), world, goal_volume, goal_vox)

    # -------------------------------------------------------------- step

    def step_env(self, key, state: GoalLandmarkState, action, params: LandmarkParams, bank):
        """The landmark env's transition towards the goal: ``(state, reward, terminated, truncated, info)``."""
        view = self.goal_view(bank, state.goal_world)
        nav, reward, terminated, truncated, info = self.nav.step_env(key, state.nav, action, params, view)
        stopped = ~state.nav.done & info["oscillated"] & (state.nav.level == 0)
        new = state.replace(nav=nav, osc_done=state.osc_done | stopped)
        info = dict(info, goal=state.goal)
        return new, reward, terminated, truncated, info

    # -------------------------------------------------------------- observation

    def _goal_crop(self, bank, goal_volume, goal_vox, level) -> jax.Array:
        """``(A, 1, D, D, D)``: the goal image at each agent's current level."""
        return self.nav._render(bank, goal_volume, goal_vox[:, None, :].astype(jnp.int32), level)

    def get_obs(self, state: GoalLandmarkState, params=None, bank=None) -> jax.Array:
        """``(A, k + 1, D, D, D)``: the frames, then the goal image."""
        frames = self.nav.get_obs(state.nav, params, bank)
        return jnp.concatenate([frames, self._goal_crop(bank, state.goal_volume, state.goal_vox, state.nav.level)], axis=1)

    def obs_state(self, state: GoalLandmarkState) -> GoalLandmarkObsState:
        return GoalLandmarkObsState(nav=self.nav.obs_state(state.nav), goal_volume=state.goal_volume.astype(jnp.int32),
                            goal_vox=state.goal_vox.astype(jnp.int16), osc_done=state.osc_done)

    def render(self, obs_state: GoalLandmarkObsState, bank) -> jax.Array:
        """``render(obs_state(s), bank) == get_obs(s, params, bank)``."""
        frames = self.nav.render(obs_state.nav, bank)
        goal = self._goal_crop(bank, obs_state.goal_volume, obs_state.goal_vox, obs_state.nav.level.astype(jnp.int32))
        return jnp.concatenate([frames, goal], axis=1)

    # -------------------------------------------------------------- hindsight relabelling hooks

    def achieved_goal(self, obs_state: GoalLandmarkObsState, bank, offset_mm=None) -> jax.Array:
        """``(A, 3)`` int32 level-0 voxels of the episode's volume: the agents' positions in ``obs_state``
        (its newest frame), moved by ``offset_mm`` ``(A, 3)`` world mm when given (rounded to a voxel,
        kept inside the volume). A goal a transition achieved, for :meth:`relabel`."""
        pos = obs_state.nav.history[:, 0].astype(jnp.int32)
        if offset_mm is None:
            return pos
        volume = obs_state.nav.volume
        aff = bank.affines[0, volume]
        world = pos.astype(jnp.float32) @ aff[:3, :3].T + aff[:3, 3] + offset_mm
        inv = jnp.linalg.inv(aff)
        vox = jnp.round(world @ inv[:3, :3].T + inv[:3, 3]).astype(jnp.int32)
        return jnp.clip(vox, 0, bank.shapes[0, volume] - 1)

    def relabel(self, obs_state: GoalLandmarkObsState, next_obs_state: GoalLandmarkObsState, goal_vox, valid,
                params: LandmarkParams, bank):
        """One stored transition ``s -> s'`` re-targeted at the goal ``goal_vox`` ``(A, 3)`` (level-0 voxels
        of the episode's own volume, whose crop becomes the goal image), with this env's reward and stop
        rule for that goal: ``(obs_state, next_obs_state, reward (A,) float32 mm, terminal (A,) bool)``.

        ``reward`` is the landmark env's clipped distance decrease (0 where not ``valid``: agents already
        done); ``terminal`` is the stop-at-target rule for the new goal (a finest-level move ending
        within ``terminate_at_target_mm``) or the agent's oscillation stop ``osc_done``, which does not
        depend on the goal."""
        volume = obs_state.nav.volume
        aff = bank.affines[0, volume]

        def dist(obs):
            pos = obs.nav.history[:, 0].astype(jnp.float32)
            return jnp.linalg.norm((pos - goal_vox.astype(jnp.float32)) @ aff[:3, :3].T, axis=-1)

        d1 = dist(next_obs_state)
        reward = distance_reward(dist(obs_state), d1, valid, params)
        reached = valid & reached_target(d1, obs_state.nav.level == 0, params)
        gv = goal_vox.astype(obs_state.goal_vox.dtype)
        retarget = lambda o: o.replace(goal_volume=volume.astype(o.goal_volume.dtype), goal_vox=gv)  # noqa: E731
        return retarget(obs_state), retarget(next_obs_state), reward, next_obs_state.osc_done | reached

    # -------------------------------------------------------------- task protocol

    def eval_params(self, params: LandmarkParams) -> LandmarkParams:
        """The landmark env's: no stop at the goal (ground truth); agents run until they oscillate."""
        return self.nav.eval_params(params)

    def eval_states(self, params, bank, n_starts: int, seed: int = 0) -> GoalLandmarkState:
        """``E = (n_volumes - 1) * n_starts * G`` states: every non-reference volume, ``n_starts``
        starts (the 27-point grid for 27, else seeded uniform in the central 80 %), every goal label
        (agent ``a`` of a start asked for goal ``(g + a) % G``)."""
        self.check_bank(bank)
        rng = np.random.default_rng(seed)
        G, A = len(self.config.goals), self.n_agents
        vols, starts, goals = [], [], []
        for v in range(bank.n_volumes):
            if v == self.config.reference_volume:
                continue
            if n_starts == 27:
                pts = self.nav.eval_start_points(bank, v)
            else:
                ext = np.asarray(bank.shapes)[0, v]
                pts = np.rint(rng.uniform(0.1, 0.9, size=(n_starts, 3)) * (ext - 1)).astype(np.int32)
            for g in range(G):
                vols.append(np.full(len(pts), v, np.int32))
                starts.append(np.broadcast_to(pts[:, None, :], (len(pts), A, 3)))
                goals.append(np.broadcast_to((g + np.arange(A)) % G, (len(pts), A)))
        return self.states_at(bank, np.concatenate(vols), np.concatenate(starts), np.concatenate(goals))

    def eval_metrics(self, state: GoalLandmarkState, params, bank) -> dict[str, jax.Array]:
        """``{"distance_mm": (A,)}``: each agent's distance (mm) to its goal."""
        return {"distance_mm": self.nav.distance_mm(state.nav, self.goal_view(bank, state.goal_world))}

    def positions_world(self, state: GoalLandmarkState, bank) -> jax.Array:
        """``(A, 3)`` float32 world mm: the agents' answers."""
        return self.nav.positions_world(state.nav, bank)


def goal_example(patch, spacing: float, edge: int, label: str = "goal"):
    """A user's goal image as a bank subject: ``(Volume, Landmarks)`` with the goal at voxel ``edge // 2``.

    Args:
      patch: ``(edge, edge, edge)`` intensities at ``spacing`` mm (RAS voxel order), centred on the goal.
      edge: the expected edge in voxels: ``crop_size * f`` with ``f`` the pyramid factor of the
        coarsest level the env uses (every level's goal crop must fit in the patch).
    Raises:
      ConfigError: wrong shape or non-finite values.
    """
    from jaxmed.data import Landmarks, Volume

    arr = np.asarray(patch)
    if arr.shape != (edge,) * 3:
        raise ConfigError(f"goal patch has shape {arr.shape}; expected {(edge,) * 3} voxels at {spacing} mm "
                          "(the env's crop_size times the pyramid factor of its coarsest level), centred on the goal")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise ConfigError("goal patch must hold finite numbers")
    affine = np.diag([spacing, spacing, spacing, 1.0])
    centre = np.full(3, edge // 2, np.float64)
    volume = Volume(arr.astype(np.float32), affine, source="goal patch")
    return volume, Landmarks((label,), (centre * spacing)[None], source="goal patch")
