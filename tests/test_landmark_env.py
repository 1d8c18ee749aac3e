"""Landmark environments: reward in mm, borders, oscillation and scale switching, auto-reset, flags,
determinism, jit / vmap / scan, multi-agent behaviour, registry and input errors.

Two small blob phantoms (32³ and 30×28×26 at 2 mm) whose landmarks are moved onto voxel centres, so
distances to a target are exact multiples of the 2 mm spacing; pyramid factors (1, 2, 4); 9³ crops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmed
from jaxmed.data.bank import build_bank
from jaxmed.data.phantoms import blob_phantom
from jaxmed.envs import LandmarkConfig, LandmarkEnv, LandmarkParams, make, registered
from jaxmed.errors import ConfigError, LandmarkError

D = 9
SPACING = 2.0
NO_TARGET_STOP = dict(terminate_at_target_mm=0.0)  # only oscillation / time end an episode


def _subjects():
    subjects = []
    for shape, seed in (((32, 32, 32), 0), ((30, 28, 26), 1)):
        vol, lm = blob_phantom(shape, SPACING, 3, seed=seed)
        on_grid = vol.voxel_to_world(np.rint(vol.world_to_voxel(lm.positions)))
        subjects.append((vol, lm.with_positions(on_grid)))
    return subjects


@pytest.fixture(scope="module")
def bank():
    return build_bank(_subjects(), factors=(1, 2, 4), max_crop=D)


def _env(bank, targets=("L0",), **kw):
    kw.setdefault("frames", 2)
    return LandmarkEnv(LandmarkConfig(targets=tuple(targets), crop_size=D, **kw), labels=bank.labels)


@pytest.fixture(scope="module")
def single(bank):
    return _env(bank, frames=3)


@pytest.fixture(scope="module")
def multiscale(bank):
    return _env(bank, levels=(0, 1, 2))


@pytest.fixture(scope="module")
def multi(bank):
    return _env(bank, targets=("L0", "L1", "L2"))


@pytest.fixture(scope="module")
def vreset(multi):
    """Jitted reset of a batch of multi-agent envs, one per key (compiled once per batch size)."""
    return jax.jit(jax.vmap(multi.reset, in_axes=(0, None, None)))


def target_vox(bank, volume, label):
    return np.rint(np.asarray(bank.landmarks_vox[0, volume, bank.labels.index(label)])).astype(np.int32)


def crop(bank, volume, centre, level=0):
    return np.asarray(bank.crop(volume, jnp.asarray(centre, jnp.int32), D, level=level))


def run(env, state, actions, params, bank, key=0):
    """Step through ``actions`` (list of per-step actions); returns the list of step outputs."""
    out = []
    for i, a in enumerate(actions):
        res = env.step(jax.random.key(key + i), state, np.asarray(a, np.int32).reshape(env.n_agents), params, bank)
        state = res[1]
        out.append(res)
    return out


# ------------------------------------------------------------------ reward, borders, frames


def test_reward_sign_and_value_in_mm(single, bank):
    t = target_vox(bank, 0, "L0")
    params = LandmarkParams(reward_clip=10.0, **NO_TARGET_STOP)
    obs, state = single.reset_at(params, bank, 0, t + [3, 2, 0])
    np.testing.assert_allclose(float(state.prev_dist[0]), SPACING * np.sqrt(13), rtol=1e-6)
    (o1, s1, r1, *_), (o2, s2, r2, *_), (o3, s3, r3, _, _, info) = run(single, state, [1, 1, 0], params, bank)
    # -x twice towards the target, then +x away: distance sqrt(13) -> sqrt(8) -> sqrt(5) -> sqrt(8) voxels
    np.testing.assert_allclose(float(r1[0]), SPACING * (np.sqrt(13) - np.sqrt(8)), rtol=1e-5)
    np.testing.assert_allclose(float(r2[0]), SPACING * (np.sqrt(8) - np.sqrt(5)), rtol=1e-5)
    np.testing.assert_allclose(float(r3[0]), -SPACING * (np.sqrt(8) - np.sqrt(5)), rtol=1e-5)
    np.testing.assert_allclose(float(info["distance_mm"][0]), SPACING * np.sqrt(8), rtol=1e-6)
    assert r1.shape == (1,) and r1.dtype == jnp.float32
    # default clip: a 2 mm step gives exactly +-1
    _, state = single.reset_at(LandmarkParams(**NO_TARGET_STOP), bank, 0, t + [3, 0, 0])
    (_, s, r_toward, *_), (_, _, r_away, *_) = run(single, state, [1, 0], LandmarkParams(**NO_TARGET_STOP), bank)
    assert float(r_toward[0]) == 1.0 and float(r_away[0]) == -1.0
    # frames: frame 0 = crop at the current position, frame 1 = previous, frame 2 = the one before
    np.testing.assert_array_equal(np.asarray(o3[0, 0]), crop(bank, 0, s3.pos[0]))
    np.testing.assert_array_equal(np.asarray(o3[0, 1]), crop(bank, 0, s2.pos[0]))
    np.testing.assert_array_equal(np.asarray(o3[0, 2]), crop(bank, 0, s1.pos[0]))
    assert o3.dtype == bank.levels[0].dtype


def test_agents_stay_inside_the_volume(single, bank):
    params = LandmarkParams(**NO_TARGET_STOP)
    hi = np.asarray(bank.shapes[0, 1]) - 1  # the smaller volume: (29, 27, 25), padded to 32
    _, state = single.reset_at(params, bank, 1, hi)
    for a, axis in ((0, 0), (2, 1), (4, 2)):
        _, s, r, *_ = single.step(jax.random.key(0), state, jnp.array([a]), params, bank)
        np.testing.assert_array_equal(np.asarray(s.pos[0]), hi)
        assert float(r[0]) == 0.0
    _, state = single.reset_at(params, bank, 1, [0, 0, 0])
    _, s, *_ = single.step(jax.random.key(0), state, jnp.array([1]), params, bank)
    np.testing.assert_array_equal(np.asarray(s.pos[0]), [0, 0, 0])
    # start positions outside are clipped in
    _, state = single.reset_at(params, bank, 1, [-5, 100, 3])
    np.testing.assert_array_equal(np.asarray(state.pos[0]), [0, hi[1], 3])


# ------------------------------------------------------------------ oscillation and scales


def test_oscillation_terminates_at_finest_level(single, bank):
    params = LandmarkParams(max_steps=100, **NO_TARGET_STOP)
    start = np.array([16, 16, 16])
    _, state = single.reset_at(params, bank, 0, start)
    steps = run(single, state, [0, 1, 0, 1], params, bank)
    terminated = [bool(s[3]) for s in steps]
    assert terminated == [False, False, False, True]  # A,B,A,B,A: A seen 3 times at the 4th step
    assert not any(bool(s[4]) for s in steps)
    info = steps[-1][5]
    assert bool(info["oscillated"][0]) and not bool(steps[-2][5]["oscillated"][0])
    final = info["final_state"]
    assert bool(final.done[0]) and int(final.t) == 4
    np.testing.assert_array_equal(np.asarray(final.pos[0]), start)
    assert int(steps[-1][1].t) == 0  # auto-reset


def test_multiscale_switches_to_finer_level_on_oscillation(multiscale, bank):
    params = LandmarkParams(max_steps=100, **NO_TARGET_STOP)
    start = np.array([16, 16, 16])
    obs, state = multiscale.reset_at(params, bank, 0, start)
    assert int(state.level[0]) == 2  # coarsest first
    np.testing.assert_array_equal(np.asarray(obs[0, 0]), crop(bank, 0, start // 4, level=2))
    actions = [0, 1, 0, 1] * 3
    steps = run(multiscale, state, actions, params, bank)
    pos = [start] + [np.asarray(s[5]["final_state"].pos[0] if bool(s[3]) else s[1].pos[0]) for s in steps]
    moves = [int(abs(b - a).sum()) for a, b in zip(pos, pos[1:])]
    assert moves == [4] * 4 + [2] * 4 + [1] * 4  # the step shrinks with the level's factor
    levels = [int(s[5]["level"][0]) for s in steps]
    assert levels == [2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert [bool(s[3]) for s in steps] == [False] * 11 + [True]
    switched = steps[3][1]
    assert int(switched.since_switch[0]) == 0 and not bool(switched.done[0])
    # after the switch the frames come from level 1 (level-0 voxel // 2)
    np.testing.assert_array_equal(np.asarray(steps[3][0][0, 0]), crop(bank, 0, start // 2, level=1))
    np.testing.assert_array_equal(np.asarray(steps[3][0][0, 1]), crop(bank, 0, (start + [4, 0, 0]) // 2, level=1))
    # replay without pixels: a few bytes of state re-render the same observation at any level
    render = jax.jit(lambda s: multiscale.render(multiscale.obs_state(s), bank))
    for i in (0, 3, 7):
        np.testing.assert_array_equal(np.asarray(render(steps[i][1])), np.asarray(steps[i][0]))
    assert multiscale.obs_state(state).history.dtype == jnp.int16


def test_multiscale_observation_is_one_crop_per_frame_at_each_agents_level(bank):
    """Agents at different levels in one env: every frame is the crop at the agent's own level, the
    same whether the bank renders from its packed pyramid (one row gather) or crops every level and
    selects; rendering from the obs state agrees."""
    from jaxmed.ops.crop import pack_levels

    env = _env(bank, targets=("L0", "L1", "L2"), levels=(0, 1, 2), frames=3)
    packed = bank.replace(packed=pack_levels(bank.levels))
    params = LandmarkParams(max_steps=40, **NO_TARGET_STOP)
    oscillate = [[0, 1, 2], [1, 0, 3], [0, 1, 2], [1, 0, 3]]  # every agent oscillates: all switch levels

    @jax.jit
    def rollout(b, key):
        _, state = env.reset_at(None, b, 1, jnp.asarray([[3, 3, 3], [16, 12, 10], [29, 27, 25]]))

        def body(carry, a):
            state, key = carry
            key, k = jax.random.split(key)
            obs, state, *_ = env.step(k, state, a, params, b)
            return (state, key), (obs, state.level, state.history[:, :3], state.volume, env.render(env.obs_state(state), b))

        actions = jnp.concatenate([jnp.asarray(oscillate * 3, jnp.int32), jax.random.randint(key, (12, 3), 0, 6)])
        return jax.lax.scan(body, (state, key), actions)[1]

    obs_a, levels, history, volume, rendered = (np.asarray(x) for x in rollout(bank, jax.random.key(3)))
    obs_b = np.asarray(rollout(packed, jax.random.key(3))[0])
    np.testing.assert_array_equal(obs_a, obs_b)
    np.testing.assert_array_equal(rendered, obs_a)
    assert any(len(set(row.tolist())) > 1 for row in levels)  # mixed levels within one observation
    for t in (0, 7, 13, 23):
        for agent in range(3):
            lvl = env.config.levels[levels[t, agent]]
            for f in range(3):
                want = crop(bank, int(volume[t]), history[t, agent, f] // bank.factors[lvl], level=lvl)
                np.testing.assert_array_equal(obs_a[t, agent, f], want)


# ------------------------------------------------------------------ auto-reset, flags


def test_auto_reset_restarts_history_and_final_state_rerenders(single, bank):
    params = LandmarkParams(max_steps=3, **NO_TARGET_STOP)
    _, state = single.reset_at(params, bank, 0, [16, 16, 16])
    (_, s1, *_), (_, s2, *_) = run(single, state, [0, 2], params, bank)
    obs, new, reward, terminated, truncated, info = single.step(jax.random.key(7), s2, jnp.array([4]), params, bank)
    assert bool(truncated) and not bool(terminated)
    # the new episode: t = 0, ring filled with the new start, every frame the crop at the new start
    assert int(new.t) == 0 and not bool(new.done[0])
    assert np.all(np.asarray(new.history) == np.asarray(new.pos)[:, None, :])
    first = crop(bank, int(new.volume), new.pos[0])
    for f in range(3):
        np.testing.assert_array_equal(np.asarray(obs[0, f]), first)
    # the final state re-renders exactly what a step without reset returns
    long = LandmarkParams(max_steps=100, **NO_TARGET_STOP)
    obs_long, state_long, reward_long, *_ = single.step(jax.random.key(7), s2, jnp.array([4]), long, bank)
    final = info["final_state"]
    final_obs = jax.jit(single.get_obs)(final, params, bank)
    np.testing.assert_array_equal(np.asarray(final_obs), np.asarray(obs_long))
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(state_long)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(reward), np.asarray(reward_long))
    assert not np.array_equal(np.asarray(final_obs[0, 0]), np.asarray(final_obs[0, 1]))  # real history
    assert np.isfinite(float(info["final_distance_mm"][0]))
    assert np.isnan(float(single.step(jax.random.key(0), s1, jnp.array([4]), params, bank)[5]["final_distance_mm"][0]))


def test_terminated_and_truncated_kept_apart(single, bank):
    t = target_vox(bank, 0, "L0")
    params = LandmarkParams(max_steps=1, terminate_at_target_mm=1.0)
    _, state = single.reset_at(params, bank, 0, t + [1, 0, 0])
    # reaching the target on the last allowed step: terminated, not truncated
    _, _, r, terminated, truncated, info = single.step(jax.random.key(0), state, jnp.array([1]), params, bank)
    assert bool(terminated) and not bool(truncated) and float(info["distance_mm"][0]) == 0.0
    # moving away on the last step: truncated only
    _, _, r, terminated, truncated, info = single.step(jax.random.key(0), state, jnp.array([0]), params, bank)
    assert bool(truncated) and not bool(terminated) and not bool(info["final_state"].done[0])
    assert terminated.shape == () and truncated.shape == ()


# ------------------------------------------------------------------ randomness, jit / vmap / scan


def test_random_resets_are_deterministic_by_key_and_in_range(vreset, bank):
    params = LandmarkParams()
    reset = vreset
    keys = jax.random.split(jax.random.key(3), 16)
    obs_a, sa = reset(keys, params, bank)
    obs_b, sb = reset(keys, params, bank)
    np.testing.assert_array_equal(np.asarray(obs_a), np.asarray(obs_b))
    np.testing.assert_array_equal(np.asarray(sa.pos), np.asarray(sb.pos))
    assert len({tuple(p) for p in np.asarray(sa.pos).reshape(-1, 3)}) > 10
    assert set(np.asarray(sa.volume).tolist()) == {0, 1}
    ext = np.asarray(bank.shapes[0])[np.asarray(sa.volume)][:, None, :]
    pos = np.asarray(sa.pos)
    assert np.all(pos >= np.floor(0.1 * (ext - 1))) and np.all(pos <= np.ceil(0.9 * (ext - 1)))
    # starts near the target
    _, near = reset(keys, params.replace(start_radius_mm=4.0), bank)
    targets = np.asarray(bank.landmarks_vox[0])[np.asarray(near.volume)][:, :3]
    assert np.all(np.abs(np.asarray(near.pos) - targets) <= 4.0 / SPACING + 0.5)


def test_jit_vmap_scan_rollout(multi, bank):
    params = LandmarkParams(max_steps=12)
    n_envs, n_steps = 4, 30
    space = multi.action_space(params)

    def rollout(key):
        key, k0 = jax.random.split(key)
        obs, state = multi.reset(k0, params, bank)

        def body(carry, _):
            state, key = carry
            key, ka, ks = jax.random.split(key, 3)
            obs, state, reward, term, trunc, info = multi.step(ks, state, space.sample(ka), params, bank)
            return (state, key), (obs, state.pos, state.volume, reward, term, trunc)

        return jax.lax.scan(body, (state, key), None, length=n_steps)[1]

    run_all = jax.jit(jax.vmap(rollout))
    keys = jax.random.split(jax.random.key(0), n_envs)
    obs, pos, volume, reward, term, trunc = run_all(keys)
    assert obs.shape == (n_envs, n_steps, 3, 2, D, D, D) and obs.dtype == bank.levels[0].dtype
    assert reward.shape == (n_envs, n_steps, 3) and term.shape == (n_envs, n_steps)
    ext = np.asarray(bank.shapes[0])[np.asarray(volume)][:, :, None, :]
    assert np.all(np.asarray(pos) >= 0) and np.all(np.asarray(pos) <= ext - 1)
    assert np.all(np.abs(np.asarray(reward)) <= 1.0)
    assert np.asarray(trunc).sum() >= n_envs * (n_steps // 12 - 1)  # episodes end and auto-reset
    assert not np.any(np.asarray(term) & np.asarray(trunc))
    again = run_all(keys)
    for a, b in zip((obs, pos, reward), again[:1] + again[1:2] + again[3:4]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(pos[0]), np.asarray(pos[1]))


def test_vmapped_step_matches_single_step(multi, vreset, bank):
    params = LandmarkParams()
    keys = jax.random.split(jax.random.key(1), 16)
    obs, states = vreset(keys, params, bank)
    actions = jax.random.randint(jax.random.key(2), (16, 3), 0, 6, jnp.int32)
    batched = jax.jit(jax.vmap(multi.step, in_axes=(0, 0, 0, None, None)))(keys, states, actions, params, bank)
    state1 = jax.tree.map(lambda x: x[1], states)
    single = multi.step(keys[1], state1, actions[1], params, bank)
    for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single)):
        np.testing.assert_array_equal(np.asarray(a)[1], np.asarray(b))


# ------------------------------------------------------------------ multi-agent


def test_multi_agent_rewards_freeze_and_joint_termination(multi, bank):
    t = np.stack([target_vox(bank, 0, l) for l in ("L0", "L1", "L2")])
    params = LandmarkParams(reward_clip=10.0, terminate_at_target_mm=1.0)
    start = t + np.array([[1, 0, 0], [3, 0, 0], [0, 0, 2]])
    obs, state = multi.reset_at(params, bank, 0, start)
    assert obs.shape == (3, 2, D, D, D)
    steps = run(multi, state, [[1, 1, 4], [1, 1, 5], [1, 1, 5], [1, 1, 5]], params, bank)
    rewards = np.stack([np.asarray(s[2]) for s in steps])
    np.testing.assert_allclose(rewards, [[2, 2, -2], [0, 2, 2], [0, 2, 2], [0, 0, 2]], atol=1e-5)
    assert [bool(s[3]) for s in steps] == [False, False, False, True]
    done = [np.asarray(s[5]["final_state"].done if bool(s[3]) else s[1].done).tolist() for s in steps]
    assert done == [[True, False, False], [True, False, False], [True, True, False], [True, True, True]]
    # agent 0 is frozen after step 1: position, ring and since_switch do not change
    frozen = steps[0][1]
    for s in steps[1:3]:
        np.testing.assert_array_equal(np.asarray(s[1].pos[0]), t[0])
        np.testing.assert_array_equal(np.asarray(s[1].history[0]), np.asarray(frozen.history[0]))
        assert int(s[1].since_switch[0]) == int(frozen.since_switch[0])
    final = steps[3][5]["final_state"]
    np.testing.assert_array_equal(np.asarray(final.pos), t)
    np.testing.assert_allclose(np.asarray(steps[3][5]["final_distance_mm"]), 0.0, atol=1e-5)


# ------------------------------------------------------------------ evaluation helpers, spaces


def test_reset_at_eval_points_and_spaces(single, bank):
    pts = single.eval_start_points(bank, 1)
    assert pts.shape == (27, 3) and pts.dtype == np.int32
    for axis, ext in enumerate((30, 28, 26)):
        assert sorted(set(pts[:, axis].tolist())) == [int(f * ext) for f in (0.25, 0.5, 0.75)]
    params = LandmarkParams()
    o1, s1 = single.reset_at(params, bank, 1, pts[5])
    o2, s2 = single.reset_at(params, bank, 1, pts[5])
    np.testing.assert_array_equal(np.asarray(o1), np.asarray(o2))
    np.testing.assert_array_equal(np.asarray(s1.pos[0]), pts[5])
    space = single.observation_space(params, bank)
    assert o1.shape == space.shape == (1, 3, D, D, D) and o1.dtype == space.dtype
    assert single.num_actions == 6 and single.action_space(params).shape == (1,)
    assert bool(single.action_space(params).contains(jnp.array([5]))) and not bool(single.action_space(params).contains(jnp.array([6])))
    np.testing.assert_allclose(np.asarray(single.distance_mm(s1, bank)), np.asarray(s1.prev_dist))


# ------------------------------------------------------------------ registry


def test_registry(bank):
    assert {"landmark-v0", "landmark-multiscale-v0", "landmark-multiagent-v0"} <= set(registered())
    env, params = jaxmed.make("landmark-v0", bank_labels=bank.labels, crop_size=D, max_steps=50)
    assert env.n_agents == 1 and env.config.crop_size == D and params.max_steps == 50 and env.name == "landmark-v0"
    env, _ = make("landmark-multiscale-v0", bank_labels=bank.labels)
    assert env.config.levels == (0, 1, 2) and env.n_agents == 1
    env, _ = make("landmark-multiagent-v0", bank_labels=bank.labels, frames=1)
    assert env.config.targets == ("L0", "L1", "L2") and env.config.frames == 1
    with pytest.raises(ConfigError, match="landmark-v0"):
        make("landmark-v9", bank_labels=bank.labels)
    with pytest.raises(ConfigError, match="crop_sise"):
        make("landmark-v0", bank_labels=bank.labels, crop_sise=9)
    with pytest.raises(LandmarkError, match="nope"):
        make("landmark-v0", bank_labels=bank.labels, targets=("nope",))


# ------------------------------------------------------------------ bad input


def test_bad_input_raises_jaxmed_errors(single, multi, bank):
    params = LandmarkParams()
    with pytest.raises(LandmarkError, match="'AC'.*available: L0, L1, L2"):
        _env(bank, targets=("AC",))
    unchecked = LandmarkEnv(LandmarkConfig(targets=("AC",), crop_size=D), labels=None)
    with pytest.raises(LandmarkError, match="AC"):
        unchecked.reset(jax.random.key(0), params, bank)
    too_big = LandmarkEnv(LandmarkConfig(targets=("L0",), crop_size=11), labels=bank.labels)
    with pytest.raises(ConfigError, match="crop_size 11 .*max_crop 9"):
        too_big.reset(jax.random.key(0), params, bank)
    no_level = _env(bank, levels=(0, 3))
    with pytest.raises(ConfigError, match="levels"):
        no_level.reset_at(params, bank, 0, [5, 5, 5])
    with pytest.raises(ConfigError):
        LandmarkConfig(targets=("L0",), levels=(1, 0))

    _, state = single.reset_at(params, bank, 0, [16, 16, 16])
    key = jax.random.key(0)
    for bad in (jnp.array([0, 1]), jnp.array([6]), jnp.array([-1]), jnp.array([0.0])):
        with pytest.raises(ConfigError):
            single.step(key, state, bad, params, bank)
    _, mstate = multi.reset_at(params, bank, 0, [16, 16, 16])
    with pytest.raises(ConfigError, match="3 action"):
        multi.step(key, mstate, jnp.array(0), params, bank)
    with pytest.raises(ConfigError, match="3 action"):  # the shape is checked under jit too
        jax.jit(multi.step)(key, mstate, jnp.zeros((2,), jnp.int32), params, bank)


# ------------------------------------------------------------------ random contrast per episode


def _numpy_table(values, knots, full=255.0):
    """NumPy reference of :func:`jaxmed.ops.intensity.apply_knots` (uint8 or float storage)."""
    values = np.asarray(values)
    x = values.astype(np.float64) / full
    y = np.interp(x, np.linspace(0, 1, len(knots)), np.asarray(knots, np.float64) / 255.0) * full
    if values.dtype == np.uint8:
        return np.clip(np.round(y), 0, full).astype(np.uint8)
    return y.astype(values.dtype)


def test_intensity_table_matches_numpy_and_identity_is_exact():
    from jaxmed.ops.intensity import apply_knots, identity_knots, random_knots

    values = np.arange(256, dtype=np.uint8).reshape(4, 4, 16)
    for k in (2, 5, 6, 9):
        np.testing.assert_array_equal(np.asarray(apply_knots(jnp.asarray(values), identity_knots(k), 255.0)), values)
        knots = np.asarray(random_knots(jax.random.key(k), k, 1.0))
        assert not np.array_equal(knots, np.asarray(identity_knots(k)))
        got = np.asarray(apply_knots(jnp.asarray(values), jnp.asarray(knots), 255.0))
        assert got.dtype == np.uint8
        # float32 rounding of the interpolation may move a value that lands on .5 by one level
        assert np.abs(got.astype(int) - _numpy_table(values, knots).astype(int)).max() <= 1
        assert (got == _numpy_table(values, knots)).mean() > 0.97
    fvals = jnp.linspace(0.0, 1.0, 11, dtype=jnp.float32)
    knots = jnp.asarray([255, 0, 128], jnp.uint8)
    np.testing.assert_allclose(np.asarray(apply_knots(fvals, knots, 1.0)),
                               np.interp(np.asarray(fvals), [0, 0.5, 1], [1.0, 0.0, 128 / 255]), atol=1e-6)
    assert not bool(jnp.any(random_knots(jax.random.key(0), 6, 0.0) != identity_knots(6)))


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_random_contrast_per_episode_renders_the_same_crops_through_its_table(dtype):
    from jaxmed.ops.intensity import identity_knots

    bank = build_bank(_subjects(), factors=(1, 2, 4), max_crop=D, dtype=dtype)
    full = 255.0 if dtype == "uint8" else 1.0 / float(bank.intensity_scale)
    plain = _env(bank, targets=("L0", "L1"), levels=(0, 1))
    env = _env(bank, targets=("L0", "L1"), levels=(0, 1), contrast_knots=6)
    params = env.default_params.replace(contrast_prob=1.0)
    drawn = [env.reset(jax.random.key(i), params, bank)[1] for i in range(8)]
    assert all(s.contrast.shape == (6,) and s.contrast.dtype == jnp.uint8 for s in drawn)
    assert len({tuple(np.asarray(s.contrast)) for s in drawn}) == 8  # a new table every episode
    for s in drawn[:3]:
        plain_state = s.replace(contrast=identity_knots(2))
        want = _numpy_table(np.asarray(plain.get_obs(plain_state, params, bank)), np.asarray(s.contrast), full)
        got = np.asarray(env.get_obs(s, params, bank))
        assert got.dtype == want.dtype == np.dtype(dtype)
        if dtype == "uint8":
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1 and (got == want).mean() > 0.97
        else:
            np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(env.render(env.obs_state(s), bank)), got)  # replay re-renders it
        s2, *_ = env.step_env(jax.random.key(0), s, jnp.zeros((2,), jnp.int32), params, bank)
        np.testing.assert_array_equal(np.asarray(s2.contrast), np.asarray(s.contrast))  # fixed for the episode
    # never at evaluation: eval params draw none and evaluation starts see the stored intensities
    assert float(env.eval_params(params).contrast_prob) == 0.0
    s0 = env.reset(jax.random.key(0), env.eval_params(params), bank)[1]
    np.testing.assert_array_equal(np.asarray(env.get_obs(s0, params, bank)),
                                  np.asarray(plain.get_obs(s0.replace(contrast=identity_knots(2)), params, bank)))
    with pytest.raises(ConfigError, match="contrast_knots"):
        _env(bank, contrast_knots=1)


def test_random_gain_per_episode_scales_the_crops_and_never_at_evaluation():
    """``gain_prob``: a reset without a random table draws a gain table instead (``v -> min(g v, full)``
    with ``g`` log-uniform in ``[gain_min, gain_max]``); the crops are the plain ones scaled and clipped;
    evaluation draws none; the options are checked."""
    from jaxmed.envs import make
    from jaxmed.ops.intensity import gain_knots, identity_knots, random_gain_knots

    np.testing.assert_array_equal(np.asarray(gain_knots(6, 1.0)), np.asarray(identity_knots(6)))
    np.testing.assert_array_equal(np.asarray(gain_knots(5, 0.5)), np.round(0.5 * np.linspace(0, 255, 5)).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(gain_knots(5, 2.0)), [0, 128, 255, 255, 255])
    gains = []
    for i in range(64):
        k = np.asarray(random_gain_knots(jax.random.key(i), 6, 1.0, 0.6, 1.3)).astype(float)
        gains.append(k[1] / 51.0)  # knot 1 sits at a fifth of full scale: gain = value / 51
    gains = np.array(gains)
    assert gains.min() >= 0.6 - 0.02 and gains.max() <= 1.3 + 0.02 and gains.std() > 0.1
    assert (gains < 0.9).sum() > 10 and (gains > 1.05).sum() > 10
    assert not bool(jnp.any(random_gain_knots(jax.random.key(0), 6, 0.0, 0.6, 1.3) != identity_knots(6)))

    bank = build_bank(_subjects(), factors=(1, 2, 4), max_crop=D, dtype="float32")
    full = 1.0 / float(bank.intensity_scale)
    plain = _env(bank, targets=("L0", "L1"), levels=(0, 1))
    env = _env(bank, targets=("L0", "L1"), levels=(0, 1), contrast_knots=6)
    params = env.default_params.replace(gain_prob=1.0, gain_min=0.6, gain_max=1.3)
    drawn = [env.reset(jax.random.key(i), params, bank)[1] for i in range(6)]
    for s in drawn:
        knots = np.asarray(s.contrast).astype(float)
        g = knots[1] / 51.0
        assert 0.58 <= g <= 1.32 and np.all(np.diff(knots) >= 0)  # a monotone gain, not a random table
        want = np.asarray(plain.get_obs(s.replace(contrast=identity_knots(2)), params, bank))
        got = np.asarray(env.get_obs(s, params, bank))
        inside = want < 0.7 * full / max(g, 1.0)  # away from the clip and the kink between knots
        np.testing.assert_allclose(got[inside], g * want[inside], rtol=0.02, atol=2e-3 * full)
    # the random table wins when both are drawn; the default (gain_prob 0) leaves the table stream as it was
    both = env.default_params.replace(contrast_prob=1.0, gain_prob=1.0, gain_min=0.6, gain_max=1.3)
    only_table = env.default_params.replace(contrast_prob=1.0)
    for i in range(4):
        np.testing.assert_array_equal(np.asarray(env.reset(jax.random.key(i), both, bank)[1].contrast),
                                      np.asarray(env.reset(jax.random.key(i), only_table, bank)[1].contrast))
    assert float(env.eval_params(params).gain_prob) == 0.0
    s0 = env.reset(jax.random.key(0), env.eval_params(params), bank)[1]
    np.testing.assert_array_equal(np.asarray(s0.contrast), np.asarray(identity_knots(6)))
    with pytest.raises(ConfigError, match="env.gain_prob > 0 needs env.contrast_knots"):
        make("landmark-v0", bank_labels=bank.labels, gain_prob=0.5, gain_min=0.6, gain_max=1.3)
    with pytest.raises(ConfigError, match="gain_min <= gain_max"):
        make("landmark-v0", bank_labels=bank.labels, contrast_knots=6, gain_prob=0.5, gain_min=1.3, gain_max=0.6)
    env2, p2 = make("landmark-v0", bank_labels=bank.labels, contrast_knots=6, gain_prob=0.5, gain_min=0.6, gain_max=1.3)
    assert float(p2.gain_prob) == 0.5 and float(p2.gain_max) == pytest.approx(1.3)
