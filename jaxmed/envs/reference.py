"""A plain NumPy landmark environment, written the way the published TF1/PyTorch code is.

This is the *reference* for :mod:`jaxmed.envs.landmark`: the same dynamics (spec: reward, the
oscillation rule, the coarse-to-fine scale switch, frames rendered from the ring of past positions,
clipping at the volume border), implemented with Python objects, a Python loop over agents and NumPy
slicing of the padded bank volumes, as in Alansary et al. 2019 (``rl-medical``) and Vlontzos et al.
2019 (Collab-DQN). It exists for two reasons:

* equivalence tests: for the same volume, start positions and actions, the jitted env and this
  class must give identical positions, levels, rewards, flags and observations;
* benchmarks: its agent-steps/s, measured in the same process, is the baseline the jitted env is
  compared against.

Differences from the jitted env, on purpose: no auto-reset (the caller calls :meth:`reset_at` or
:meth:`reset` when ``terminated or truncated``), and a random :meth:`reset` driven by a NumPy
generator (not the JAX key, so random resets are not comparable between the two).

Units: positions are integer level-0 voxel indices of the unpadded volume, distances world RAS mm.
"""

from __future__ import annotations

from collections import Counter

import numpy as np


class _Agent:
    """Mutable per-agent state, as the published code keeps it.

    Attributes:
      target: index of the agent's landmark in the bank's labels.
      pos: ``(3,)`` int64, level-0 voxel.
      level: index into ``config.levels`` (0 = finest).
      history: list of ``(3,)`` level-0 positions, newest first, length ``H``.
      since_switch: steps since reset or the last level switch.
      done: the agent has finished (oscillated at the finest level or reached its target).
      prev_dist: distance (mm) at the current position.
    """

    def __init__(self, target: int):
        self.target = target
        self.pos = np.zeros(3, np.int64)
        self.level = 0
        self.history: list[np.ndarray] = []
        self.since_switch = 0
        self.done = False
        self.prev_dist = 0.0


class ReferenceLandmarkEnv:
    """Single-, multi-agent and multi-scale landmark search in NumPy (one environment).

    Args:
      config: a :class:`jaxmed.envs.landmark.LandmarkConfig` (read by attribute: ``targets``,
        ``crop_size``, ``frames``, ``levels``, ``osc_window``).
      params: an ``LandmarkParams`` (read by attribute: ``max_steps``, ``reward_clip``,
        ``terminate_at_target_mm``, ``start_radius_mm``, ``osc_repeats``, ``level_step_limit``); JAX
        scalars are fine.
      bank: a :class:`jaxmed.data.bank.VolumeBank`; its arrays are converted to NumPy once, here.

    Attributes after :meth:`reset_at`:
      pos: ``(n_agents, 3)`` int64, level-0 voxels.
      level: ``(n_agents,)`` int64, index into ``config.levels``.
      done: ``(n_agents,)`` bool.
      t: steps taken in this episode.
      volume: the bank index of the current volume.
    """

    N_ACTIONS = 6

    def __init__(self, config, params, bank):
        self.config = config
        self.n_agents = len(config.targets)
        self.crop_size = int(config.crop_size)
        self.frames = int(config.frames)
        self.levels = tuple(int(l) for l in config.levels)
        self.osc_window = int(config.osc_window)
        self.history_len = max(self.frames, self.osc_window)
        self.max_steps = int(params.max_steps)
        self.reward_clip = float(params.reward_clip)
        self.terminate_at_target_mm = float(params.terminate_at_target_mm)
        self.start_radius_mm = float(params.start_radius_mm)
        self.osc_repeats = int(params.osc_repeats)
        self.level_step_limit = int(getattr(params, "level_step_limit", 0))
        self.targets = [bank.label_index(label) for label in config.targets]
        # host copies of the bank, once (the published code keeps images in host memory too)
        self.stacks = [np.asarray(bank.levels[l]) for l in self.levels]
        self.factors = [int(bank.factors[l]) for l in self.levels]
        self.shapes0 = np.asarray(bank.shapes)[0].astype(np.int64)  # (N, 3) level-0 extents
        self.affines0 = np.asarray(bank.affines)[0].astype(np.float32)  # (N, 4, 4)
        self.landmarks = np.asarray(bank.landmarks_world).astype(np.float32)  # (N, K, 3)
        self.margin = int(bank.margin)
        self.n_volumes = int(self.shapes0.shape[0])
        self.agents = [_Agent(t) for t in self.targets]
        self.volume = 0
        self.t = 0

    # ------------------------------------------------------------------ state views

    @property
    def pos(self) -> np.ndarray:
        return np.stack([a.pos for a in self.agents])

    @property
    def level(self) -> np.ndarray:
        return np.array([a.level for a in self.agents], np.int64)

    @property
    def done(self) -> np.ndarray:
        return np.array([a.done for a in self.agents], bool)

    # ------------------------------------------------------------------ geometry

    def distance_mm(self, agent: _Agent, pos: np.ndarray) -> float:
        """World distance (mm, float32 arithmetic) from level-0 voxel ``pos`` to ``agent``'s landmark."""
        a = self.affines0[self.volume]
        world = a[:3, :3] @ pos.astype(np.float32) + a[:3, 3]
        diff = world - self.landmarks[self.volume, agent.target]
        return float(np.sqrt(np.sum(diff * diff, dtype=np.float32)))

    def _clip(self, pos: np.ndarray) -> np.ndarray:
        return np.clip(pos, 0, self.shapes0[self.volume] - 1)

    def crop(self, level: int, pos0: np.ndarray) -> np.ndarray:
        """``(D, D, D)`` window of the current volume at ``config.levels[level]`` around level-0 voxel
        ``pos0``: level voxel ``pos0 // factor``, window voxel ``[D // 2]`` at it (storage dtype)."""
        d = self.crop_size
        lo = pos0 // self.factors[level] + self.margin - d // 2
        x, y, z = (int(v) for v in lo)
        return self.stacks[level][self.volume, x : x + d, y : y + d, z : z + d]

    # ------------------------------------------------------------------ episode

    def reset_at(self, volume: int, start_pos) -> np.ndarray:
        """Start an episode in bank volume ``volume`` at level-0 voxel(s) ``start_pos`` (``(3,)`` or
        ``(n_agents, 3)``, clipped into the volume); every agent starts at the coarsest level with
        its history ring filled with its start. Returns the observation (see :meth:`observation`)."""
        self.volume = int(volume)
        self.t = 0
        starts = np.broadcast_to(np.asarray(start_pos, np.int64), (self.n_agents, 3))
        for agent, start in zip(self.agents, starts):
            agent.pos = self._clip(start.copy())
            agent.level = len(self.levels) - 1
            agent.history = [agent.pos.copy() for _ in range(self.history_len)]
            agent.since_switch = 0
            agent.done = False
            agent.prev_dist = self.distance_mm(agent, agent.pos)
        return self.observation()

    def random_start(self, rng: np.random.Generator, volume: int) -> np.ndarray:
        """``(n_agents, 3)`` random level-0 start voxels: uniform in the central 80% of the volume, or
        within ``± start_radius_mm`` of each agent's target when that is > 0."""
        ext = self.shapes0[volume]
        if self.start_radius_mm <= 0:
            lo, hi = np.floor(0.1 * (ext - 1)), np.ceil(0.9 * (ext - 1))
            return rng.integers(lo, hi + 1, size=(self.n_agents, 3))
        a_inv = np.linalg.inv(self.affines0[volume].astype(np.float64))
        starts = []
        for agent in self.agents:
            offset = rng.uniform(-self.start_radius_mm, self.start_radius_mm, 3)
            world = self.landmarks[volume, agent.target] + offset
            starts.append(np.rint(a_inv[:3, :3] @ world + a_inv[:3, 3]))
        return np.clip(np.array(starts, np.int64), 0, ext - 1)

    def reset(self, rng: np.random.Generator) -> np.ndarray:
        """Random volume and start (:meth:`random_start`); returns the observation."""
        volume = int(rng.integers(self.n_volumes))
        return self.reset_at(volume, self.random_start(rng, volume))

    def _move(self, agent: _Agent, action: int) -> None:
        """Move ``agent`` one step of its level's factor along ``action``'s axis, clipped."""
        step = np.zeros(3, np.int64)
        step[action // 2] = self.factors[agent.level] if action % 2 == 0 else -self.factors[agent.level]
        agent.pos = self._clip(agent.pos + step)

    def _oscillates(self, agent: _Agent) -> bool:
        """The new position occurs ``>= osc_repeats`` times among the newest
        ``min(osc_window, since_switch + 1)`` ring entries (itself included), or the agent has made
        ``level_step_limit`` moves at its level (when that is ``> 0``)."""
        if 0 < self.level_step_limit <= agent.since_switch:
            return True
        recent = agent.history[: min(self.osc_window, agent.since_switch + 1)]
        counts = Counter(tuple(int(v) for v in p) for p in recent)
        return counts[tuple(int(v) for v in agent.pos)] >= self.osc_repeats

    def _step_agent(self, agent: _Agent, action: int) -> tuple[float, bool]:
        """Advance one live agent; returns ``(reward, oscillated)``."""
        self._move(agent, action)
        dist = self.distance_mm(agent, agent.pos)
        reward = float(np.clip(agent.prev_dist - dist, -self.reward_clip, self.reward_clip))
        agent.prev_dist = dist
        agent.history = [agent.pos.copy()] + agent.history[:-1]
        agent.since_switch += 1
        oscillated = self._oscillates(agent)
        at_finest = agent.level == 0
        if oscillated and not at_finest:
            agent.level -= 1
            agent.since_switch = 0
        elif oscillated:
            agent.done = True
        if at_finest and 0 < self.terminate_at_target_mm and dist <= self.terminate_at_target_mm:
            agent.done = True
        return reward, oscillated

    def step(self, actions):
        """One step of every agent.

        Args:
          actions: ``(n_agents,)`` ints in ``0..5``: axis ``a // 2``, ``+`` if ``a`` is even.

        Returns:
          ``(obs, reward, terminated, truncated, info)``: obs as :meth:`observation`; reward
          ``(n_agents,)`` float32 (0 for agents already done); terminated = all agents done;
          truncated = ``t >= max_steps`` and not terminated; info holds ``distance_mm``
          ``(n_agents,)``, ``oscillated`` ``(n_agents,)`` bool and ``level`` ``(n_agents,)``.
          There is no auto-reset.
        """
        actions = np.asarray(actions).reshape(self.n_agents)
        rewards = np.zeros(self.n_agents, np.float32)
        oscillated = np.zeros(self.n_agents, bool)
        for i, agent in enumerate(self.agents):
            if not agent.done:
                rewards[i], oscillated[i] = self._step_agent(agent, int(actions[i]))
        self.t += 1
        terminated = bool(all(a.done for a in self.agents))
        truncated = bool(self.t >= self.max_steps and not terminated)
        info = {
            "distance_mm": np.array([a.prev_dist for a in self.agents], np.float32),
            "oscillated": oscillated,
            "level": self.level,
        }
        return self.observation(), rewards, terminated, truncated, info

    def observation(self) -> np.ndarray:
        """``(n_agents, frames, D, D, D)`` in the bank's storage dtype: frame ``f`` is the crop around
        the agent's ``f``-th newest position, at the agent's current level (frame 0 = now)."""
        d = self.crop_size
        obs = np.empty((self.n_agents, self.frames, d, d, d), self.stacks[0].dtype)
        for i, agent in enumerate(self.agents):
            for f in range(self.frames):
                obs[i, f] = self.crop(agent.level, agent.history[f])
        return obs
