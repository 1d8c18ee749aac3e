"""The jitted landmark env against the plain NumPy reference (jaxmed.envs.reference), step by step.

For one volume, start positions and action sequence, both envs must give the same positions, scale
levels, rewards (1e-5), terminated / truncated flags, done masks, oscillation flags and observations
(exactly). Action sequences: seeded random walks, back-and-forth oscillations, a square loop
(truncation), pushes into the volume border and a greedy walk onto the target (termination there). The jitted env is driven
with ``reset_at`` then ``step``; when the episode ends it auto-resets, so the last step is compared
through ``info["final_state"]`` and ``env.get_obs`` of it.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxmed.data.bank import build_bank
from jaxmed.data.phantoms import blob_phantom
from jaxmed.envs import landmark
from jaxmed.envs.reference import ReferenceLandmarkEnv

N_STEPS = 60
MOVES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def blob_bank():
    """Two blob phantoms of different, non-cubic shapes; pyramid factors 1, 2, 4 (float32)."""
    subjects = [blob_phantom((30, 26, 22), 2.0, 4, seed=1), blob_phantom((24, 28, 26), 2.0, 4, seed=2)]
    return build_bank(subjects, factors=(1, 2, 4), max_crop=15)


@pytest.fixture(scope="module")
def blob_bank_uint8():
    subjects = [blob_phantom((30, 26, 22), 2.0, 4, seed=1), blob_phantom((24, 28, 26), 2.0, 4, seed=2)]
    return build_bank(subjects, factors=(1, 2, 4), max_crop=15, dtype="uint8")


@pytest.fixture(scope="module")
def afids_bank(afids_3mm):
    """The real AFIDs template at 3 mm (fetched with pip once, then cached), uint8 storage."""
    from jaxmed.data import afids

    return build_bank([afids_3mm], labels=afids.CORE_LABELS, max_crop=15, dtype="uint8")


# ------------------------------------------------------------------ the two envs in lockstep


class Lockstep:
    """Drive the jitted env and the reference with the same actions and compare after every step."""

    def __init__(self, config, params, bank):
        self.env = landmark.LandmarkEnv(config, labels=bank.labels)
        self.params, self.bank = params, bank
        self.ref = ReferenceLandmarkEnv(config, params, bank)
        self._reset_at = jax.jit(self.env.reset_at)
        self._step = jax.jit(self.env.step)
        self._get_obs = jax.jit(self.env.get_obs)

    def reset(self, volume, start):
        obs, self.state = self._reset_at(self.params, self.bank, volume, np.asarray(start, np.int32))
        ref_obs = self.ref.reset_at(volume, start)
        self.compare_state(self.state, ref_obs, obs, "reset")

    def step(self, action, k):
        """One step of both; returns True when the episode ended."""
        key = jax.random.key(k)
        obs, state, reward, terminated, truncated, info = self._step(key, self.state, np.asarray(action, np.int32), self.params, self.bank)
        ref_obs, ref_reward, ref_term, ref_trunc, ref_info = self.ref.step(action)
        where = f"step {k} (action {list(action)})"
        ended = bool(terminated) or bool(truncated)
        assert (bool(terminated), bool(truncated)) == (ref_term, ref_trunc), where
        np.testing.assert_allclose(np.asarray(reward), ref_reward, atol=1e-5, rtol=0, err_msg=where)
        np.testing.assert_array_equal(np.asarray(info["oscillated"]), ref_info["oscillated"], err_msg=where)
        np.testing.assert_allclose(np.asarray(info["distance_mm"]), ref_info["distance_mm"], atol=1e-4, rtol=0, err_msg=where)
        if ended:  # the env auto-reset: compare what it was before
            state = info["final_state"]
            obs = self._get_obs(state, self.params, self.bank)
        self.compare_state(state, ref_obs, obs, where)
        self.state = state
        return ended

    def compare_state(self, state, ref_obs, obs, where):
        np.testing.assert_array_equal(np.asarray(state.pos), self.ref.pos, err_msg=f"pos at {where}")
        np.testing.assert_array_equal(np.asarray(state.level), self.ref.level, err_msg=f"level at {where}")
        np.testing.assert_array_equal(np.asarray(state.done), self.ref.done, err_msg=f"done at {where}")
        assert int(state.t) == self.ref.t, where
        obs = np.asarray(obs)
        assert obs.dtype == ref_obs.dtype and obs.shape == ref_obs.shape, where
        np.testing.assert_array_equal(obs, ref_obs, err_msg=f"observation at {where}")

    def greedy(self) -> np.ndarray:
        """``(n_agents,)`` action that brings each agent (per the reference) closest to its target."""
        ref, acts = self.ref, []
        for agent in ref.agents:
            f = ref.factors[agent.level]
            dists = [ref.distance_mm(agent, ref._clip(agent.pos + f * m)) for m in MOVES]
            acts.append(int(np.argmin(dists)))
        return np.array(acts)

    def run(self, volume, start, policy, n_steps=N_STEPS):
        """Reset at ``start`` and step with ``policy(t) -> (n_agents,)`` until the episode ends."""
        self.reset(volume, start)
        for t in range(n_steps):
            if self.step(policy(t), t):
                return t + 1
        return n_steps


# ------------------------------------------------------------------ action sequences


def _target_voxels(ref: ReferenceLandmarkEnv, volume: int) -> np.ndarray:
    """``(n_agents, 3)`` level-0 voxels nearest each agent's landmark."""
    a_inv = np.linalg.inv(ref.affines0[volume].astype(np.float64))
    world = ref.landmarks[volume, ref.targets].astype(np.float64)
    return np.rint(world @ a_inv[:3, :3].T + a_inv[:3, 3]).astype(int)


def _sequences(sim: Lockstep, rng: np.random.Generator):
    """(name, volume, start, policy) tuples covering random walks, oscillation, borders, greedy."""
    n = sim.ref.n_agents
    shapes = sim.ref.shapes0
    out = []
    for v in range(len(shapes)):
        hi = shapes[v] - 1
        centre = hi // 2
        acts = rng.integers(0, 6, size=(N_STEPS, n))
        out.append(("random", v, rng.integers(0, hi + 1, size=(n, 3)), lambda t, a=acts: a[t]))
        out.append(("oscillate", v, np.tile(centre, (n, 1)), lambda t: np.full(n, t % 2)))
        # a 4-cycle revisits each voxel every 4 steps: twice in a window of 8, never an oscillation
        out.append(("square", v, np.tile(centre, (n, 1)), lambda t: np.full(n, (0, 2, 1, 3)[t % 4])))
        # push against the low / high corner, with some random moves mixed in
        low = rng.choice([1, 3, 5], size=(N_STEPS, n))
        out.append(("low border", v, np.zeros((n, 3), int) + rng.integers(0, 3, (n, 3)), lambda t, a=low: a[t]))
        high = np.where(rng.random((N_STEPS, n)) < 0.8, rng.choice([0, 2, 4], size=(N_STEPS, n)), rng.integers(0, 6, (N_STEPS, n)))
        out.append(("high border", v, np.tile(hi, (n, 1)) - rng.integers(0, 3, (n, 3)), lambda t, a=high: a[t]))
        near = np.clip(_target_voxels(sim.ref, v) + rng.integers(-8, 9, size=(n, 3)), 0, hi)
        out.append(("greedy", v, near, lambda t: sim.greedy()))
    return out


def _check_all_sequences(sim: Lockstep, seed: int):
    rng = np.random.default_rng(seed)
    lengths = {}
    for name, volume, start, policy in _sequences(sim, rng):
        lengths[f"{name}@{volume}"] = sim.run(volume, start, policy)
    return lengths


# ------------------------------------------------------------------ cases


def _config(targets, *, levels=(0,), crop=11, frames=2):
    return landmark.LandmarkConfig(targets=tuple(targets), crop_size=crop, frames=frames, levels=tuple(levels), osc_window=8)


def test_single_agent_blob(blob_bank):
    sim = Lockstep(_config(["L0"]), landmark.LandmarkParams(max_steps=45), blob_bank)
    lengths = _check_all_sequences(sim, seed=0)
    assert lengths["oscillate@0"] < N_STEPS  # the oscillation rule fired
    assert lengths["square@0"] == 45  # truncated


def test_multi_agent_blob(blob_bank_uint8):
    sim = Lockstep(_config(["L0", "L1", "L2", "L1"], crop=9), landmark.LandmarkParams(), blob_bank_uint8)
    _check_all_sequences(sim, seed=1)


def test_multi_scale_blob(blob_bank):
    sim = Lockstep(_config(["L3", "L0"], levels=(0, 1, 2), crop=9, frames=3), landmark.LandmarkParams(max_steps=55), blob_bank)
    lengths = _check_all_sequences(sim, seed=2)
    assert lengths["oscillate@1"] < N_STEPS  # switched down through all three levels, then ended


def test_multi_scale_without_target_termination(blob_bank):
    params = landmark.LandmarkParams(terminate_at_target_mm=0.0, reward_clip=0.5)
    sim = Lockstep(_config(["L1"], levels=(0, 2), crop=13, frames=2), params, blob_bank)
    _check_all_sequences(sim, seed=3)


@pytest.mark.afids
def test_single_agent_afids_ac(afids_bank):
    sim = Lockstep(_config(["AC"], crop=15, frames=2), landmark.LandmarkParams(max_steps=50), afids_bank)
    lengths = _check_all_sequences(sim, seed=4)
    assert lengths["greedy@0"] < N_STEPS  # reached AC (or oscillated there) before the cap


def test_reference_resets_its_history(blob_bank):
    """A new episode's first frames are its start crop only (no previous-episode frames)."""
    ref = ReferenceLandmarkEnv(_config(["L0"], frames=3), landmark.LandmarkParams(), blob_bank)
    ref.reset_at(0, [5, 5, 5])
    for a in (0, 2, 4):
        ref.step([a])
    obs = ref.reset_at(1, [10, 9, 8])
    assert np.array_equal(obs[0, 0], obs[0, 1]) and np.array_equal(obs[0, 0], obs[0, 2])
    np.testing.assert_array_equal(obs[0, 0], ref.crop(0, np.array([10, 9, 8])))


def test_level_step_limit_moves_a_cycling_search_on(blob_bank):
    """A 4-cycle never oscillates in a window of 8 (``square``); with ``level_step_limit`` the agent
    switches one level finer after that many moves at a level and ends at the finest, in both envs."""
    params = landmark.LandmarkParams(terminate_at_target_mm=0.0, level_step_limit=6, max_steps=N_STEPS)
    sim = Lockstep(_config(["L0"], levels=(0, 1, 2), crop=9, frames=2), params, blob_bank)
    lengths = _check_all_sequences(sim, seed=5)
    assert lengths["square@0"] == lengths["square@1"] == 3 * 6  # six moves at each of the three levels
    assert all(n <= 3 * 6 for n in lengths.values())  # no episode outlives the limit at every level
    off = Lockstep(_config(["L0"], levels=(0, 1, 2), crop=9, frames=2), params.replace(level_step_limit=0), blob_bank)
    assert off.run(0, np.tile(off.ref.shapes0[0] // 2, (1, 1)), lambda t: np.full(1, (0, 2, 1, 3)[t % 4])) == N_STEPS
