"""Registration env: resampling vs SciPy, TRE and action maths vs NumPy, dynamics, remaps, bad
inputs, a learning test on a phantom; the optax baseline; the ``jaxmed register`` command."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxmed.agents.learners import run_chunks
from jaxmed.data import blob_phantom, build_bank, geometry
from jaxmed.envs import make
from jaxmed.envs.registration import (
    N_ACTIONS,
    REMAP_KNOTS,
    RegistrationConfig,
    RegistrationEnv,
    RegistrationParams,
    remap_intensity,
)
from jaxmed.errors import ConfigError, LandmarkError

LABELS = ("L0", "L1", "L2", "L3")
D = 15


def _np_rigid(params, c):
    """NumPy ``(4, 4)``: ``x -> R (x - c) + c + t`` with ``R = Rz Ry Rx`` (degrees)."""
    m = np.eye(4)
    r = geometry.rotation_matrix(np.asarray(params[3:], np.float64))
    m[:3, :3] = r
    m[:3, 3] = np.asarray(c) + np.asarray(params[:3], np.float64) - r @ np.asarray(c)
    return m


@pytest.fixture(scope="module")
def bank():
    subjects = [blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=4, seed=s) for s in range(4)]
    return build_bank(subjects, labels=LABELS, factors=(1, 2), max_crop=D, dtype="uint8")


@pytest.fixture(scope="module")
def float_bank():
    subjects = [blob_phantom(shape=(28, 30, 26), spacing=2.0, n_landmarks=4, seed=s) for s in (5, 6)]
    return build_bank(subjects, labels=LABELS, factors=(1, 2), max_crop=D, dtype="float32")


def _env(**kw):
    cfg = dict(landmarks=LABELS, crop_size=D, levels=(0, 1), steps=(1.0, 2.0))
    cfg.update(kw)
    return RegistrationEnv(RegistrationConfig(**cfg), labels=LABELS)


# ---------------------------------------------------------------- geometry vs NumPy / SciPy


@pytest.mark.parametrize("centre", ["fov", "landmarks"])
def test_observation_matches_scipy_affine_transform(float_bank, centre):
    """Both channels at both levels: the fixed crop is plain slicing, the moving channel is
    ``scipy.ndimage.affine_transform(order=1, cval=0)`` of the level volume under ``G^{-1} T``."""
    env = _env(centre=centre)
    rng = np.random.default_rng(0)
    for volume in range(2):
        gt = rng.uniform(-1, 1, 6) * [8, 8, 8, 12, 12, 12]
        est = rng.uniform(-1, 1, 6) * [3, 3, 3, 4, 4, 4]
        state = env.initial_state(float_bank, volume, gt).replace(estimate=jnp.asarray(est, jnp.float32))
        aff0 = np.asarray(float_bank.affines[0, volume], np.float64)
        shape0 = np.asarray(float_bank.shapes[0, volume])
        lms = np.asarray(float_bank.landmarks_world[volume], np.float64)
        c = lms.mean(0) if centre == "landmarks" else aff0[:3, :3] @ ((shape0 - 1) / 2) + aff0[:3, 3]
        np.testing.assert_allclose(np.asarray(env.center(float_bank, volume)), c, atol=1e-4)
        w = np.linalg.inv(_np_rigid(gt, c)) @ _np_rigid(est, c)
        get_obs = jax.jit(env.get_obs)
        for idx, lvl in enumerate((0, 1)):
            obs = np.asarray(get_obs(state.replace(level=jnp.int32(idx)), None, float_bank))
            assert obs.shape == (1, 2, D, D, D) and obs.dtype == np.float32
            m = float_bank.margin
            ext = np.asarray(float_bank.shapes[lvl, volume])
            vol = np.asarray(float_bank.levels[lvl][volume])[m : m + ext[0], m : m + ext[1], m : m + ext[2]]
            aff = np.asarray(float_bank.affines[lvl, volume], np.float64)
            centre_vox = np.clip(np.rint(np.linalg.solve(aff, np.append(c, 1.0))[:3]), 0, ext - 1).astype(int)
            origin = centre_vox - D // 2
            padded = np.pad(vol, D)
            fixed = padded[tuple(slice(o + D, o + 2 * D) for o in origin)]
            np.testing.assert_allclose(obs[0, 0], fixed, atol=1e-6)
            shift = np.eye(4)
            shift[:3, 3] = origin
            grid = np.linalg.inv(aff) @ w @ aff @ shift
            expected = ndimage.affine_transform(vol.astype(np.float64), grid[:3, :3], grid[:3, 3], output_shape=(D, D, D), order=1,
                                                mode="constant", cval=0.0)
            np.testing.assert_allclose(obs[0, 1], expected, atol=2e-4)
            assert np.abs(expected).sum() > 1.0  # the crop holds anatomy


def test_tre_and_errors_match_numpy(bank):
    env = _env()
    rng = np.random.default_rng(1)
    for _ in range(5):
        volume = int(rng.integers(0, 4))
        gt, est = rng.uniform(-20, 20, 6), rng.uniform(-20, 20, 6)
        state = env.initial_state(bank, volume, gt).replace(estimate=jnp.asarray(est, jnp.float32))
        c = np.asarray(env.center(bank, volume), np.float64)
        lms = np.asarray(bank.landmarks_world[volume], np.float64)
        t, g = _np_rigid(est, c), _np_rigid(gt, c)
        hom = np.c_[lms, np.ones(len(lms))]
        tre = np.linalg.norm((hom @ t.T)[:, :3] - (hom @ g.T)[:, :3], axis=1).mean()
        m = jax.jit(env.eval_metrics)(state, None, bank)
        np.testing.assert_allclose(float(m["tre_mm"][0]), tre, rtol=1e-4)
        shift = np.linalg.norm(t[:3, 3] + t[:3, :3] @ c - g[:3, 3] - g[:3, :3] @ c)
        np.testing.assert_allclose(float(m["translation_error_mm"][0]), shift, rtol=1e-4)
        rel = g[:3, :3].T @ t[:3, :3]
        angle = np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1)))
        np.testing.assert_allclose(float(m["rotation_error_deg"][0]), angle, atol=2e-3)
        pose = float(jax.jit(_env(reward="pose").error)(state, bank)[0])
        np.testing.assert_allclose(pose, float(m["translation_error_mm"][0]) + float(m["rotation_error_deg"][0]), rtol=1e-5)


def test_every_action_changes_its_parameter(bank):
    """From the identity, action ``a`` moves parameter ``a // 2`` by ``±step`` and nothing else; from any
    estimate the new transform is ``T @ D(±step)`` (composition in the fixed frame, NumPy)."""
    env = _env()
    params = RegistrationParams(max_steps=50)
    step = jax.jit(env.step_env)
    start = env.initial_state(bank, 1, jnp.asarray([5.0, -3.0, 2.0, 4.0, -6.0, 8.0]))
    level_step = 2.0  # start at the coarsest level: steps[1]
    c = np.asarray(env.center(bank, 1), np.float64)
    for a in range(N_ACTIONS):
        new, reward, *_ = step(jax.random.key(0), start, jnp.array([a]), params, bank)
        expected = np.zeros(6)
        expected[a // 2] = level_step if a % 2 == 0 else -level_step
        np.testing.assert_allclose(np.asarray(new.estimate), expected, atol=1e-4)
        np.testing.assert_allclose(float(reward[0]), float(start.prev_error[0] - new.prev_error[0]), rtol=1e-5)
    est = np.array([3.0, -2.0, 1.0, 10.0, -5.0, 7.0])
    state = start.replace(estimate=jnp.asarray(est, jnp.float32))
    for a in range(N_ACTIONS):
        new, *_ = step(jax.random.key(0), state, jnp.array([a]), params, bank)
        d = np.zeros(6)
        d[a // 2] = level_step if a % 2 == 0 else -level_step
        np.testing.assert_allclose(_np_rigid(np.asarray(new.estimate, np.float64), c), _np_rigid(est, c) @ _np_rigid(d, c), atol=2e-4)
        # the observation depends on G^{-1} T only: the moving image moves by D(d), whatever G is
        other_gt = start.replace(gt=jnp.zeros(6), estimate=jnp.zeros(6))
        moved, *_ = step(jax.random.key(0), other_gt, jnp.array([a]), params, bank)
        np.testing.assert_allclose(np.asarray(moved.estimate), d, atol=1e-4)


# ---------------------------------------------------------------- dynamics


def test_reset_draws_within_bounds_and_replay_renders_the_observation(bank):
    env = _env(remap="nonmonotone")
    params = RegistrationParams(max_translation_mm=7.0, max_rotation_deg=3.0)
    obs, s = jax.jit(jax.vmap(env.reset, in_axes=(0, None, None)))(jax.random.split(jax.random.key(0), 64), params, bank)
    gt = np.asarray(s.gt)
    assert np.all(np.abs(gt[:, :3]) <= 7.0) and np.all(np.abs(gt[:, 3:]) <= 3.0)
    assert np.abs(gt[:, :3]).max() > 5.0 and np.abs(gt[:, 3:]).max() > 2.0
    assert np.all(np.asarray(s.estimate) == 0) and set(np.asarray(s.volume).tolist()) == {0, 1, 2, 3}
    assert np.all(np.asarray(s.level) == 1) and not np.asarray(s.done).any()
    tre = np.asarray(jax.vmap(env.tre_mm, in_axes=(0, None))(s, bank))
    np.testing.assert_allclose(np.asarray(s.prev_error), tre, rtol=1e-6)
    # the replay stores a few bytes per state and re-renders exactly the observation
    os_ = jax.vmap(env.obs_state)(s)
    again = jax.jit(jax.vmap(env.render, in_axes=(0, None)))(os_, bank)
    np.testing.assert_allclose(np.asarray(again), np.asarray(obs), atol=1e-6)
    per = sum(x.dtype.itemsize * int(np.prod(x.shape[1:])) for x in jax.tree.leaves(os_))
    assert per <= 64, per


def test_pairs_of_two_subjects_draw_another_volume_and_measure_its_landmarks(bank):
    """``other_subject_prob``: the moving image comes from another bank volume with that probability
    (never the fixed one), the one-subject draws are unchanged, the TRE compares the fixed subject's
    carried landmarks with the moving subject's (NumPy), and channel 1 samples the moving volume."""
    keys = jax.random.split(jax.random.key(3), 400)
    params = RegistrationParams()
    reset = lambda env: jax.jit(jax.vmap(env.reset, in_axes=(0, None, None)))(keys, params, bank)  # noqa: E731
    _, one = reset(_env())
    obs, two = reset(_env(other_subject_prob=1.0))
    _, half = reset(_env(other_subject_prob=0.5))
    np.testing.assert_array_equal(np.asarray(one.moving), np.asarray(one.volume))
    for s in (two, half):  # same fixed volumes and poses as the one-subject env
        np.testing.assert_array_equal(np.asarray(s.volume), np.asarray(one.volume))
        np.testing.assert_array_equal(np.asarray(s.gt), np.asarray(one.gt))
    vol, mov = np.asarray(two.volume), np.asarray(two.moving)
    assert np.all(mov != vol)
    for v in range(4):  # uniform among the three others
        counts = np.bincount(mov[vol == v], minlength=4)
        assert counts[v] == 0 and counts.sum() > 60 and counts.min(initial=99, where=np.arange(4) != v) > 0.2 * counts.sum()
    assert 0.4 < np.mean(np.asarray(half.moving) != np.asarray(half.volume)) < 0.6
    env = _env(other_subject_prob=1.0)
    for e in range(5):
        state = jax.tree.map(lambda x: x[e], two).replace(estimate=jnp.asarray([4.0, -2.0, 1.0, 3.0, 0.0, -5.0]))
        v, m = int(state.volume), int(state.moving)
        c = np.asarray(env.center(bank, v), np.float64)
        t, g = _np_rigid(np.asarray(state.estimate, np.float64), c), _np_rigid(np.asarray(state.gt, np.float64), c)
        fixed_lm, moving_lm = (np.c_[np.asarray(bank.landmarks_world[i], np.float64), np.ones(4)] for i in (v, m))
        expected = np.linalg.norm((fixed_lm @ t.T)[:, :3] - (moving_lm @ g.T)[:, :3], axis=1).mean()
        np.testing.assert_allclose(float(env.tre_mm(state, bank)[0]), expected, rtol=1e-4)
        start = jax.tree.map(lambda x: x[e], two)
        same = start.replace(moving=start.volume)  # the same pose on the fixed subject's own image
        assert not np.allclose(np.asarray(env.get_obs(start, params, bank))[0, 1], np.asarray(env.get_obs(same, params, bank))[0, 1])
        np.testing.assert_allclose(np.asarray(obs[e]), np.asarray(env.get_obs(start, params, bank)), atol=1e-6)
    with pytest.raises(ConfigError, match="reward 'tre'"):
        _env(other_subject_prob=0.5, reward="pose")
    with pytest.raises(ConfigError, match="other_subject_prob"):
        _env(other_subject_prob=1.5)


def test_oscillation_refines_then_terminates_and_auto_reset(bank):
    """+x, -x, +x, -x oscillates (3 visits): coarse level -> fine level; again -> terminated. The
    auto-reset returns a fresh state; info['final_state'] and the final_* metrics are the ended one's."""
    env = _env()
    params = RegistrationParams(max_steps=100)
    obs, state = env.reset(jax.random.key(1), params, bank)
    actions = [0, 1, 0, 1]
    for i, a in enumerate(actions):
        obs, state, r, term, trunc, info = env.step(jax.random.key(2), state, jnp.array([a]), params, bank)
        assert not bool(term) and not bool(trunc)
        assert np.isnan(np.asarray(info["final_tre_mm"])).all()
    assert int(state.level) == 0 and int(state.since_switch) == 0  # switched to the finest level after the 4th step
    assert bool(info["oscillated"][0])
    np.testing.assert_allclose(np.asarray(state.estimate), 0.0, atol=1e-5)
    for a in actions[:3]:
        obs, state, r, term, trunc, info = env.step(jax.random.key(2), state, jnp.array([a]), params, bank)
        assert not bool(term)
    obs, new_state, r, term, trunc, info = env.step(jax.random.key(2), state, jnp.array([1]), params, bank)
    assert bool(term) and not bool(trunc)
    final = info["final_state"]
    assert bool(final.done[0]) and int(final.t) == 8
    assert int(new_state.t) == 0 and not bool(new_state.done[0]) and int(new_state.level) == 1
    np.testing.assert_allclose(np.asarray(info["final_tre_mm"]), np.asarray(env.tre_mm(final, bank)), rtol=1e-6)
    assert np.isfinite(np.asarray(info["final_rotation_error_deg"])).all()
    np.testing.assert_allclose(np.asarray(obs), np.asarray(env.get_obs(new_state, params, bank)), atol=1e-6)
    # a done state is frozen: no move, no reward
    frozen, reward, *_ = jax.jit(env.step_env)(jax.random.key(0), final, jnp.array([4]), params, bank)
    np.testing.assert_array_equal(np.asarray(frozen.estimate), np.asarray(final.estimate))
    assert float(reward[0]) == 0.0


def test_truncation_and_ground_truth_termination(bank):
    env = _env()
    _, state = env.reset(jax.random.key(4), RegistrationParams(max_steps=2), bank)
    _, state, _, term, trunc, info = env.step(jax.random.key(0), state, jnp.array([2]), RegistrationParams(max_steps=2), bank)
    assert not bool(trunc)
    _, state, _, term, trunc, info = env.step(jax.random.key(0), state, jnp.array([2]), RegistrationParams(max_steps=2), bank)
    assert bool(trunc) and not bool(term) and int(info["final_state"].t) == 2 and int(state.t) == 0
    # terminate_at_tre_mm: a move at the finest level that lands within the threshold ends the episode
    single = _env(levels=(0,), steps=(1.0,))
    s = single.initial_state(bank, 0, jnp.asarray([1.0, 0, 0, 0, 0, 0]))
    params = RegistrationParams(terminate_at_tre_mm=0.5)
    new, _, term, *_ = single.step_env(jax.random.key(0), s, jnp.array([0]), params, bank)
    assert bool(term) and float(new.prev_error[0]) < 1e-4
    new, _, term, *_ = single.step_env(jax.random.key(0), s, jnp.array([0]), single.eval_params(params), bank)
    assert not bool(term)


def test_eval_states_are_seeded_and_metrics_batch(bank):
    env = _env()
    params = RegistrationParams(max_translation_mm=20.0, max_rotation_deg=20.0)
    a = env.eval_states(params, bank, 3, seed=5)
    b = env.eval_states(params, bank, 3, seed=5)
    c = env.eval_states(params, bank, 3, seed=6)
    assert np.asarray(a.gt).shape == (12, 6)
    np.testing.assert_array_equal(np.asarray(a.gt), np.asarray(b.gt))
    assert not np.allclose(np.asarray(a.gt), np.asarray(c.gt))
    np.testing.assert_array_equal(np.asarray(a.volume), np.repeat(np.arange(4), 3))
    m = jax.vmap(env.eval_metrics, in_axes=(0, None, None))(a, params, bank)
    assert set(m) == {"tre_mm", "rotation_error_deg", "translation_error_mm"} and m["tre_mm"].shape == (12, 1)
    np.testing.assert_allclose(np.asarray(m["translation_error_mm"][:, 0]), np.linalg.norm(np.asarray(a.gt)[:, :3], axis=1), rtol=1e-5)


# ---------------------------------------------------------------- remaps


def test_remaps_are_what_they_claim(bank):
    x = np.linspace(0.0, 1.0, 201, dtype=np.float32)
    np.testing.assert_array_equal(remap_intensity(x, "none"), x)
    mono = remap_intensity(x, "monotone")
    assert np.all(np.diff(mono) > 0) and mono[0] == 0.0
    non = np.asarray(remap_intensity(jnp.asarray(x), "nonmonotone"))
    assert (np.diff(non) < 0).sum() > 50 and (np.diff(non) > 0).sum() > 50 and non[0] == 0.0
    np.testing.assert_allclose(non[::20], np.interp(x[::20], *REMAP_KNOTS["nonmonotone"]), atol=1e-6)
    # at the ground truth the moving channel is the remapped fixed channel
    for kind in ("none", "monotone", "nonmonotone"):
        env = _env(remap=kind)
        s = env.initial_state(bank, 2, jnp.asarray([4.0, 1.0, -2.0, 5.0, 0.0, -3.0]))
        s = s.replace(estimate=s.gt)
        obs = np.asarray(env.get_obs(s, None, bank))[0]
        np.testing.assert_allclose(obs[1], remap_intensity(obs[0], kind), atol=2e-3)
    # non-monotone: inside the head the aligned images no longer correlate (intensity matching fails)
    inside = obs[0] > 0.1
    assert inside.sum() > 500 and np.corrcoef(obs[0][inside], obs[1][inside])[0, 1] < 0.5


# ---------------------------------------------------------------- bad input



@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_random_moving_gain_scales_only_the_moving_image(bank, float_bank, dtype):
    """``gain_prob``: a reset draws a gain log-uniform in ``[gain_min, gain_max]`` with that
    probability (from its own fold of the key: volumes, poses and moving volumes are those drawn
    without it); channel 1 becomes ``min(gain * stored, full scale)`` (NumPy), channel 0 is unchanged;
    the replay re-renders it; evaluation never draws one; bounds are checked."""
    b = bank if dtype == "uint8" else float_bank
    keys = jax.random.split(jax.random.key(5), 400)
    reset = lambda env, params: jax.jit(jax.vmap(env.reset, in_axes=(0, None, None)))(keys, params, b)  # noqa: E731
    env = _env(other_subject_prob=0.5)
    obs0, plain = reset(env, RegistrationParams())
    obs, s = reset(env, RegistrationParams(gain_prob=0.5, gain_min=0.5, gain_max=2.0))
    for field in ("volume", "moving", "gt", "estimate"):
        np.testing.assert_array_equal(np.asarray(getattr(s, field)), np.asarray(getattr(plain, field)))
    np.testing.assert_array_equal(np.asarray(plain.gain), 1.0)
    gain = np.asarray(s.gain)
    drawn = gain != 1.0
    assert 0.4 < drawn.mean() < 0.6 and np.all((gain[drawn] >= 0.5) & (gain[drawn] <= 2.0))
    assert abs(np.log(gain[drawn]).mean()) < 0.1 and (gain[drawn] < 1).mean() > 0.35  # log-uniform about 1
    full = 255.0 * float(b.intensity_scale) if dtype == "uint8" else 1.0
    o0, o = np.asarray(obs0), np.asarray(obs)
    np.testing.assert_array_equal(o[:, 0, 0], o0[:, 0, 0])  # the fixed crop
    expected = np.minimum(o0[:, 0, 1] * gain[:, None, None, None], full)
    np.testing.assert_allclose(o[:, 0, 1], expected, rtol=1e-5, atol=1e-5)
    assert (o[drawn, 0, 1] != o0[drawn, 0, 1]).any() and np.array_equal(o[~drawn, 0, 1], o0[~drawn, 0, 1])
    again = jax.jit(jax.vmap(env.render, in_axes=(0, None)))(jax.vmap(env.obs_state)(s), b)
    np.testing.assert_allclose(np.asarray(again), o, atol=1e-6)
    assert env.eval_params(RegistrationParams(gain_prob=0.5, gain_min=0.5, gain_max=2.0)).gain_prob == 0.0
    with pytest.raises(ConfigError, match="gain_min"):
        make("registration-v0", LABELS, gain_prob=0.5, gain_min=2.0, gain_max=1.0)
    with pytest.raises(ConfigError, match="gain_prob"):
        make("registration-v0", LABELS, gain_prob=1.5)

def test_bad_inputs_raise_clear_errors(bank):
    with pytest.raises(ConfigError, match="one step per level"):
        RegistrationConfig(levels=(0, 1), steps=(1.0,))
    with pytest.raises(ConfigError, match="non-decreasing"):
        RegistrationConfig(levels=(0, 1), steps=(2.0, 1.0))
    with pytest.raises(ConfigError, match="remap"):
        RegistrationConfig(remap="ct")
    with pytest.raises(ConfigError, match="centre"):
        RegistrationConfig(centre="middle")
    with pytest.raises(ConfigError, match="reward"):
        RegistrationConfig(reward="ncc")
    with pytest.raises(ConfigError, match="landmarks is empty"):
        RegistrationConfig(landmarks=())
    with pytest.raises(LandmarkError, match="AC"):
        RegistrationEnv(RegistrationConfig(landmarks=("AC",)), labels=LABELS)
    env = _env(levels=(0, 1, 2), steps=(1.0, 2.0, 4.0))
    with pytest.raises(ConfigError, match="pyramid levels"):
        env.reset(jax.random.key(0), None, bank)
    with pytest.raises(ConfigError, match="max_crop"):
        _env(crop_size=21).reset(jax.random.key(0), None, bank)
    env = _env()
    _, s = env.reset(jax.random.key(0), None, bank)
    bad_actions = ((jnp.array([12]), "0..11"), (jnp.array([-1]), "0..11"), (jnp.array([0.5]), "integers"), (jnp.array([1, 2]), "1 action"))
    for bad, match in bad_actions:
        with pytest.raises(ConfigError, match=match):
            env.step(jax.random.key(0), s, bad, None, bank)
    with pytest.raises(ConfigError, match="n_starts"):
        env.eval_states(None, bank, 0)
    with pytest.raises(ConfigError, match="unknown option"):
        make("registration-v0", LABELS, crop=15)
    with pytest.raises(ConfigError, match="landmarks"):
        make("registration-v0")
    with pytest.raises(ConfigError, match="out of range"):
        env.pair_state(bank, 0, 9)


def test_registry_builds_the_env():
    env, params = make("registration-v0", LABELS, crop_size=9, max_steps=30, remap="monotone")
    assert isinstance(env, RegistrationEnv) and env.required_labels == LABELS
    assert env.config.levels == (0, 1, 2) and env.config.steps == (1.0, 2.0, 4.0) and params.max_steps == 30
    assert env.num_actions == 12 and env.n_agents == 1
    assert env.eval_params(params.replace(terminate_at_tre_mm=2.0)).terminate_at_tre_mm == 0.0


# ---------------------------------------------------------------- learning


@pytest.mark.parametrize("remap, features", [("none", "intensity"), ("nonmonotone", "edges")])
def test_dqn_learns_to_register_phantoms(bank, remap, features):
    """DQN (code unchanged) on translated blob phantoms, all 12 actions: the greedy agent ends far
    closer than it started and than an untrained network (rotations: see the AFIDs benchmark). Also
    from edge maps alone (``features="edges"``) when the moving image folds the intensity range over
    itself (``remap="nonmonotone"``)."""
    from jaxmed.agents.dqn import DQNConfig, greedy_action, make_train
    from jaxmed.agents.rollout import greedy_rollout
    from jaxmed.networks import QNetwork

    env = _env(levels=(1,), steps=(2.0,), remap=remap, features=features)
    params = RegistrationParams(max_steps=30, max_translation_mm=10.0, max_rotation_deg=0.0, reward_clip=2.0)
    net = QNetwork(trunk="patch", n_actions=N_ACTIONS, trunk_kwargs={"patch_size": 5, "width": 0.5}, head_kwargs={"hidden": (64, 32)})
    cfg = DQNConfig(n_envs=16, chunk_steps=50, batch_size=64, learning_rate=1e-3, learning_starts=200, replay_capacity=20_000,
                    eps_decay_steps=600, target_update_period=100, double=True)
    fns = make_train(cfg, env, params, net)
    rs, metrics = run_chunks(fns, bank, 14, seed=0)
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["final_tre_mm"]))
    eval_params = env.eval_params(params).replace(max_steps=40)
    states = env.eval_states(eval_params, bank, 8, seed=1)
    start = np.asarray(jax.vmap(env.tre_mm, in_axes=(0, None))(states, bank))
    roll = jax.jit(lambda p: greedy_rollout(lambda o: greedy_action(net, p, o), env, eval_params, bank, states))
    trained = np.asarray(roll(rs.params)["metrics"]["tre_mm"])
    untrained = np.asarray(roll(jax.jit(fns.init)(jax.random.key(9), bank).params)["metrics"]["tre_mm"])
    assert np.median(trained) < 0.3 * start.mean() and trained.mean() < 0.4 * start.mean(), (trained, start.mean())
    assert (trained < 3.0).mean() > 0.6 and trained.mean() < 0.3 * untrained.mean()


# ---------------------------------------------------------------- the optax baseline


def test_optax_baseline_registers_phantom_pairs(float_bank):
    from jaxmed.ops.rigid import rigid_matrix
    from jaxmed.registration_baseline import BaselineConfig, pair_from_env, register_volumes, tre_of_matrix

    for remap, loss in (("none", "ncc"), ("nonmonotone", "mi")):
        env = _env(remap=remap)
        state = env.initial_state(float_bank, 0, jnp.asarray([6.0, -5.0, 4.0, 8.0, -6.0, 5.0]))
        fixed, moving, c = pair_from_env(env, float_bank, state)
        assert fixed.shape == moving.shape == tuple(np.asarray(float_bank.shapes[0, 0]))
        gt = np.asarray(rigid_matrix(state.gt, c), np.float64)
        lms = np.asarray(float_bank.landmarks_world[0])
        before = tre_of_matrix(np.eye(4), gt, lms)
        np.testing.assert_allclose(before, float(env.tre_mm(state, float_bank)[0]), rtol=1e-4)
        res = register_volumes(fixed, moving, BaselineConfig(loss=loss, factors=(2, 1), iterations=(40, 20)), centre=c)
        after = tre_of_matrix(res.matrix, gt, lms)
        assert after < 0.15 * before and res.seconds > 0, (remap, loss, before, after)
        np.testing.assert_allclose(res.matrix[:3, :3] @ res.matrix[:3, :3].T, np.eye(3), atol=1e-5)
    with pytest.raises(ConfigError, match="loss"):
        BaselineConfig(loss="ssd")
    with pytest.raises(ConfigError, match="one entry per level"):
        BaselineConfig(factors=(4, 2), iterations=(10,))
    with pytest.raises(ConfigError, match="pad_to"):
        register_volumes(fixed, moving, pad_to=(4, 4, 4))


# ---------------------------------------------------------------- jaxmed register


def _cli(argv):
    import argparse

    from jaxmed.commands import register

    parser = argparse.ArgumentParser(prog="jaxmed")
    register.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["register"] + argv)
    return args.func(args)


def test_register_command_optax_agent_and_errors(tmp_path, float_bank):
    """`jaxmed register` on a phantom pair written to NIfTI: the optax transform recovers the ground
    truth (direction: fixed world -> moving world), the resampled image matches the fixed one; an
    (untrained) agent run writes a rigid transform; bad inputs give clear errors."""
    import nibabel as nib
    import yaml

    from jaxmed.commands.register import read_transform, resample_moving
    from jaxmed.data import Volume, save_nifti
    from jaxmed.errors import ImageError, OverwriteError
    from jaxmed.ops.rigid import rigid_matrix

    fixed, _ = blob_phantom(shape=(30, 28, 26), spacing=2.0, n_landmarks=4, seed=7)
    c = fixed.voxel_to_world((np.asarray(fixed.shape) - 1) / 2)
    gt = np.asarray(rigid_matrix(np.array([5.0, -3.0, 4.0, 0.0, 6.0, -4.0]), c), np.float64)
    moving = Volume(resample_moving(fixed, fixed, np.linalg.inv(gt)), fixed.affine)  # moving(y) = fixed(G^-1 y)
    fp, mp = save_nifti(fixed, tmp_path / "fixed.nii.gz"), save_nifti(moving, tmp_path / "moving.nii.gz")
    out, res = tmp_path / "t.txt", tmp_path / "res.nii.gz"
    assert _cli([str(fp), str(mp), "-o", str(out), "--method", "optax", "--resampled", str(res)]) == 0
    t = read_transform(out)
    corners = fixed.voxel_to_world(np.array([[0, 0, 0], [29, 27, 25], [29, 0, 12], [0, 27, 25]]))
    hom = np.c_[corners, np.ones(4)]
    assert np.abs(hom @ t.T - hom @ gt.T).max() < 0.5
    back = nib.load(str(res))
    np.testing.assert_allclose(back.affine, fixed.affine, atol=1e-5)
    inner = (slice(4, -4),) * 3
    assert np.abs(np.asarray(back.dataobj)[inner] - fixed.data[inner]).mean() < 0.02
    with pytest.raises(OverwriteError):
        _cli([str(fp), str(mp), "-o", str(out), "--method", "optax"])
    with pytest.raises(ImageError):
        _cli([str(tmp_path / "missing.nii.gz"), str(mp), "-o", str(tmp_path / "u.txt"), "--method", "optax"])
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(flat))
    with pytest.raises(ImageError, match="3D"):
        _cli([str(flat), str(mp), "-o", str(tmp_path / "u.txt"), "--method", "optax"])
    with pytest.raises(ImageError, match="nii"):
        _cli([str(fp), str(mp), "-o", str(tmp_path / "u.txt"), "--method", "optax", "--resampled", str(tmp_path / "r.png")])

    # a registration run directory with an untrained network (the CLI path, not the accuracy)
    from jaxmed.config import load_yaml
    from jaxmed.experiment import ExperimentConfig, dummy_observation, make_env, make_network
    from jaxmed.run_files import save_network

    run = tmp_path / "run"
    run.mkdir()
    cfg = ExperimentConfig.from_dict(load_yaml("configs/phantom_registration_dqn.yaml"))
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    env, _, _ = make_env(cfg)
    net = make_network(cfg, env)
    save_network(run, net.init(jax.random.key(0), dummy_observation(cfg, env)))
    out2 = tmp_path / "agent.txt"
    assert _cli([str(fp), str(mp), "-o", str(out2), "--checkpoint", str(run)]) == 0
    t2 = read_transform(out2)
    np.testing.assert_allclose(t2[:3, :3] @ t2[:3, :3].T, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(t2[3], [0, 0, 0, 1])
    out3 = tmp_path / "pooled.txt"  # robust inference: the episodes of 2 copies x 2 starts pooled, said in the header
    assert _cli([str(fp), str(mp), "-o", str(out3), "--checkpoint", str(run), "--intensity-scales", "0.8", "1", "--starts", "2"]) == 0
    t3 = read_transform(out3)
    np.testing.assert_allclose(t3[:3, :3] @ t3[:3, :3].T, np.eye(3), atol=1e-5)
    assert "4 episodes pooled (spread" in out3.read_text()
    with pytest.raises(ConfigError, match="--checkpoint"):
        _cli([str(fp), str(mp), "-o", str(tmp_path / "u.txt"), "--method", "optax", "--starts", "3"])
    with pytest.raises(ConfigError, match="--starts"):
        _cli([str(fp), str(mp), "-o", str(tmp_path / "u.txt"), "--checkpoint", str(run), "--starts", "0"])
    assert not (tmp_path / "u.txt").exists()
    landmark_run = tmp_path / "landmark_run"
    landmark_run.mkdir()
    (landmark_run / "config.yaml").write_text(open("configs/phantom_dqn.yaml").read())
    with pytest.raises(ConfigError, match="registration"):
        _cli([str(fp), str(mp), "-o", str(tmp_path / "u.txt"), "--checkpoint", str(landmark_run)])
    with pytest.raises(ConfigError, match="not a jaxmed run"):
        _cli([str(fp), str(mp), "-o", str(tmp_path / "u.txt"), "--checkpoint", str(tmp_path)])


def test_registration_agent_compiles_once_per_shape_and_answers_as_agent_transform(tmp_path):
    """A :class:`RegistrationAgent` registers every pair of one shape with one compiled episode, each
    seed of a multi-seed run with its own parameters, and answers what the one-off
    :func:`agent_transform` answers."""
    from untrained_runs import untrained_run

    from jaxmed.commands.register import agent_transform, resample_moving
    from jaxmed.data import Volume
    from jaxmed.ops.rigid import rigid_matrix
    from jaxmed.registration_agent import RegistrationAgent, pool_points, pool_rigid
    from jaxmed.runs import load_params

    run = tmp_path / "run"
    untrained_run(run, "configs/phantom_registration_dqn.yaml", seeds=2)
    loaded = load_params(run)
    pairs = []
    for seed, move in ((7, [5.0, -3.0, 4.0, 0.0, 6.0, -4.0]), (8, [-4.0, 2.0, 0.0, 5.0, 0.0, 3.0])):
        fixed, _ = blob_phantom(shape=(30, 28, 26), spacing=2.0, n_landmarks=4, seed=seed)
        c = fixed.voxel_to_world((np.asarray(fixed.shape) - 1) / 2)
        gt = np.asarray(rigid_matrix(np.array(move), c), np.float64)
        pairs.append((fixed, Volume(resample_moving(fixed, fixed, np.linalg.inv(gt)), fixed.affine)))
    answers = {}
    for seed in (0, 1):
        agent = RegistrationAgent(loaded, seed=seed)
        for k, (fixed, moving) in enumerate(pairs):
            ans = agent.register(fixed, moving)
            np.testing.assert_allclose(ans.matrix[:3, :3] @ ans.matrix[:3, :3].T, np.eye(3), atol=1e-5)
            assert ans.seconds > 0 and ans.steps >= 1 and ans.episodes == 1 and ans.spread_mm == 0.0
            answers[seed, k] = ans.matrix
        assert agent._episodes._cache_size() == 1
    ref = agent_transform(loaded, *pairs[1]).matrix  # seed 0
    np.testing.assert_allclose(answers[0, 1], ref, atol=1e-5)
    assert any(not np.allclose(answers[0, k], answers[1, k], atol=1e-4) for k in (0, 1))  # two seeds, two networks

    # robust inference: 2 intensity copies x 3 starts in one batch, pooled as pool_rigid pools the
    # six answers of single-episode agents (one copy each, and the starts given as the identity)
    fixed, moving = pairs[0]
    pooled_agent = RegistrationAgent(loaded, intensity_scales=(0.8, 1.0), starts=3, start_seed=4)
    pooled = pooled_agent.register(fixed, moving)
    assert pooled.episodes == 6 and pooled_agent.n_episodes == 6
    singles = []
    for scale in (0.8, 1.0):
        one = RegistrationAgent(loaded, intensity_scales=(scale,))
        for start in pooled_agent.starts:
            one.starts = start[None]
            singles.append(one.register(fixed, moving).matrix)
    c = fixed.voxel_to_world((np.asarray(fixed.shape) - 1) / 2)
    expected, spread = pool_rigid(np.stack(singles), pool_points(c))
    np.testing.assert_allclose(pooled.matrix, expected, atol=1e-4)
    assert pooled.spread_mm == pytest.approx(spread, abs=1e-4)
    np.testing.assert_array_equal(pooled_agent.starts[0], 0.0)
    assert np.all(np.abs(pooled_agent.starts[1:, :3]) <= 5.0) and np.all(np.abs(pooled_agent.starts[1:, 3:]) <= 5.0)
    with pytest.raises(ConfigError, match="starts"):
        RegistrationAgent(loaded, starts=0)
    with pytest.raises(ConfigError, match="intensity_scales"):
        RegistrationAgent(loaded, intensity_scales=(0.0,))


def test_pool_rigid_takes_the_median_answer_and_its_spread():
    """:func:`pool_rigid`: one answer is returned as it is; identical answers pool to themselves with
    spread 0; four answers near a rigid transform and one far outlier pool to within 0.5 mm of the
    transform (their mean matrix would be ~6 mm off), and the spread is the median of the answers'
    mean point distances from the pooled answer (NumPy)."""
    from jaxmed.ops.rigid import rigid_matrix
    from jaxmed.registration_agent import pool_points, pool_rigid

    centre = np.array([10.0, -20.0, 5.0])
    pts = pool_points(centre)
    assert pts.shape == (27, 3) and np.allclose(pts.mean(0), centre) and np.abs(pts - centre).max() == 30.0
    truth = np.asarray(rigid_matrix(np.array([3.0, -2.0, 1.0, 4.0, -3.0, 2.0], np.float32), centre.astype(np.float32)), np.float64)
    m, spread = pool_rigid(truth[None], pts)
    np.testing.assert_array_equal(m, truth)
    assert spread == 0.0
    m, spread = pool_rigid(np.stack([truth] * 3), pts)
    np.testing.assert_allclose(m, truth, atol=1e-5)  # float32 rotations are orthonormal to ~1e-7
    assert spread == pytest.approx(0.0, abs=1e-5)
    rng = np.random.default_rng(0)
    near = [truth @ np.asarray(rigid_matrix(rng.uniform(-0.5, 0.5, 6).astype(np.float32), centre.astype(np.float32)), np.float64)
            for _ in range(4)]
    far = truth @ np.asarray(rigid_matrix(np.array([30.0, 0, 0, 0, 0, 25.0], np.float32), centre.astype(np.float32)), np.float64)
    answers = np.stack(near + [far])
    pooled, spread = pool_rigid(answers, pts)
    carry = lambda m: pts @ m[:3, :3].T + m[:3, 3]  # noqa: E731
    assert np.linalg.norm(carry(pooled) - carry(truth), axis=1).mean() < 0.5
    assert np.linalg.norm(carry(answers.mean(0)) - carry(truth), axis=1).mean() > 5.0
    dists = [np.linalg.norm(carry(a) - carry(pooled), axis=1).mean() for a in answers]
    assert spread == pytest.approx(float(np.median(dists)), rel=1e-9)
