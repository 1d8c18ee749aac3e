"""View-plane env (Alansary 2018) and its pieces: plane ops against NumPy / SciPy, the AFIDs plane
definitions against NumPy, every action's effect, reward and metrics, oscillation and scale switches,
auto-reset, fixed evaluation starts, bad input and the per-axis patch trunk (learning and the
``jaxmed plane`` command: ``test_plane_learning.py``).

Phantoms: :func:`jaxmed.data.planes.plane_phantom` (an ellipsoid split by a bright sheet whose plane is
the target), 2 mm voxels, one of them with an oblique affine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jaxmed.data import Landmarks, Volume, build_bank
from jaxmed.data.planes import BILATERAL_AFIDS, MIDLINE_AFIDS, PLANES, get_plane, plane_phantom
from jaxmed.envs import make
from jaxmed.envs.plane import N_ACTIONS, PlaneConfig, PlaneEnv, PlaneParams
from jaxmed.errors import ConfigError, LandmarkError
from jaxmed.ops.crop import pack_levels
from jaxmed.ops.plane import (
    canonical_plane,
    fit_plane,
    plane_axes,
    plane_basis,
    plane_points,
    point_plane_distance,
    sample_plane_world_from_stack,
    slab_points,
)

LABELS = ("L0", "L1", "L2")


def _rotation(axis, deg):
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    a = np.radians(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def _oblique(volume, landmarks, rot):
    """The same phantom with its grid rotated by ``rot`` about the world origin (landmarks follow)."""
    r4 = np.eye(4)
    r4[:3, :3] = rot
    return Volume(volume.data, r4 @ volume.affine, source=volume.source + " oblique"), landmarks.with_positions(landmarks.positions @ rot.T)


@pytest.fixture(scope="module")
def subjects():
    a = plane_phantom((32, 32, 32), 2.0, seed=0)
    b = _oblique(*plane_phantom((30, 28, 26), 2.0, seed=1), _rotation([1, 2, 0.5], 12.0))
    return [a, b]


@pytest.fixture(scope="module")
def bank(subjects):
    return build_bank(subjects, LABELS, factors=(1, 2), max_crop=3, dtype="float32")


CONFIG = dict(target="phantom", size=12, n_slices=3, frames=2, levels=(0, 1), angle_steps=(2.0, 6.0), offset_steps=(1.0, 3.0))


@pytest.fixture(scope="module")
def env(bank):
    return PlaneEnv(PlaneConfig(**CONFIG), labels=bank.labels)


@pytest.fixture(scope="module")
def step(env):
    """``env.step_env`` jitted once for the module (every test below reuses its compilation)."""
    return jax.jit(env.step_env)


# ---------------------------------------------------------------- NumPy references


def np_unit(v):
    return v / np.linalg.norm(v)


def np_basis(n, ref):
    n = np_unit(np.asarray(n, np.float64))
    p = np.asarray(ref, np.float64) - np.dot(ref, n) * n
    u = p / np.linalg.norm(p)
    return u, np.cross(n, u)


def np_slab(centre, n, u, v, size, n_slices, h, hs):
    o = lambda k, s: (np.arange(k) - 0.5 * (k - 1)) * s  # noqa: E731
    return (np.asarray(centre) + o(n_slices, hs)[:, None, None, None] * n + o(size, h)[None, :, None, None] * u
            + o(size, h)[None, None, :, None] * v)


def np_sample(data, world_to_voxel, pts):
    vox = pts @ world_to_voxel[:3, :3].T + world_to_voxel[:3, 3]
    return ndimage.map_coordinates(data.astype(np.float64), np.moveaxis(vox, -1, 0), order=1, mode="constant", cval=0.0)


def np_target(bank, volume):
    """(normal, world offset, reference point) of the phantom plane through L0, L1, L2 (normal +S side)."""
    p = np.asarray(bank.landmarks_world[volume], np.float64)[[bank.label_index(l) for l in LABELS]]
    n = np_unit(np.cross(p[1] - p[0], p[2] - p[0]))
    n = n if n[2] >= 0 else -n
    d = n @ p[0]
    c = p.mean(0)
    return n, d, c - (n @ c - d) * n


def np_pivot(bank, volume):
    aff = np.asarray(bank.affines[0, volume], np.float64)
    return aff[:3, :3] @ ((np.asarray(bank.shapes[0, volume]) - 1) / 2) + aff[:3, 3]


def np_angle(n1, n2):
    return np.degrees(np.arccos(np.clip(abs(np.dot(np_unit(n1), np_unit(n2))), 0, 1)))


def np_error(bank, volume, n, o):
    """E = angle + offset difference about the pivot (the env's reward potential)."""
    nt, dt, _ = np_target(bank, volume)
    ot = dt - nt @ np_pivot(bank, volume)
    s = 1.0 if np.dot(n, nt) >= 0 else -1.0
    return np_angle(n, nt) + abs(o - s * ot)


# ---------------------------------------------------------------- ops


def test_world_slab_sampling_matches_scipy():
    rng = np.random.default_rng(0)
    data = rng.random((20, 18, 16)).astype(np.float32)
    aff = np.eye(4)
    aff[:3, :3] = _rotation([0.3, 1, 0.2], 25) @ np.diag([1.5, 2.0, 1.2])
    aff[:3, 3] = [-10, 5, 3]
    to_vox = np.linalg.inv(aff)
    m = 3
    stack = jnp.asarray(np.pad(data, m)[None])
    centre = aff[:3, :3] @ np.array([9.0, 8.5, 7.0]) + aff[:3, 3]
    n = np_unit(np.array([0.2, -0.4, 0.9]))
    u, v = np_basis(n, [1.0, 0.0, 0.0])
    f = jax.jit(lambda c, n, u, v: sample_plane_world_from_stack(stack, 0, to_vox, c, n, u, v, (19, 17), 3, 2.5, 2.1, margin=m))
    got = np.asarray(f(centre, n, u, v))
    pts = (centre + (np.arange(3) - 1)[:, None, None, None] * 2.1 * n + (np.arange(19) - 9)[None, :, None, None] * 2.5 * u
           + (np.arange(17) - 8)[None, None, :, None] * 2.5 * v)
    want = np_sample(data, to_vox, pts)
    assert got.shape == (3, 19, 17)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert (want == 0).any() and (want > 0).mean() > 0.5  # the slab crosses the border: fill is tested too


def test_slab_points_equal_plane_points_and_basis_follows_reference():
    n = np.array([0.3, -0.2, 0.9])
    unit = jnp.asarray(n, jnp.float32) / jnp.linalg.norm(jnp.asarray(n, jnp.float32))
    u0, v0 = plane_axes(n)
    np.testing.assert_array_equal(np.asarray(plane_points([1, 2, 3], n, (5, 4), 3, 1.5, 2.0)),
                                  np.asarray(slab_points([1, 2, 3], unit, u0, v0, (5, 4), 3, 1.5, 2.0)))
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = rng.normal(size=3)
        ref = rng.normal(size=3)
        u, v = (np.asarray(a, np.float64) for a in plane_basis(n, ref))
        wu, wv = np_basis(n, ref)
        np.testing.assert_allclose(u, wu, atol=1e-5)
        np.testing.assert_allclose(v, wv, atol=1e-5)
        np.testing.assert_allclose(np.cross(u, v), np_unit(n), atol=1e-5)  # right-handed
    # continuous: a small tilt of the normal moves u a little (plane_axes may jump by 90 degrees here)
    a, b = np.array([0.01, 0.0, 1.0]), np.array([0.0, 0.01, 1.0])
    ua, ub = (np.asarray(plane_basis(x, [1.0, 0, 0])[0]) for x in (a, b))
    assert np.linalg.norm(ua - ub) < 0.02
    # reference parallel to the normal: falls back to plane_axes
    np.testing.assert_allclose(np.asarray(plane_basis([0, 0, 2.0], [0, 0, 1.0])[0]), np.asarray(plane_axes([0, 0, 1.0])[0]))


def test_fit_plane_and_distances_match_numpy():
    rng = np.random.default_rng(2)
    n_true = np_unit(np.array([0.4, -0.5, 0.7]))
    u, v = np_basis(n_true, [1.0, 0, 0])
    pts = 5 + rng.normal(size=(40, 1)) * 20 * u + rng.normal(size=(40, 1)) * 10 * v + rng.normal(size=(40, 1)) * 0.5 * n_true
    w = rng.uniform(0.2, 2.0, 40)
    for weights in (None, w):
        ww = np.ones(40) if weights is None else weights
        c = (ww[:, None] * pts).sum(0) / ww.sum()
        _, _, vt = np.linalg.svd(np.sqrt(ww)[:, None] * (pts - c))
        want = vt[-1] * np.sign(vt[-1][np.argmax(np.abs(vt[-1]))])
        n, d = jax.jit(fit_plane)(pts, weights)
        np.testing.assert_allclose(np.asarray(n), want, atol=1e-4)
        np.testing.assert_allclose(float(d), want @ c, atol=1e-3)
    dist = np.asarray(point_plane_distance(pts, 2 * n_true, 2 * 3.0))
    np.testing.assert_allclose(dist, pts @ n_true - 3.0, atol=1e-4)
    cn, cd = canonical_plane(np.array([[0.1, -0.9, 0.2], [0.1, 0.9, 0.2]]), np.array([1.0, 1.0]))
    np.testing.assert_allclose(np.asarray(cn), [[-0.1, 0.9, -0.2], [0.1, 0.9, 0.2]])
    np.testing.assert_allclose(np.asarray(cd), [-1.0, 1.0])


# ---------------------------------------------------------------- plane definitions


def test_afids_planes_match_numpy_and_anatomy(afids_data):
    _, lm = afids_data
    pos = {l: p for l, p in zip(lm.labels, lm.positions)}
    assert all(abs(pos[l][0]) < 0.25 for l in MIDLINE_AFIDS)  # the midline landmarks, checked by coordinates
    mids = np.array([(pos[r] + pos[l]) / 2 for r, l in BILATERAL_AFIDS])
    assert np.all(np.abs(mids[:, 0]) < 0.8)
    pts = np.concatenate([np.array([pos[l] for l in MIDLINE_AFIDS]), mids])
    c = pts.mean(0)
    n_msp = np.linalg.svd(pts - c)[2][-1]
    n_msp *= np.sign(n_msp[0])  # towards R
    planes = {name: PLANES[name].from_landmarks(lm) for name in ("midsagittal", "acpc_axial", "coronal_ac", "coronal_pc")}
    n, d = planes["midsagittal"]
    np.testing.assert_allclose(n, n_msp, atol=1e-5)
    np.testing.assert_allclose(d, n_msp @ c, atol=1e-3)
    n_ax, d_ax = planes["acpc_axial"]
    want_ax = np_unit(np.cross(n_msp, pos["AC"] - pos["PC"]))
    np.testing.assert_allclose(n_ax, want_ax, atol=1e-5)
    assert abs(n_ax @ pos["AC"] - d_ax) < 1e-3 and abs(n_ax @ pos["PC"] - d_ax) < 1e-3  # contains AC and PC
    for name, through in (("coronal_ac", "AC"), ("coronal_pc", "PC")):
        n_co, d_co = planes[name]
        assert abs(n_co @ pos[through] - d_co) < 1e-3
        assert abs(n_co @ n_msp) < 1e-5 and abs(n_co @ n_ax) < 1e-5  # perpendicular to both
    # normals near their world axes: R, S, A (the ACPC line is tilted ~5.6 degrees in MNI space)
    for name, axis in (("midsagittal", 0), ("acpc_axial", 2), ("coronal_ac", 1)):
        assert np_angle(planes[name][0], np.eye(3)[axis]) < 8.0
    # equivariant under a rigid motion of the landmarks, and jit/vmap-able over subjects
    rot, shift = _rotation([1, 1, 0], 15), np.array([3.0, -2.0, 5.0])
    ax = get_plane("acpc_axial")
    sel = np.asarray(lm.select(ax.labels).positions)
    batch = np.stack([sel, sel @ rot.T + shift])
    ns, ds = jax.jit(jax.vmap(ax.plane))(batch)
    np.testing.assert_allclose(np.asarray(ns[1]), rot @ np.asarray(ns[0]), atol=1e-5)
    np.testing.assert_allclose(float(ds[1]), float(ds[0]) + (rot @ np.asarray(ns[0])) @ shift, atol=1e-3)


def test_phantom_plane_recovers_the_sheet(bank, subjects):
    for v, (vol, lm) in enumerate(subjects):
        n, d, ref = np_target(bank, v)
        pts = lm.positions
        np.testing.assert_allclose(pts @ n - d, 0.0, atol=1e-3)  # L0..L3 lie on the target plane
        # the sheet is brightest on the plane: mean intensity on the plane > 0.25 above / below
        to_vox = np.linalg.inv(vol.affine)
        u, w = np_basis(n, [1, 0, 0])
        on, off = (np_sample(vol.data, to_vox, np_slab(ref + s * n, n, u, w, 9, 1, 2.0, 1.0)).mean() for s in (0.0, 8.0))
        assert on > off + 0.1


# ---------------------------------------------------------------- dynamics


def _state(env, bank, volume, normal, d):
    return env.states_at(bank, np.array([volume]), np.array([normal], np.float32), np.array([d], np.float32))


def _one(tree):
    return jax.tree.map(lambda x: x[0], tree)


def test_every_action_moves_the_plane_as_specified(env, bank, step):
    p = env.default_params
    n0 = np_unit(np.array([0.25, -0.35, 0.9]))
    start = _one(_state(env, bank, 1, n0, 3.0))
    moves = [step(jax.random.key(0), start, jnp.array([a]), p, bank) for a in range(N_ACTIONS)]
    new = jax.tree.map(lambda *x: jnp.stack(x), *[m[0] for m in moves])
    reward = jnp.stack([m[1] for m in moves])
    o0 = float(start.offset[0])
    theta = np.degrees(np.arccos(n0))
    for a in range(N_ACTIONS):
        sign = 1.0 if a % 2 == 0 else -1.0
        n, o = n0.copy(), o0
        if a // 2 < 3:
            t = theta.copy()
            t[a // 2] += sign * 6.0  # the coarse scale's angle step
            n = np_unit(np.cos(np.radians(t)))
        else:
            o += sign * 3.0  # the coarse scale's offset step
        if n[2] < 0:  # canonical orientation: n . S >= 0
            n, o = -n, -o
        np.testing.assert_allclose(np.asarray(new.normal[a, 0]), n, atol=1e-5, err_msg=f"action {a}")
        np.testing.assert_allclose(float(new.offset[a, 0]), o, atol=1e-4, err_msg=f"action {a}")
        e0, e1 = np_error(bank, 1, n0, o0), np_error(bank, 1, n, o)
        np.testing.assert_allclose(float(reward[a, 0]), np.clip(e0 - e1, -1, 1), atol=2e-3)
    # theta_z is nearly a no-op for a near-axial plane, theta_x / theta_y tilt it by about the step
    tilt = [np_angle(np.asarray(new.normal[a, 0]), n0) for a in range(6)]
    assert tilt[4] < 1.5 and min(tilt[:4]) > 3.0
    # offsets are clipped to half the smallest world extent (26 voxels * 2 mm / 2 = 26 mm)
    edge = _one(_state(env, bank, 1, n0, n0 @ np_pivot(bank, 1) + 25.0))
    moved, *_ = step(jax.random.key(0), edge, jnp.array([6]), p, bank)
    limit = 0.5 * np.min(np.asarray(bank.shapes[0, 1]) * 2.0)
    np.testing.assert_allclose(float(moved.offset[0]), limit, atol=1e-4)


def test_reward_info_and_metrics_follow_numpy_along_a_walk(env, bank, step):
    p = env.default_params
    state = _one(env.eval_states(p, bank, 1, seed=3))
    v = int(state.volume)
    nt, dt, ref = np_target(bank, v)
    rng = np.random.default_rng(0)
    for a in rng.integers(0, N_ACTIONS, 12):
        n_prev, o_prev = np.asarray(state.normal[0], np.float64), float(state.offset[0])
        state, reward, terminated, truncated, info = step(jax.random.key(0), state, jnp.array([a]), p, bank)
        if bool(state.done[0]):
            break
        n, o = np.asarray(state.normal[0], np.float64), float(state.offset[0])
        np.testing.assert_allclose(float(reward[0]), np.clip(np_error(bank, v, n_prev, o_prev) - np_error(bank, v, n, o), -1, 1), atol=2e-3)
        d_world = o + n @ np_pivot(bank, v)
        np.testing.assert_allclose(float(info["angle_deg"][0]), np_angle(n, nt), atol=0.05)
        np.testing.assert_allclose(float(info["distance_mm"][0]), abs(n @ ref - d_world), atol=1e-3)
        assert np.isnan(float(info["final_angle_deg"][0])) and np.isnan(float(info["final_distance_mm"][0]))
    m = jax.jit(env.eval_metrics)(state, p, bank)
    n = np.asarray(state.normal[0], np.float64)
    d_world = float(state.offset[0]) + n @ np_pivot(bank, v)
    pts = np.asarray(bank.landmarks_world[v])[[bank.label_index(l) for l in LABELS]]
    np.testing.assert_allclose(float(m["angle_deg"][0]), np_angle(n, nt), atol=0.05)
    np.testing.assert_allclose(float(m["distance_mm"][0]), abs(n @ ref - d_world), atol=1e-3)
    np.testing.assert_allclose(float(m["landmark_distance_mm"][0]), np.abs(pts @ n - d_world).mean(), atol=1e-3)
    assert all(x.shape == (1,) and x.dtype == jnp.float32 for x in m.values())


@pytest.mark.parametrize("pair", [(6, 7), (0, 1)], ids=["offset", "rotation"])
def test_oscillation_moves_a_scale_finer_then_terminates(env, bank, step, pair):
    p = env.default_params
    state = _one(_state(env, bank, 0, np_unit(np.array([0.5, 0.1, 0.85])), 1.0))
    scales, done, term = [], [], []
    for i in range(8):
        state, _, terminated, truncated, info = step(jax.random.key(0), state, jnp.array([pair[i % 2]]), p, bank)
        scales.append(int(state.scale[0]))
        done.append(bool(state.done[0]))
        term.append(bool(terminated))
        assert not bool(truncated)
    # the ring starts filled with the start plane; the 4th step revisits it a 3rd time (window 5)
    assert scales == [1, 1, 1, 0, 0, 0, 0, 0]
    assert done == [False] * 7 + [True] and term == done
    assert float(info["final_angle_deg"][0]) >= 0 and np.isfinite(float(info["final_distance_mm"][0]))


def test_truncation_and_target_stop(bank):
    env = PlaneEnv(PlaneConfig(target="phantom", size=6, levels=(0,), angle_steps=(2.0,), offset_steps=(1.0,)), labels=bank.labels)
    nt, dt, _ = np_target(bank, 0)
    p = PlaneParams(max_steps=3, terminate_at_target=0.5)
    state = _one(_state(env, bank, 0, nt, dt))  # on the target
    step = jax.jit(env.step_env)
    state, r, term, trunc, _ = step(jax.random.key(0), state, jnp.array([6]), p, bank)  # 1 mm off
    assert not bool(term) and float(r[0]) == pytest.approx(-1.0, abs=1e-3)
    state, r, term, trunc, info = step(jax.random.key(0), state, jnp.array([7]), p, bank)  # back on it
    assert bool(term) and not bool(trunc) and float(info["error"][0]) < 0.5
    ev = env.eval_params(p)
    assert float(ev.terminate_at_target) == 0.0
    state = _one(_state(env, bank, 0, nt, dt))
    for i in range(3):
        state, r, term, trunc, _ = step(jax.random.key(0), state, jnp.array([0 if i % 2 else 2]), ev, bank)
    assert bool(trunc) and not bool(term)


def test_auto_reset_returns_a_fresh_episode_and_the_final_state(env, bank):
    p = PlaneParams(max_steps=5)
    obs, state = env.reset(jax.random.key(1), p, bank)
    assert obs.shape == (1, 2, 3, 12, 12) and obs.dtype == jnp.float32
    for i in range(5):
        obs, new, reward, term, trunc, info = env.step(jax.random.key(10 + i), state, jnp.array([i % 8]), p, bank)
        if i < 4:
            state = new
            assert np.isnan(float(info["final_distance_mm"][0]))
    assert bool(trunc) and int(info["final_state"].t) == 5 and int(new.t) == 0
    assert np.isfinite(float(info["final_distance_mm"][0])) and np.isfinite(float(info["final_angle_deg"][0]))
    # the new episode's ring holds only its start plane, at the coarsest scale
    ring = np.asarray(new.history[0])
    np.testing.assert_array_equal(ring, np.broadcast_to(ring[:1], ring.shape))
    np.testing.assert_allclose(ring[0, :3], np.asarray(new.normal[0]))
    assert int(new.scale[0]) == 1 and not bool(new.done[0])
    np.testing.assert_allclose(np.asarray(obs), np.asarray(jax.jit(env.get_obs)(new, p, bank)), atol=1e-6)


def test_observation_matches_scipy_at_every_scale_and_render_roundtrip(env, bank, step):
    p = env.default_params
    state = jax.tree.map(lambda x: x[1], env.eval_states(p, bank, 1, seed=5))  # the oblique volume
    state, *_ = step(jax.random.key(0), state, jnp.array([2]), p, bank)  # frames 0 and 1 differ
    get_obs, render = jax.jit(env.get_obs), jax.jit(env.render)
    for scale in (1, 0):
        s = state.replace(scale=jnp.array([scale], jnp.int32))
        obs = np.asarray(get_obs(s, p, bank))
        np.testing.assert_array_equal(obs, np.asarray(render(env.obs_state(s), bank)))
        level = CONFIG["levels"][scale]
        v = int(s.volume)
        m = bank.margin
        ext = np.asarray(bank.shapes[level, v])
        data = np.asarray(bank.levels[level][v, m:m + ext[0], m:m + ext[1], m:m + ext[2]])
        aff = np.asarray(bank.affines[level, v], np.float64)
        h = np.linalg.norm(aff[:3, :3], axis=0).mean()
        for f in range(2):
            n, o = np.asarray(s.history[0, f, :3], np.float64), float(s.history[0, f, 3])
            u, w = np_basis(n, [1.0, 0, 0])
            pts = np_slab(np_pivot(bank, v) + o * n, n, u, w, 12, 3, h, h)
            np.testing.assert_allclose(obs[0, f], np_sample(data, np.linalg.inv(aff), pts), atol=1e-4)
    assert not np.allclose(obs[0, 0], obs[0, 1])
    # a uint8 bank gives the rounded values
    bank8 = build_bank([(Volume(np.asarray(bank.levels[0][0, bank.margin:-bank.margin, bank.margin:-bank.margin,
                                                                bank.margin:-bank.margin]), np.asarray(bank.affines[0, 0], np.float64)),
                         Landmarks(LABELS, np.asarray(bank.landmarks_world[0])))], LABELS, factors=(1, 2), max_crop=3, dtype="uint8")
    s8 = _one(env.eval_states(p, bank8, 1, seed=0))
    o8 = np.asarray(get_obs(s8, p, bank8))
    of = np.asarray(get_obs(s8, p, bank8.replace(levels=tuple(l.astype(jnp.float32) for l in bank8.levels))))
    assert o8.dtype == np.uint8 and np.abs(o8.astype(np.float32) - np.clip(np.round(of), 0, 255)).max() <= 1
    # a packed bank (one buffer for every level) renders each slab once, at its own level: same values
    packed = bank.replace(packed=pack_levels(bank.levels))
    for scale in (1, 0):
        s = state.replace(scale=jnp.array([scale], jnp.int32))
        np.testing.assert_allclose(np.asarray(get_obs(s, p, packed)), np.asarray(get_obs(s, p, bank)), atol=1e-4)


def test_eval_states_are_fixed_perturbations_within_bounds(env, bank):
    p = PlaneParams(max_start_angle_deg=15.0, max_start_offset_mm=5.0)
    a, b, c = (env.eval_states(p, bank, 6, seed=s) for s in (0, 0, 1))
    assert a.volume.shape == (12,) and np.array_equal(np.asarray(a.volume), np.repeat([0, 1], 6))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.allclose(np.asarray(a.normal), np.asarray(c.normal))
    m = jax.jit(jax.vmap(env.eval_metrics, in_axes=(0, None, None)))(a, p, bank)
    ang = np.asarray(m["angle_deg"])[:, 0]
    assert ang.max() <= 15.0 + 1e-3 and ang.std() > 1.0
    for i in range(12):
        v = int(a.volume[i])
        nt, dt, _ = np_target(bank, v)
        assert np_angle(np.asarray(a.normal[i, 0]), nt) == pytest.approx(ang[i], abs=0.05)
        ot = dt - nt @ np_pivot(bank, v)
        assert abs(float(a.offset[i, 0]) - ot) <= 5.0 + 1e-3
    assert np.all(np.asarray(a.scale) == 1) and not np.asarray(a.done).any()
    ax = env.prior_states(bank, 4, seed=0, max_angle_deg=10.0)  # the world S axis through the pivot
    np.testing.assert_allclose(np.asarray(ax.normal[0, 0]), [0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(np.asarray(ax.offset[:, 0]), 0.0, atol=1e-5)
    tilts = [np_angle(np.asarray(ax.normal[i, 0]), [0, 0, 1]) for i in range(1, 4)]
    assert max(tilts) <= 10.0 + 1e-3 and min(tilts) > 0
    prior = np_unit(np.array([0.2, 0.1, 1.0]))
    pr = env.prior_states(bank, 2, seed=0, max_angle_deg=5.0, normal=prior, offset=-4.0)
    np.testing.assert_allclose(np.asarray(pr.normal[0, 0]), prior, atol=1e-6)
    np.testing.assert_allclose(np.asarray(pr.offset[:, 0]), -4.0, atol=1e-5)
    with pytest.raises(ConfigError, match="prior normal"):
        env.prior_states(bank, 2, normal=[0.0, 0.0, 0.0])


# ---------------------------------------------------------------- bad input


def test_bad_input_raises_clear_errors(env, bank):
    with pytest.raises(ConfigError, match="unknown plane 'sagital'"):
        PlaneConfig(target="sagital")
    with pytest.raises(ConfigError, match="one entry per scale"):
        PlaneConfig(levels=(0, 1), angle_steps=(1.0,), offset_steps=(1.0, 2.0))
    with pytest.raises(ConfigError, match="non-decreasing"):
        PlaneConfig(levels=(1, 0), angle_steps=(1.0, 2.0), offset_steps=(1.0, 2.0))
    with pytest.raises(ConfigError, match="size must be a positive int"):
        PlaneConfig(size=0)
    with pytest.raises(LandmarkError, match="needs landmark.*'AC'"):
        PlaneEnv(PlaneConfig(target="acpc_axial"), labels=bank.labels)
    with pytest.raises(LandmarkError, match="'L2'"):
        env.reset(jax.random.key(0), None, build_bank([(Volume(np.ones((8, 8, 8), np.float32), np.eye(4)),
                                                         Landmarks(("L0", "L1"), np.ones((2, 3))))], factors=(1, 2), max_crop=3))
    with pytest.raises(ConfigError, match="need 2 pyramid levels"):
        env.reset(jax.random.key(0), None, build_bank([(Volume(np.ones((8, 8, 8), np.float32), np.eye(4)),
                                                         Landmarks(LABELS, np.ones((3, 3))))], max_crop=3))
    with pytest.raises(ConfigError, match="needs a VolumeBank"):
        env.reset(jax.random.key(0), None, None)
    _, state = env.reset(jax.random.key(0), None, bank)
    for action, match in (([8], "must lie in 0..7"), ([-1], "must lie in 0..7"), ([0.5], "integers"), ([0, 1], "shape")):
        with pytest.raises(ConfigError, match=match):
            env.step(jax.random.key(0), state, np.array(action), None, bank)
    with pytest.raises(ConfigError, match="unknown option"):
        make("plane-v0", bank.labels, target="phantom", crop_size=15)
    with pytest.raises(ConfigError, match="n_starts"):
        env.eval_states(None, bank, 0)
    made, params = make("plane-v0", bank.labels, target="phantom", size=8, max_steps=7)
    assert isinstance(made, PlaneEnv) and made.required_labels == LABELS and int(params.max_steps) == 7


# ---------------------------------------------------------------- the slab trunk


def test_patch_trunk_per_axis_matches_numpy_and_cubic_form_is_unchanged():
    # checks the patch layout, not matmul rounding: the network's Dense layers run at the backend's default
    # precision (TF32 on GPUs), so compare against float64 NumPy at full precision on every backend
    with jax.default_matmul_precision("highest"):
        _patch_trunk_per_axis_matches_numpy()


def _patch_trunk_per_axis_matches_numpy():
    from jaxmed.networks.trunks import PatchTrunk

    def np_blocks(x, s):
        b, nx, ny, nz, c = x.shape
        x = x.reshape(b, nx // s[0], s[0], ny // s[1], s[1], nz // s[2], s[2], c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
        return x.reshape(b, nx // s[0], ny // s[1], nz // s[2], -1)

    def np_trunk(params, frames, patch, group):
        x = np.moveaxis(frames.reshape((-1,) + frames.shape[-4:]), 1, -1).astype(np.float64)
        pe, ge = params["patch_embed"], params["group_embed"]
        x = np.maximum(np_blocks(x, patch) @ np.asarray(pe["kernel"]) + np.asarray(pe["bias"]), 0)
        x = np.maximum(np_blocks(x, group) @ np.asarray(ge["kernel"]) + np.asarray(ge["bias"]), 0)
        return x.reshape(x.shape[0], -1)

    rng = np.random.default_rng(0)
    slab = rng.random((2, 1, 2, 3, 16, 16)).astype(np.float32)  # (batch, A, k, S, H, W)
    t = PatchTrunk(patch_size=(3, 4, 4), group=(1, 2, 2), embed=8, hidden=16)
    params = t.init(jax.random.key(0), slab)["params"]
    out = np.asarray(t.apply({"params": params}, slab))
    assert out.shape == (2, 1, 4 * 16)
    np.testing.assert_allclose(out.reshape(2, -1), np_trunk(params, slab, (3, 4, 4), (1, 2, 2)), rtol=1e-5, atol=1e-5)
    cube = rng.random((3, 2, 15, 15, 15)).astype(np.float32)
    ti, tt = PatchTrunk(patch_size=5, group=3, embed=8, hidden=16), PatchTrunk(patch_size=(5, 5, 5), group=(3, 3, 3), embed=8, hidden=16)
    pi = ti.init(jax.random.key(1), cube)
    assert jax.tree.map(jnp.shape, pi) == jax.tree.map(jnp.shape, tt.init(jax.random.key(1), cube))
    np.testing.assert_array_equal(np.asarray(ti.apply(pi, cube)), np.asarray(tt.apply(pi, cube)))
    np.testing.assert_allclose(np.asarray(ti.apply(pi, cube)), np_trunk(pi["params"], cube, (5, 5, 5), (3, 3, 3)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="crop size 6 is not divisible by patch_size \\* group = 4 \\* 2 = 8"):
        t.check_input((3, 6, 16))
    with pytest.raises(ConfigError, match="patch_size must be a positive int or three"):
        PatchTrunk(patch_size=(3, 4)).check_input((3, 16, 16))
