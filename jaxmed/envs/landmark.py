"""Landmark search environments: single-agent, multi-agent and multi-scale, pure and jitted.

One agent per target landmark moves through a 3D volume, one voxel step along one axis at a time,
seeing a stack of cubic crops around its recent positions, and is rewarded for getting closer to its
landmark. This is the formulation of

* Ghesu et al., "An artificial agent for anatomical landmark detection in medical images",
  MICCAI 2016 (the agent, the distance-decrease reward);
* Ghesu et al., "Multi-scale deep reinforcement learning for real-time 3D-landmark detection in CT
  scans", IEEE TPAMI 41(1), 2019 (coarse-to-fine search: start on a coarse pyramid level, go finer
  when the agent oscillates, stop when it oscillates at the finest level);
* Alansary et al., "Evaluating reinforcement learning agents for anatomical landmark detection",
  Medical Image Analysis 53, 2019 (frame history, oscillation test, DQN variants, fixed evaluation
  start points);
* Vlontzos et al., "Multiple landmark detection using multi-agent reinforcement learning",
  MICCAI 2019 (Collab-DQN: several agents, one per landmark, in the same volume).

The dynamics below are the specification: a plain NumPy re-implementation,
:mod:`jaxmed.envs.reference`, follows them independently and is checked against this env step by
step (positions, levels, rewards, flags and observations).

Shapes and units (``A`` = ``n_agents`` = ``len(config.targets)``, ``k`` = ``config.frames``,
``D`` = ``config.crop_size``, ``H`` = ``max(k, config.osc_window)``):

* action: ``(A,)`` int32 in ``0..5`` (a single-agent env also takes a scalar); action ``a`` moves axis
  ``a // 2`` by ``+f`` (``a`` even) or ``-f`` (odd) level-0 voxels, ``f`` = the pyramid factor of the
  agent's current level; positions are clipped into the volume ``[0, extent - 1]``.
* observation: ``(A, k, D, D, D)`` in the bank's storage dtype (float32 / bfloat16 / uint8; multiply by
  ``bank.intensity_scale`` for intensities). Frame ``f`` is the crop around the agent's ``f``-th
  newest position (frame 0 = now) at the agent's *current* level: level-``l`` voxel
  ``history // factor_l``; voxel ``[D // 2]`` of the crop is that voxel.
* positions: ``(A, 3)`` int32 level-0 voxel indices; distances and rewards in world RAS mm.
* reward: ``(A,)`` float32, ``clip(prev_dist - new_dist, -reward_clip, reward_clip)`` mm, always with
  the *current* step's distance; 0 for agents already done.
* termination (per agent, ``done``): oscillation at the finest level (the new position occurs at least
  ``osc_repeats`` times among the newest ``min(osc_window, since_switch + 1)`` positions), or, when
  ``terminate_at_target_mm > 0`` and the agent moved at the finest level, ``new_dist <=
  terminate_at_target_mm`` (uses ground truth: disable it for evaluation); with ``level_step_limit > 0``
  also after that many moves at one level (``since_switch``), as if oscillated. Done agents freeze (no
  move, no history push, reward 0). The episode is ``terminated`` when *all* agents are done and
  ``truncated`` when ``t >= max_steps`` and not terminated: two separate ``()`` bool flags.
* multi-scale (``len(config.levels) > 1``): agents start at the coarsest level; an oscillation at a
  coarser level moves the agent one level finer (``since_switch`` restarts; the ring keeps its
  positions, which are level-0 voxels at every level, for the frames).
* auto-reset: :meth:`Environment.step` returns a fresh reset state when the episode ended; the ring of
  past positions is refilled with the new start, so no previous-episode frame leaks into the new
  episode. ``info["final_state"]`` is the state the episode ended in (``env.get_obs(info
  ["final_state"], params, bank)`` renders its observation); ``info`` also holds ``distance_mm``
  ``(A,)`` (after this step's move), ``final_distance_mm`` ``(A,)`` (the same where the episode
  ended, NaN otherwise), ``oscillated`` ``(A,)`` bool and ``level`` ``(A,)`` int32 (index into
  ``config.levels``), all of the pre-reset state.

Replay without pixels: :meth:`LandmarkEnv.obs_state` extracts the few bytes an observation depends on
(volume, the ``k`` newest positions, level) and :meth:`LandmarkEnv.render` re-renders it from the bank.

Evaluation: :meth:`LandmarkEnv.reset_at` starts deterministically at given voxels and
:meth:`LandmarkEnv.eval_start_points` gives the 27 grid starts at 25/50/75 % of the extent; agents
report world positions with :meth:`LandmarkEnv.positions_world`.
"""

from __future__ import annotations

import dataclasses
import functools

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
    is_concrete,
    oscillation,
)
from jaxmed.errors import ConfigError
from jaxmed.ops.intensity import apply_knots, identity_knots, random_gain_knots, random_knots
from jaxmed.ops.linalg import apply_affine

N_ACTIONS = 6

# ------------------------------------------------------------------ configuration, params, state


@dataclasses.dataclass(frozen=True)
class LandmarkConfig:
    """Static configuration (hashable; fixes the array shapes).

    Attributes:
      targets: one landmark label per agent (repeats allowed: several agents on one landmark).
      crop_size: ``D``, crop edge in voxels (at every level); must be ``<= bank.max_crop``.
      frames: ``k``, number of past positions rendered into the observation (frame 0 = now).
      levels: bank pyramid levels used, finest first, strictly increasing; multi-scale when > 1.
      osc_window: how many recent positions the oscillation test looks at (at least 9 also stops an
        agent that circles a square of four voxels: each position then recurs three times).
      contrast_knots: ``K``, knots of the random intensity table drawn per episode for training
        (:mod:`jaxmed.ops.intensity`, probability ``LandmarkParams.contrast_prob``); 0: off.
    """

    targets: tuple[str, ...] = ("L0",)
    crop_size: int = bounded(45, 1)
    frames: int = bounded(4, 1)
    levels: tuple[int, ...] = (0,)
    osc_window: int = bounded(8, 1)
    contrast_knots: int = bounded(0, 0)

    def __post_init__(self):
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(str(t) for t in self.targets)
        object.__setattr__(self, "targets", targets)
        if not targets:
            raise ConfigError("LandmarkConfig: targets is empty; give one landmark label per agent")
        check_fields(self)
        check_levels(self, "LandmarkConfig")
        if self.contrast_knots == 1:
            raise ConfigError("LandmarkConfig.contrast_knots must be 0 (off) or an int >= 2, got 1")

    @property
    def n_agents(self) -> int:
        return len(self.targets)

    @property
    def history_len(self) -> int:
        """``H = max(frames, osc_window)``, length of the ring of past positions."""
        return max(self.frames, self.osc_window)


@struct.dataclass
class LandmarkParams:
    """Numeric parameters; every field is a pytree leaf (vmap over them for sweeps).

    Attributes:
      max_steps: episode length limit (truncation).
      reward_clip: reward clip, mm.
      terminate_at_target_mm: an agent at the finest level within this distance (mm) of its target
        is done; ``<= 0`` disables it (evaluation: never use the ground truth).
      start_radius_mm: ``0``: random starts uniform in the central 80 % of the volume per axis;
        ``> 0``: uniform in a world cube of ± this many mm around each agent's target (clipped).
      osc_repeats: how many occurrences of the new position among the recent ones is an oscillation.
      level_step_limit: ``> 0``: an agent that has made this many moves at one level without
        oscillating counts as oscillated (moves one level finer, or is done at the finest): a greedy
        search caught in a cycle too long for ``osc_window`` still ends; ``0``: no limit.
      contrast_prob: probability that a reset draws a random intensity table (with
        ``LandmarkConfig.contrast_knots > 0``); evaluation never does.
      gain_prob: probability that a reset without a random table draws a random gain instead (every
        intensity times a factor log-uniform in ``[gain_min, gain_max]``, clipped to full scale;
        :func:`jaxmed.ops.intensity.random_gain_knots`; needs ``contrast_knots > 0``); evaluation never does.
    """

    max_steps: int = bounded(200, 1)
    reward_clip: float = bounded(1.0, 0.0, low_open=True)
    terminate_at_target_mm: float = 1.0
    start_radius_mm: float = bounded(0.0, 0.0)
    osc_repeats: int = bounded(3, 2)
    level_step_limit: int = bounded(0, 0)
    contrast_prob: float = bounded(0.0, 0.0, 1.0)
    gain_prob: float = bounded(0.0, 0.0, 1.0)
    gain_min: float = bounded(1.0, 0.0, low_open=True)
    gain_max: float = bounded(1.0, 0.0, low_open=True)


@struct.dataclass
class LandmarkState:
    """Per-environment state (``A`` agents, ``H`` ring length); a few hundred bytes, no pixels.

    Attributes:
      volume: ``()`` int32, bank index of the volume.
      pos: ``(A, 3)`` int32, level-0 voxel position of each agent.
      level: ``(A,)`` int32, index into ``config.levels`` (0 = finest).
      history: ``(A, H, 3)`` int32, ring of past level-0 positions, newest first (``history[:, 0] == pos``).
      since_switch: ``(A,)`` int32, steps since the reset or the agent's last level switch.
      done: ``(A,)`` bool, the agent has finished.
      t: ``()`` int32, steps taken in this episode.
      prev_dist: ``(A,)`` float32, distance (mm) from ``pos`` to the agent's target.
      contrast: ``(K,)`` uint8, the episode's intensity table (``K = config.contrast_knots``; identity
        knots at the start states of evaluation); two identity knots, never applied, when off (a
        checkpoint cannot hold a zero-size array).
    """

    volume: jax.Array
    pos: jax.Array
    level: jax.Array
    history: jax.Array
    since_switch: jax.Array
    done: jax.Array
    t: jax.Array
    prev_dist: jax.Array
    contrast: jax.Array


@struct.dataclass
class LandmarkObsState:
    """What an observation is rendered from (:meth:`LandmarkEnv.obs_state`, :meth:`LandmarkEnv.render`):
    ``volume`` ``()`` int32, ``history`` ``(A, k, 3)`` int16 level-0 voxels (the ``k`` newest positions),
    ``level`` ``(A,)`` int8 index into ``config.levels``; ``4 + 7 k`` bytes per agent; ``contrast``
    ``(K,)`` uint8, the episode's intensity table."""

    volume: jax.Array
    history: jax.Array
    level: jax.Array
    contrast: jax.Array


# ------------------------------------------------------------------ the environment


def distance_reward(prev_dist, dist, live, params: LandmarkParams) -> jax.Array:
    """``(A,)`` float32: the distance decrease ``prev_dist - dist`` (mm) clipped to ``± params.reward_clip``;
    0 for agents not ``live`` (already done)."""
    clip = jnp.asarray(params.reward_clip, jnp.float32)
    return jnp.where(live, jnp.clip(prev_dist - dist, -clip, clip), 0.0).astype(jnp.float32)


def reached_target(dist, at_finest, params: LandmarkParams) -> jax.Array:
    """``(A,)`` bool: the stop-at-target rule: a move made at the finest level (``at_finest``) ended within
    ``params.terminate_at_target_mm`` (> 0; 0 disables it) of the target (``dist`` mm)."""
    thr = jnp.asarray(params.terminate_at_target_mm, jnp.float32)
    return at_finest & (thr > 0) & (dist <= thr)


class LandmarkEnv(ConfiguredEnv, config=LandmarkConfig, params=LandmarkParams, name="landmark",
                  label_field="targets", label_role="target"):
    """Single-agent, multi-agent and multi-scale landmark search (module docstring).

    Args:
      config: a :class:`LandmarkConfig`.
      labels: the landmark labels of the bank(s) this env will run on (``bank.labels``); when given,
        every target is checked against them now (:class:`LandmarkError` naming the available
        labels); :attr:`required_labels` are the targets, each once. Target indices are always
        resolved from the bank passed to ``reset`` / ``step`` (its ``labels`` are static), so banks
        with a different label order work too.
      name: the name reported by :attr:`name` (the registry passes its name).
    """

    # -------------------------------------------------------------- descriptions

    @property
    def n_agents(self) -> int:
        return self.config.n_agents

    def observation_space(self, params=None, bank=None) -> Box:
        """``(A, k, D, D, D)``; dtype of ``bank`` when given (float32 otherwise)."""
        c = self.config
        return image_box((c.n_agents, c.frames, c.crop_size, c.crop_size, c.crop_size), bank)

    def action_space(self, params=None) -> Discrete:
        return Discrete(N_ACTIONS, (self.n_agents,))

    # -------------------------------------------------------------- host-side checks

    def check_bank(self, bank) -> None:
        """Check that ``bank`` can serve this env: crop size within the padded margin, levels present,
        targets among its labels. Host side, static attributes only (works on a traced bank too)."""
        check_volume_bank(self, bank, self.config.levels, self.config.crop_size)
        self._target_indices(bank)

    def _target_indices(self, bank) -> np.ndarray:
        return np.array([bank.label_index(t) for t in self.config.targets], np.int32)

    def check_action(self, action):
        """Raise :class:`ConfigError` unless ``action`` is ``(A,)`` integers in ``0..5`` (a scalar for one
        agent). Shape and dtype are checked always; values only when ``action`` is concrete."""
        return check_discrete_action(self, action, N_ACTIONS, "±x, ±y, ±z")


    # -------------------------------------------------------------- geometry helpers

    def _factors(self, bank) -> jax.Array:
        """``(len(levels),)`` int32, level-0 voxels per step at each configured level."""
        return jnp.asarray([bank.factors[l] for l in self.config.levels], jnp.int32)

    def _extent(self, bank, volume) -> jax.Array:
        """``(3,)`` int32, the volume's unpadded level-0 extent."""
        return bank.shapes[0, volume]

    def _distance(self, bank, volume, pos) -> jax.Array:
        """``(A,)`` float32 mm from level-0 voxels ``pos`` ``(A, 3)`` to each agent's target."""
        world = apply_affine(pos, bank.affines[0, volume])
        target = bank.landmarks_world[volume][jnp.asarray(self._target_indices(bank))]
        diff = world - target
        return jnp.sqrt(jnp.sum(diff * diff, axis=-1))

    @property
    def landmark_targets(self) -> tuple[str, ...]:
        """Each agent's target when it is a landmark this env reads (subclasses whose targets are
        not bank landmarks, e.g. box corners, answer ``()``)."""
        targets = self.config.targets
        return targets if set(targets) <= set(self.required_labels) else ()

    def positions_world(self, state: LandmarkState, bank) -> jax.Array:
        """``(A, 3)`` float32, the agents' positions in world RAS mm (their answers)."""
        return apply_affine(state.pos, bank.affines[0, state.volume])

    def trajectory_of(self, state: LandmarkState) -> jax.Array:
        """``(..., A, 3)`` int32, the agents' level-0 voxel positions (:attr:`LandmarkState.pos`)."""
        return state.pos

    def distance_mm(self, state: LandmarkState, bank) -> jax.Array:
        """``(A,)`` float32, each agent's distance (mm) to its target."""
        return self._distance(bank, state.volume, state.pos)

    # -------------------------------------------------------------- reset

    def _initial_state(self, bank, volume, start) -> LandmarkState:
        c = self.config
        volume = jnp.asarray(volume, jnp.int32)
        start = jnp.broadcast_to(jnp.asarray(start), (c.n_agents, 3))
        if not jnp.issubdtype(start.dtype, jnp.integer):
            start = jnp.round(start)
        start = jnp.clip(start.astype(jnp.int32), 0, self._extent(bank, volume) - 1)
        return LandmarkState(
            volume=volume,
            pos=start,
            level=jnp.full((c.n_agents,), len(c.levels) - 1, jnp.int32),
            history=jnp.broadcast_to(start[:, None, :], (c.n_agents, c.history_len, 3)),
            since_switch=jnp.zeros((c.n_agents,), jnp.int32),
            done=jnp.zeros((c.n_agents,), bool),
            t=jnp.zeros((), jnp.int32),
            prev_dist=self._distance(bank, volume, start),
            contrast=identity_knots(c.contrast_knots or 2),  # off: 2 identity knots, never applied
        )

    def reset_env(self, key, params: LandmarkParams, bank) -> LandmarkState:
        """Random volume; random starts (central 80 % per axis, or ± ``start_radius_mm`` around the target)."""
        c = self.config
        n_volumes = bank.levels[0].shape[0]
        # one uniform draw for everything (a single threefry call: cheaper to compile than three)
        u = jax.random.uniform(key, (1 + 6 * c.n_agents,), jnp.float32)
        volume = jnp.minimum(jnp.floor(u[0] * n_volumes).astype(jnp.int32), n_volumes - 1)
        u_centre, u_radius = u[1:].reshape(2, c.n_agents, 3)
        ext = self._extent(bank, volume).astype(jnp.float32)
        lo = jnp.floor(0.1 * (ext - 1))
        hi = jnp.ceil(0.9 * (ext - 1))
        central = jnp.minimum(lo + jnp.floor(u_centre * (hi - lo + 1)), hi).astype(jnp.int32)
        radius = jnp.asarray(params.start_radius_mm, jnp.float32)
        offset = (2.0 * u_radius - 1.0) * radius
        world = bank.landmarks_world[volume][jnp.asarray(self._target_indices(bank))] + offset
        inv = jnp.linalg.inv(bank.affines[0, volume])
        near = jnp.round(apply_affine(world, inv)).astype(jnp.int32)
        start = jnp.where(radius > 0, near, central)
        state = self._initial_state(bank, volume, start)
        if c.contrast_knots:
            table = random_knots(jax.random.fold_in(key, 1), c.contrast_knots, params.contrast_prob)
            gain = random_gain_knots(jax.random.fold_in(key, 2), c.contrast_knots, params.gain_prob, params.gain_min, params.gain_max)
            state = state.replace(contrast=jnp.where(jnp.all(table == identity_knots(c.contrast_knots)), gain, table))
        return state

    def reset_at(self, params: LandmarkParams | None, bank, volume, start_pos) -> tuple[jax.Array, LandmarkState]:
        """Deterministic reset: ``(obs, state)`` in bank volume ``volume`` with every agent at level-0 voxel
        ``start_pos`` (``(3,)`` or ``(A, 3)``, clipped into the volume), at the coarsest level."""
        params = self.default_params if params is None else params
        self.check_bank(bank)
        if is_concrete(volume) and not 0 <= int(volume) < bank.levels[0].shape[0]:
            raise ConfigError(f"{self.name}: volume index {int(volume)} out of range: the bank holds {bank.levels[0].shape[0]} volumes")
        shape = np.shape(start_pos)
        if shape not in ((3,), (self.n_agents, 3)):
            raise ConfigError(f"{self.name}: start_pos must have shape (3,) or ({self.n_agents}, 3), got {shape}")
        return self._reset_at(params, bank, volume, start_pos)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _reset_at(self, params, bank, volume, start_pos):
        state = self._initial_state(bank, volume, start_pos)
        return self.get_obs(state, params, bank), state

    def eval_start_points(self, bank, volume: int, n_per_axis: int = 3) -> np.ndarray:
        """``(n_per_axis**3, 3)`` int32 level-0 start voxels on a grid at fractions ``i / (n + 1)`` of the
        volume's extent per axis (25 / 50 / 75 % for ``n = 3``: 27 points), host side."""
        ext = np.asarray(bank.shapes)[0, int(volume)].astype(np.int64)
        fractions = np.arange(1, n_per_axis + 1) / (n_per_axis + 1)
        axes = [np.clip(np.floor(fractions * e), 0, e - 1).astype(np.int32) for e in ext]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        return grid.reshape(-1, 3)

    # -------------------------------------------------------------- task protocol

    @property
    def metric_labels(self) -> tuple[str, ...]:
        return self.config.targets

    def eval_params(self, params: LandmarkParams) -> LandmarkParams:
        """No stop at the target (that would use the ground truth): agents run until they oscillate; no
        random contrast or gain."""
        return params.replace(terminate_at_target_mm=0.0, contrast_prob=0.0, gain_prob=0.0)

    def eval_states(self, params, bank, n_starts: int, seed: int = 0) -> LandmarkState:
        """``E = n_volumes * n_starts`` start states (leading axis ``E``).

        Agents with different targets start at the same voxel; the copies of one target (several
        agents on one landmark) start at different points of the list (:meth:`_start_shifts`).

        ``n_starts == 27``: the 3x3x3 grid at 25/50/75 % of each volume's extent
        (:meth:`eval_start_points`); otherwise ``n_starts`` fractions of the extent drawn once
        (``seed``) uniformly in the central 80 % and placed alike in every volume, so a volume's starts
        do not depend on its place in the bank (detecting an image alone or in a group gives one answer).
        """
        self.check_bank(bank)
        fractions = np.random.default_rng(seed).uniform(0.1, 0.9, size=(n_starts, 3))
        vols, starts = [], []
        for v in range(bank.n_volumes):
            if n_starts == 27:
                pts = self.eval_start_points(bank, v)
            else:
                ext = np.asarray(bank.shapes)[0, v]
                pts = np.rint(fractions * (ext - 1)).astype(np.int32)
            vols.append(np.full(len(pts), v, np.int32))
            starts.append(pts[self._start_shifts(len(pts))])
        return self.states_at(bank, np.concatenate(vols), np.concatenate(starts))

    def _start_shifts(self, n_points: int) -> np.ndarray:
        """``(n_points, A)`` start-point indices: agent copy ``c`` of a target (several agents on one
        landmark) starts ``c * n_points // copies`` points further along the list than copy 0."""
        targets = self.config.targets
        copy = np.array([targets[:i].count(t) for i, t in enumerate(targets)])
        copies = np.array([targets.count(t) for t in targets])
        return (np.arange(n_points)[:, None] + copy[None, :] * n_points // copies[None, :]) % n_points

    def states_at(self, bank, volumes, starts) -> LandmarkState:
        """Deterministic start states, batched: ``volumes`` ``(E,)`` int, ``starts`` ``(E, A, 3)`` level-0
        voxels (clipped into each volume), every agent at the coarsest level."""
        return self._batch_initial_states(bank, jnp.asarray(volumes, jnp.int32), jnp.asarray(starts, jnp.int32))

    @functools.partial(jax.jit, static_argnums=(0,))
    def _batch_initial_states(self, bank, volumes, starts):
        return jax.vmap(self._initial_state, in_axes=(None, 0, 0))(bank, volumes, starts)

    def eval_metrics(self, state: LandmarkState, params, bank) -> dict[str, jax.Array]:
        """``{"distance_mm": (A,)}``: each agent's distance to its target."""
        return {"distance_mm": self.distance_mm(state, bank)}

    # -------------------------------------------------------------- step

    def step_env(self, key, state: LandmarkState, action, params: LandmarkParams, bank):
        """One transition of every agent, no auto-reset: ``(state, reward, terminated, truncated, info)``."""
        del key  # the dynamics are deterministic
        c = self.config
        action = jnp.reshape(jnp.asarray(action, jnp.int32), (c.n_agents,))
        live = ~state.done
        factor = self._factors(bank)[state.level]  # (A,)
        sign = jnp.where(action % 2 == 0, 1, -1).astype(jnp.int32)
        delta = jax.nn.one_hot(action // 2, 3, dtype=jnp.int32) * (sign * factor)[:, None]
        moved = jnp.clip(state.pos + delta, 0, self._extent(bank, state.volume) - 1)
        pos = jnp.where(live[:, None], moved, state.pos)

        dist = self._distance(bank, state.volume, pos)
        reward = distance_reward(state.prev_dist, dist, live, params)

        pushed = jnp.concatenate([pos[:, None, :], state.history[:, :-1]], axis=1)
        same = jnp.all(pushed == pos[:, None, :], axis=-1)  # (A, H)
        oscillated, since = oscillation(same, state.since_switch, c.osc_window, params.osc_repeats, live,
                                        params.level_step_limit)

        at_finest = state.level == 0  # the level this step's move was made at
        switch = oscillated & ~at_finest
        reached = reached_target(dist, at_finest, params)
        finished = live & ((oscillated & at_finest) | reached)

        new_state = LandmarkState(
            volume=state.volume,
            pos=pos,
            level=jnp.where(switch, state.level - 1, state.level),
            history=jnp.where(live[:, None, None], pushed, state.history),
            since_switch=jnp.where(switch, 0, jnp.where(live, since, state.since_switch)),
            done=state.done | finished,
            t=state.t + 1,
            prev_dist=jnp.where(live, dist, state.prev_dist),
            contrast=state.contrast,
        )
        terminated, truncated, ended = episode_end(new_state.done, new_state.t, params.max_steps)
        info = {
            "distance_mm": new_state.prev_dist,
            "final_distance_mm": jnp.where(ended, new_state.prev_dist, jnp.nan),
            "oscillated": oscillated,
            "level": new_state.level,
        }
        return new_state, reward, terminated, truncated, info

    # -------------------------------------------------------------- observation

    def get_obs(self, state: LandmarkState, params=None, bank=None) -> jax.Array:
        """``(A, k, D, D, D)`` storage dtype: crops around ``history[:, :k]`` at each agent's current level."""
        return self._render(bank, state.volume, state.history[:, : self.config.frames], state.level, state.contrast)

    def obs_state(self, state: LandmarkState) -> LandmarkObsState:
        """The few bytes the observation is a function of (what a replay buffer stores instead of pixels)."""
        return LandmarkObsState(
            volume=state.volume.astype(jnp.int32),
            history=state.history[:, : self.config.frames].astype(jnp.int16),
            level=state.level.astype(jnp.int8),
            contrast=state.contrast,
        )

    def render(self, obs_state: LandmarkObsState, bank) -> jax.Array:
        """The observation of an :class:`LandmarkObsState`; ``render(obs_state(s), bank) == get_obs(s, params, bank)``."""
        return self._render(bank, obs_state.volume, obs_state.history.astype(jnp.int32), obs_state.level.astype(jnp.int32),
                            obs_state.contrast)

    def _render(self, bank, volume, centres, level, contrast=None) -> jax.Array:
        """Crops around level-0 voxels ``centres`` ``(A, k, 3)`` at each agent's level index ``level`` ``(A,)``,
        through the intensity table ``contrast`` ``(K,)`` uint8 when given and ``K > 0``.

        All ``A * k`` windows in one call of :meth:`VolumeBank.crops` (one XLA gather): a single-level
        env crops its level; a multi-scale env crops each agent at its own level, from the bank's
        packed pyramid when it has one (``build_bank(packed=True)``: each window copied once), else by
        cropping each configured level and selecting, which XLA:CPU fuses into one pass.
        """
        c = self.config
        if len(c.levels) == 1:
            lvl = c.levels[0]
            crops = bank.crops(volume, centres // bank.factors[lvl], c.crop_size, lvl)
        else:
            bank_level = jnp.asarray(c.levels, jnp.int32)[level]  # (A,)
            factor = jnp.asarray(bank.factors, jnp.int32)[bank_level]
            crops = bank.crops(volume, centres // factor[:, None, None], c.crop_size, bank_level[:, None], candidates=c.levels)
        if contrast is None or not c.contrast_knots:
            return crops
        return apply_knots(crops, contrast, bank.stored_full_scale)
