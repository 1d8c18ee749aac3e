"""Box environment (Navarro / Maicas box agent): IoU maths, every action, the resampled observation
against SciPy, termination / auto-reset, bad inputs, and a DQN learning test on an ellipsoid phantom."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

import jaxmed
from jaxmed.agents.learners import run_chunks
from jaxmed.data import build_bank
from jaxmed.data.phantoms import ellipsoid_phantom, sphere_directions
from jaxmed.envs.box import BoxConfig, BoxEnv, BoxParams, BoxState, apply_action, box_corners
from jaxmed.errors import ConfigError, LandmarkError
from jaxmed.ops.iou import box_iou
from jaxmed.ops.resample import trilinear_levels

G = 15


@pytest.fixture(scope="module")
def bank():
    subjects = [ellipsoid_phantom(seed=s) for s in range(4)]
    return build_bank(subjects, factors=(1, 2, 4), max_crop=G, dtype="float32")


def _env(bank, **kw):
    kw.setdefault("grid_size", G)
    return BoxEnv(BoxConfig(**kw), labels=bank.labels)


@functools.partial(jax.jit, static_argnums=0)
def _step(env, state, action, params, bank):
    """``env.step_env`` jitted once per env configuration (no observation: cheap to compile)."""
    return env.step_env(None, state, action, params, bank)


@functools.partial(jax.jit, static_argnums=0)
def _obs(env, state, bank):
    return env.get_obs(state, None, bank)


def _state(env, bank, box, volume=0, params=None):
    states = env.states_at(bank, [volume], np.asarray(box, np.float32)[None], params)
    return jax.tree.map(lambda x: x[0], states)


def _np_iou(a_lo, a_hi, b_lo, b_hi):
    inter = np.prod(np.clip(np.minimum(a_hi, b_hi) - np.maximum(a_lo, b_lo), 0, None), axis=-1)
    va, vb = np.prod(np.clip(a_hi - a_lo, 0, None), -1), np.prod(np.clip(b_hi - b_lo, 0, None), -1)
    union = va + vb - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# ------------------------------------------------------------------ IoU and actions


def test_box_iou_matches_numpy_incl_disjoint_nested_and_empty():
    rng = np.random.default_rng(0)
    centre = rng.uniform(-10, 10, (500, 2, 3))
    size = rng.uniform(0, 12, (500, 2, 3))
    size[:20, 1] = 0.0  # empty boxes
    lo, hi = centre - size / 2, centre + size / 2
    lo[20:30, 1], hi[20:30, 1] = lo[20:30, 0] + 1, hi[20:30, 0] - 1  # nested
    got = np.asarray(jax.jit(box_iou)(lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]))
    np.testing.assert_allclose(got, _np_iou(lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1]), rtol=1e-5, atol=1e-7)
    assert (got == 0).sum() > 50 and got.max() <= 1.0
    box = np.concatenate([centre[:, 0], size[:, 0]], -1)
    b_lo, b_hi = box_corners(jnp.asarray(box))
    np.testing.assert_allclose(np.asarray(b_lo), lo[:, 0], rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(np.asarray(b_hi), hi[:, 0], rtol=1e-6, atol=1e-5)


def _np_action(box, a, alpha):
    c, s = box[:3].copy(), box[3:].copy()
    if a < 6:
        c[a // 2] += (1 if a % 2 == 0 else -1) * alpha * s[a // 2]
    elif a == 6:
        s = s * (1 + alpha)
    elif a == 7:
        s = s / (1 + alpha)
    elif a in (8, 9, 10):
        s[{8: 0, 9: 2, 10: 1}[a]] /= 1 + alpha
    return np.concatenate([c, s])


def test_every_action_moves_the_box_as_specified(bank):
    env = _env(bank, trigger=True)
    params = BoxParams(alpha=0.2, osc_repeats=0)
    t_lo, t_hi = (np.asarray(x) for x in env.target_box(bank, 0))
    start = np.concatenate([(t_lo + t_hi) / 2 + [3.0, -2.0, 1.0], [20.0, 16.0, 12.0]]).astype(np.float32)
    state = _state(env, bank, start, params=params)
    states = jax.tree.map(lambda x: jnp.broadcast_to(x, (12,) + x.shape), state)
    new, reward, terminated, truncated, info = jax.vmap(_step, in_axes=(None, 0, 0, None, None))(
        env, states, jnp.arange(12)[:, None], params, bank)
    for a in range(12):
        want = start if a == 11 else _np_action(start, a, 0.2)
        np.testing.assert_allclose(np.asarray(new.box[a, 0]), want, rtol=1e-6, atol=1e-5, err_msg=f"action {a}")
        iou = _np_iou(want[:3] - want[3:] / 2, want[:3] + want[3:] / 2, t_lo, t_hi)
        np.testing.assert_allclose(float(info["iou"][a, 0]), iou, rtol=1e-5, atol=1e-7)
        if a == 11:  # the trigger: -eta below tau, the episode ends
            assert float(reward[a, 0]) == -3.0 and bool(terminated[a]) and bool(info["triggered"][a, 0])
        else:
            assert float(reward[a, 0]) == np.sign(np.float32(iou) - np.float32(state.iou[0])), a
            assert not bool(terminated[a]) and not bool(truncated[a])
            np.testing.assert_allclose(np.asarray(new.history[a, 0, 1]), start)  # the previous box moved down the ring
    assert len({float(r) for r in reward[:11, 0]}) > 1  # some moves help, some hurt
    # the pure action function inverts: +x then -x, bigger then smaller
    b = jnp.asarray(start)
    np.testing.assert_allclose(np.asarray(apply_action(apply_action(b, 0, 0.2), 1, 0.2)), start, atol=1e-5)
    np.testing.assert_allclose(np.asarray(apply_action(apply_action(b, 6, 0.2), 7, 0.2)), start, atol=1e-5)


def test_boxes_are_clipped_into_the_volume(bank):
    env = _env(bank, trigger=True)
    params = BoxParams(alpha=0.5, min_size_mm=6.0, osc_repeats=0)
    half = 31 * 2.0 / 2  # world half extent of the 32-voxel, 2 mm phantoms (centred on 0)
    state = _state(env, bank, [half - 1, 0, 0, 8, 7, 6.5], params=params)
    for a, check in ((0, lambda b: b[0] == pytest.approx(half)), (7, lambda b: b[5] == pytest.approx(6.0)),
                     (6, lambda b: True)):
        state = _step(env, state, jnp.array([a]), params, bank)[0]
        assert check(np.asarray(state.box[0])), (a, state.box)
    for _ in range(5):
        state = _step(env, state, jnp.array([6]), params, bank)[0]
    np.testing.assert_allclose(np.asarray(state.box[0, 3:]), [2 * half] * 3, rtol=1e-6)


def test_trigger_reward_and_delta_reward(bank):
    env = _env(bank, trigger=True, reward="delta")
    params = BoxParams(trigger_reward=2.5, trigger_iou=0.6, reward_scale=10.0, osc_repeats=0)
    lo, hi = (np.asarray(x) for x in env.target_box(bank, 1))
    exact = np.concatenate([(lo + hi) / 2, hi - lo])
    state = _state(env, bank, exact, volume=1, params=params)
    assert float(state.iou[0]) == pytest.approx(1.0, abs=1e-5)
    _, r, term, _, info = _step(env, state, jnp.array([11]), params, bank)
    assert float(r[0]) == 2.5 and bool(term)
    assert float(info["final_iou"][0]) == pytest.approx(1.0, abs=1e-5)
    assert float(info["final_centre_error_mm"][0]) == pytest.approx(0.0, abs=1e-4)
    _, r, _, _, info = _step(env, state, jnp.array([6]), params, bank)
    assert float(r[0]) == pytest.approx(10.0 * (float(info["iou"][0]) - 1.0), rel=1e-4)
    assert np.isnan(float(info["final_iou"][0]))


# ------------------------------------------------------------------ observation


@pytest.mark.parametrize("packed", [False, True])
def test_trilinear_levels_matches_map_coordinates(packed):
    rng = np.random.default_rng(1)
    vols = [ellipsoid_phantom(shape=s, seed=i) for i, s in enumerate([(20, 24, 18), (17, 20, 22)])]
    b = build_bank(vols, factors=(1, 2, 3), max_crop=5, dtype="float32", packed=packed)
    f = jax.jit(lambda lvl, idx, pts: trilinear_levels(b.levels, b.shapes[:, idx], idx, lvl, pts, b.margin, -1.0,
                                                       packed=b.packed))
    for idx in range(2):
        for lvl in range(3):
            ext = np.asarray(b.shapes[lvl, idx])
            vol = np.asarray(b.levels[lvl][idx])[tuple(slice(b.margin, b.margin + e) for e in ext)]
            pts = rng.uniform(-1.5, ext + 0.5, (300, 3)).astype(np.float32)
            want = ndimage.map_coordinates(vol, pts.T, order=1, mode="constant", cval=-1.0)
            np.testing.assert_allclose(np.asarray(f(jnp.int32(lvl), idx, pts)), want, rtol=1e-5, atol=1e-6)
            static = trilinear_levels(b.levels, b.shapes[:, idx], idx, lvl, pts, b.margin, -1.0)
            np.testing.assert_allclose(np.asarray(static), want, rtol=1e-5, atol=1e-6)


def _scipy_frame(bank, env, volume, box, level):
    """Reference: the box + context grid mapped to level voxels and sampled with map_coordinates."""
    c = env.config
    window = box[3:] * (1 + 2 * c.context)
    lo = box[:3] - window / 2
    o = np.stack(np.meshgrid(*[np.arange(c.grid_size)] * 3, indexing="ij"), -1).reshape(-1, 3)
    world = lo + o * window / (c.grid_size - 1)
    aff = np.asarray(bank.affines[level, volume], np.float64)
    vox = (world - aff[:3, 3]) @ np.linalg.inv(aff[:3, :3]).T
    ext = np.asarray(bank.shapes[level, volume])
    m = bank.margin
    data = np.asarray(bank.levels[level][volume], np.float32)[m:m + ext[0], m:m + ext[1], m:m + ext[2]]
    return ndimage.map_coordinates(data, vox.T, order=1, mode="constant", cval=0.0).reshape((c.grid_size,) * 3)


def test_observation_matches_scipy_resampling_at_the_chosen_level(bank):
    env = _env(bank, frames=2, levels=(0, 1, 2), context=0.25)
    params = BoxParams(osc_repeats=0)
    # voxels 2 / 4 / 8 mm; grid spacing = smallest side * 1.5 / 14: 3.9 mm (level 0), after "bigger" 4.6 mm (level 1)
    small = np.array([3.0, -2.0, 4.0, 36.0, 40.0, 38.0], np.float32)
    big = np.array([0.0, 1.0, -1.0, 60.0, 62.0, 58.0], np.float32)  # 6.2 mm: level 1 (level 2's 8 mm is too coarse)
    for volume in (0, 3):
        state = _state(env, bank, small, volume, params)
        state = _step(env, state, jnp.array([6]), params, bank)[0]  # frame 1 = the small box
        obs = np.asarray(_obs(env, state, bank))
        assert obs.shape == (1, 2, G, G, G) and obs.dtype == np.float32
        for f, want_level in ((0, 1), (1, 0)):
            box = np.asarray(state.history[0, f])
            level = int(env.frame_level(bank, volume, jnp.asarray(box)))
            assert level == want_level
            np.testing.assert_allclose(obs[0, f], _scipy_frame(bank, env, volume, box, level), rtol=1e-5, atol=1e-5)
        state = _state(env, bank, big, volume, params)
        assert int(env.frame_level(bank, volume, state.box[0])) == 1
        np.testing.assert_allclose(np.asarray(_obs(env, state, bank))[0, 0], _scipy_frame(bank, env, volume, big, 1),
                                   rtol=1e-5, atol=1e-5)
    rendered = jax.jit(lambda s, b: env.render(env.obs_state(s), b))(state, bank)
    np.testing.assert_array_equal(np.asarray(rendered), np.asarray(_obs(env, state, bank)))


def test_uint8_bank_observation_is_rounded(bank):
    subjects = [ellipsoid_phantom(seed=s) for s in range(2)]
    b8 = build_bank(subjects, max_crop=G, dtype="uint8")
    env = _env(b8)
    state = _state(env, b8, [0.0, 0.0, 0.0, 30, 30, 30])
    obs = np.asarray(_obs(env, state, b8))
    assert obs.dtype == np.uint8
    ref = _scipy_frame(b8, env, 0, np.array([0.0, 0.0, 0.0, 30, 30, 30]), 0)
    clear = np.abs(ref - np.floor(ref) - 0.5) > 1e-3  # away from a rounding tie (float32 vs float64)
    assert clear.mean() > 0.9 and np.abs(ref - obs[0, 0]).max() <= 0.5 + 1e-3
    np.testing.assert_array_equal(obs[0, 0][clear], np.clip(np.round(ref), 0, 255).astype(np.uint8)[clear])


# ------------------------------------------------------------------ episodes


def test_oscillation_terminates_and_auto_reset_restarts_the_history(bank):
    env = _env(bank, frames=2, osc_window=6)
    params = BoxParams(osc_repeats=3, max_steps=50)
    state = _state(env, bank, [0.0, 0.0, 0.0, 20, 20, 20], params=params)
    key = jax.random.key(3)
    for i, a in enumerate([0, 1, 0, 1]):  # boxes B, B+, B, B+, B: B for the third time at step 4
        obs, state_next, r, term, trunc, info = env.step(key, state, jnp.array([a]), params, bank)
        if i < 3:
            assert not bool(term) and not bool(info["oscillated"][0])
            state = state_next
    assert bool(term) and bool(info["oscillated"][0]) and not bool(trunc)
    final = info["final_state"]
    assert bool(final.done[0]) and int(final.t) == 4
    assert np.isfinite(float(info["final_iou"][0]))
    # the returned state is a fresh episode: t = 0, history filled with its start box only
    assert int(state_next.t) == 0 and not bool(state_next.done[0])
    hist = np.asarray(state_next.history[0])
    np.testing.assert_array_equal(hist, np.broadcast_to(hist[0], hist.shape))
    np.testing.assert_allclose(np.asarray(obs), np.asarray(_obs(env, state_next, bank)), atol=1e-6)


def test_truncation_at_max_steps(bank):
    env = _env(bank)
    params = BoxParams(osc_repeats=0, max_steps=3)
    state = _state(env, bank, [0.0, 0.0, 0.0, 20, 20, 20], params=params)
    for i in range(3):
        _, nxt, _, term, trunc, info = env.step(jax.random.key(i), state, jnp.array([6]), params, bank)
        assert not bool(term) and bool(trunc) == (i == 2)
        state = nxt
    assert int(info["final_state"].t) == 3


def test_reset_draws_boxes_in_the_volume_and_near_the_target(bank):
    env = _env(bank)
    params = BoxParams()
    keys = jax.random.split(jax.random.key(0), 64)
    _, states = jax.vmap(env.reset, in_axes=(0, None, None))(keys, params, bank)
    size = np.asarray(states.box[:, 0, 3:])
    assert size.min() >= 0.3 * 62 - 1e-3 and size.max() <= 0.7 * 62 + 1e-3
    assert len(np.unique(np.asarray(states.volume))) == 4
    near = params.replace(start_target_jitter=0.1)
    _, states = jax.vmap(env.reset, in_axes=(0, None, None))(keys, near, bank)
    assert float(states.iou.min()) > 0.4


def test_eval_states_and_metrics(bank):
    env = _env(bank)
    params = BoxParams()
    s1, s2 = env.eval_states(params, bank, 5, seed=2), env.eval_states(params, bank, 5, seed=2)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert s1.volume.shape == (20,) and s1.history.shape == (20, 1, 8, 6)
    np.testing.assert_allclose(np.asarray(s1.box[::5, 0]), [[0, 0, 0, 31, 31, 31]] * 4, atol=1e-4)  # centred, 0.5 of 62 mm
    m = jax.vmap(env.eval_metrics, in_axes=(0, None, None))(s1, params, bank)
    assert set(m) == {"iou", "centre_error_mm", "wall_distance_mm"} and m["iou"].shape == (20, 1)
    lo, hi = (np.asarray(x) for x in env.target_box(bank, 2))
    centre = (lo + hi) / 2
    box = np.asarray(s1.box[10, 0])
    np.testing.assert_allclose(float(m["centre_error_mm"][10, 0]), np.linalg.norm(box[:3] - centre), rtol=1e-5)
    np.testing.assert_allclose(float(m["iou"][10, 0]), _np_iou(box[:3] - box[3:] / 2, box[:3] + box[3:] / 2, lo, hi), rtol=1e-5)
    wall = np.mean(np.abs(np.concatenate([box[:3] - box[3:] / 2 - lo, box[:3] + box[3:] / 2 - hi])))
    np.testing.assert_allclose(float(m["wall_distance_mm"][10, 0]), wall, rtol=1e-5)


def test_target_box_is_the_ellipsoid_box():
    v, lm = ellipsoid_phantom(seed=5, n_points=40)
    d = sphere_directions(40)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, rtol=1e-12)
    b = build_bank([(v, lm)], max_crop=G)
    env = _env(b)
    assert env.required_labels == tuple(f"organ#{i:03d}" for i in range(40))
    lo, hi = env.target_box(b, 0)
    mask = v.data > 0.7
    idx = np.argwhere(mask)
    # the voxelised ellipsoid fits in its analytic box, touching it within a voxel
    w = idx * 2.0 + v.affine[:3, 3]
    assert np.all(w.min(0) >= np.asarray(lo) - 1e-3) and np.all(w.max(0) <= np.asarray(hi) + 1e-3)
    assert np.all(w.min(0) - np.asarray(lo) < 2.0) and np.all(np.asarray(hi) - w.max(0) < 2.0)


# ------------------------------------------------------------------ bad input


def test_bad_inputs_raise_clear_errors(bank):
    with pytest.raises(LandmarkError, match="unknown structure 'liver'.*organ"):
        BoxEnv(BoxConfig(structure="liver"), labels=bank.labels)
    env = _env(bank)
    state = _state(env, bank, [0.0, 0.0, 0.0, 20, 20, 20])
    with pytest.raises(ConfigError, match="shape"):
        env.step(jax.random.key(0), state, jnp.array([1, 2]), None, bank)
    with pytest.raises(ConfigError, match=r"0\.\.10"):
        env.step(jax.random.key(0), state, jnp.array([11]), None, bank)  # no trigger configured
    with pytest.raises(ConfigError, match="integers"):
        env.step(jax.random.key(0), state, jnp.array([1.0]), None, bank)
    with pytest.raises(ConfigError, match="pyramid levels"):
        _env(bank, levels=(0, 3)).reset(jax.random.key(0), None, bank)
    with pytest.raises(ConfigError, match="reward"):
        BoxConfig(reward="iou")
    with pytest.raises(ConfigError, match="grid_size"):
        BoxConfig(grid_size=1)
    with pytest.raises(ConfigError, match="VolumeBank"):
        env.reset(jax.random.key(0), None, None)
    with pytest.raises(ConfigError, match="unknown option"):
        jaxmed.make("box-v0", bank.labels, structure="organ", crop_size=15)
    with pytest.raises(ConfigError, match="required_labels|labels"):
        BoxEnv(BoxConfig()).required_labels


def test_registry_builds_the_box_env(bank):
    env, params = jaxmed.make("box-v0", bank.labels, structure="organ", grid_size=G, trigger=True, alpha=0.1, max_steps=7)
    assert isinstance(env, BoxEnv) and env.num_actions == 12 and params.alpha == 0.1 and params.max_steps == 7
    assert env.metric_labels == ("organ",) and len(env.required_labels) == 26
    assert isinstance(env.reset(jax.random.key(0), params, bank)[1], BoxState)


# ------------------------------------------------------------------ learning



def _trained_random_start(env, eval_params, bank, states, net, net_params, max_steps: int):
    """Eval metrics of the greedy Q-policy, of a random policy (a random action per env and step,
    seeded by the observation) and of the start states: three dicts of ``(E, A)`` arrays."""
    from jaxmed.agents.rollout import greedy_rollout

    def policy(use_random):
        def act(obs):
            keys = jax.vmap(jax.random.key)(obs.reshape(obs.shape[0], -1).astype(jnp.int32).sum(-1))
            random = jax.vmap(lambda k: jax.random.randint(k, (env.n_agents,), 0, env.num_actions))(keys)
            return jnp.where(use_random, random, jnp.argmax(net.apply(net_params, obs), -1))
        return act

    run = jax.jit(lambda use_random: greedy_rollout(policy(use_random), env, eval_params, bank, states, max_steps)["metrics"])
    start = jax.vmap(env.eval_metrics, in_axes=(0, None, None))(states, eval_params, bank)
    return run(False), run(True), start


def test_dqn_learns_to_fit_the_box():
    """A few hundred DQN updates: the greedy agent's final IoU from fixed starts is far above a random policy's."""
    from jaxmed.agents.dqn import DQNConfig, make_train
    from jaxmed.networks import QNetwork

    b = build_bank([ellipsoid_phantom(seed=s) for s in range(8)], max_crop=G, dtype="uint8")
    env = _env(b, context=0.25)
    params = BoxParams(max_steps=30, osc_repeats=0)
    net = QNetwork(trunk="patch", n_actions=env.num_actions, trunk_kwargs={"patch_size": 5, "width": 0.5}, head_kwargs={"hidden": (64, 32)})
    cfg = DQNConfig(n_envs=16, chunk_steps=50, batch_size=64, learning_rate=1e-3, learning_starts=200, replay_capacity=20_000,
                    eps_decay_steps=300, target_update_period=100)
    fns = make_train(cfg, env, params, net)
    rs, metrics = run_chunks(fns, b, 10, seed=0)
    assert np.isfinite(float(metrics["loss"]))
    eval_params = params.replace(osc_repeats=3)
    states = env.eval_states(eval_params, b, 4, seed=1)

    trained, rand, start = _trained_random_start(env, eval_params, b, states, net, rs.params, 30)
    iou, iou_rand, iou0 = (float(m["iou"].mean()) for m in (trained, rand, start))
    assert iou > 0.4 and iou > iou_rand + 0.3 and iou > iou0 + 0.3, (iou, iou_rand, iou0)
    assert float(trained["centre_error_mm"].mean()) < 0.5 * float(start["centre_error_mm"].mean())


# ------------------------------------------------------------------ corner pair (Zheng 2021)

from jaxmed.envs.corner_pair import CornerPairConfig, CornerPairEnv, CornerPairParams  # noqa: E402


def _corner_env(bank, **kw):
    kw.setdefault("crop_size", G)
    return CornerPairEnv(CornerPairConfig(**kw), labels=bank.labels)


def _world(bank, volume, vox):
    aff = np.asarray(bank.affines[0, volume], np.float64)
    return np.asarray(vox, np.float64) @ aff[:3, :3].T + aff[:3, 3]


def test_corner_pair_moves_both_corners_with_a_shared_iou_reward(bank):
    env = _corner_env(bank)
    params = CornerPairParams(terminate_at_target_mm=0.0, distance_weight=0.5, reward_clip=10.0)
    t_lo, t_hi = (np.asarray(x) for x in env.target_box(bank, 2))
    start = np.array([[4, 5, 6], [25, 24, 26]])
    state = jax.tree.map(lambda x: x[0], env.corner_states(bank, [2], start[None]))
    np.testing.assert_allclose(np.asarray(state.prev_dist), np.linalg.norm(_world(bank, 2, start) - [t_lo, t_hi], axis=-1), rtol=1e-5)
    rng = np.random.default_rng(0)
    for _ in range(6):
        action = rng.integers(0, 6, 2)
        new, reward, term, trunc, info = _step(env, state, jnp.asarray(action), params, bank)
        want = np.asarray(state.pos).copy()
        for i, a in enumerate(action):
            want[i, a // 2] += 1 if a % 2 == 0 else -1
        np.testing.assert_array_equal(np.asarray(new.pos), want)
        iou = [_np_iou(np.minimum(*w), np.maximum(*w), t_lo, t_hi) for w in (_world(bank, 2, state.pos), _world(bank, 2, want))]
        dist = np.linalg.norm(_world(bank, 2, want) - [t_lo, t_hi], axis=-1)
        expect = np.sign(np.float32(iou[1]) - np.float32(iou[0])) + 0.5 * (np.asarray(state.prev_dist) - dist)
        np.testing.assert_allclose(np.asarray(reward), expect, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(info["iou"]), [iou[1]] * 2, rtol=1e-5)
        assert not bool(term) and not bool(trunc)
        state = new
    m = env.eval_metrics(state, params, bank)
    np.testing.assert_allclose(np.asarray(m["corner_error_mm"]), dist, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(m["iou"]), [iou[1]] * 2, rtol=1e-5)


def test_corner_pair_coarse_to_fine_termination_and_observation(bank):
    env = _corner_env(bank, levels=(0, 1), frames=2, osc_window=4)
    params = CornerPairParams(terminate_at_target_mm=0.0, osc_repeats=2, max_steps=50)
    state = jax.tree.map(lambda x: x[0], env.corner_states(bank, [1], np.array([[[6, 8, 10], [24, 22, 20]]])))
    assert state.level.tolist() == [1, 1]
    # corner 0 oscillates (+x, -x) at the coarse level -> finer; corner 1 keeps going +y
    state, *_ = _step(env, state, jnp.array([0, 2]), params, bank)
    assert state.pos.tolist() == [[8, 8, 10], [24, 24, 20]]  # 2-voxel steps at level 1 (factor 2)
    state, *_ = _step(env, state, jnp.array([1, 2]), params, bank)
    assert state.level.tolist() == [0, 1]
    state, *_ = _step(env, state, jnp.array([0, 2]), params, bank)
    state, r, term, _, info = _step(env, state, jnp.array([1, 2]), params, bank)
    assert state.done.tolist() == [True, False] and not bool(term)  # oscillation at the finest level ends corner 0
    frozen = np.asarray(state.pos[0])
    state, r, term, _, _ = _step(env, state, jnp.array([0, 3]), params, bank)
    np.testing.assert_array_equal(np.asarray(state.pos[0]), frozen)
    assert float(r[0]) == 0.0
    obs = np.asarray(_obs(env, state, bank))
    assert obs.shape == (2, 2, G, G, G)
    m, h = bank.margin, G // 2
    for agent in range(2):
        for f in range(2):
            lvl = int(state.level[agent])
            c = np.asarray(state.history[agent, f]) // (2**lvl) + m
            want = np.asarray(bank.levels[lvl][1])[c[0] - h:c[0] + h + 1, c[1] - h:c[1] + h + 1, c[2] - h:c[2] + h + 1]
            np.testing.assert_array_equal(obs[agent, f], want)


def test_corner_pair_eval_states_and_bad_inputs(bank):
    env = _corner_env(bank, levels=(0, 1))
    params = env.eval_params(CornerPairParams())
    assert params.terminate_at_target_mm == 0.0
    states = env.eval_states(params, bank, 3, seed=0)
    assert states.pos.shape == (12, 2, 3) and states.level.tolist() == [[1, 1]] * 12
    np.testing.assert_array_equal(np.asarray(states.pos[0]), [[8, 8, 8], [23, 23, 23]])  # centred, half the extent
    assert env.required_labels == tuple(f"organ#{i:03d}" for i in range(26))
    assert env.metric_labels == ("organ min corner", "organ max corner")
    state = jax.tree.map(lambda x: x[0], states)
    with pytest.raises(ConfigError, match="2 action"):
        env.step(jax.random.key(0), state, jnp.array(1), params, bank)
    with pytest.raises(ConfigError, match="0..5"):
        env.step(jax.random.key(0), state, jnp.array([1, 6]), params, bank)
    with pytest.raises(ConfigError, match="crop_size 31 is larger"):
        _corner_env(bank, crop_size=31).reset(jax.random.key(0), None, bank)
    with pytest.raises(LandmarkError, match="unknown structure 'brain'"):
        CornerPairEnv(CornerPairConfig(structure="brain"), labels=bank.labels)
    env2, p2 = jaxmed.make("corner-pair-v0", bank.labels, crop_size=G, distance_weight=0.25)
    assert isinstance(env2, CornerPairEnv) and env2.corner_config.structure == "organ" and p2.distance_weight == 0.25


def test_collab_dqn_learns_the_corner_pair():
    """Shared-trunk two-head DQN: the greedy corners' final IoU from fixed starts is far above a random policy's."""
    from jaxmed.agents.dqn import DQNConfig, make_train
    from jaxmed.networks import MultiAgentQNetwork

    b = build_bank([ellipsoid_phantom(seed=s) for s in range(8)], factors=(1, 2), max_crop=G, dtype="uint8")
    env = _corner_env(b, levels=(0, 1))
    params = CornerPairParams(max_steps=40, terminate_at_target_mm=0.0)
    net = MultiAgentQNetwork(trunk="patch", n_actions=6, n_agents=2, share_trunk=True,
                             trunk_kwargs={"patch_size": 5, "width": 0.5}, head_kwargs={"hidden": (64, 32)})
    cfg = DQNConfig(n_envs=16, chunk_steps=50, batch_size=64, learning_rate=1e-3, learning_starts=200, replay_capacity=20_000,
                    eps_decay_steps=300, target_update_period=100)
    fns = make_train(cfg, env, params, net)
    rs, metrics = run_chunks(fns, b, 10, seed=0)
    eval_params = env.eval_params(params)
    states = env.eval_states(eval_params, b, 4, seed=1)

    trained, rand, start = _trained_random_start(env, eval_params, b, states, net, rs.params, 40)
    iou, iou_rand, iou0 = (float(m["iou"].mean()) for m in (trained, rand, start))
    assert iou > 0.3 and iou > iou_rand + 0.25 and iou > iou0 + 0.25, (iou, iou_rand, iou0)
