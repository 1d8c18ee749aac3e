"""Geometry runs at full float32 precision on every backend.

A float32 ``dot_general`` at XLA's default precision runs on TF32 tensor cores on GPUs (bfloat16
passes on TPUs): a voxel coordinate of 150 comes out ~0.1 voxel off, which moves trilinear samples
and distances. The CPU computes it exactly, so the SciPy comparisons alone cannot catch it here.
These tests read the lowered StableHLO of every sampling kernel and of every environment's
``reset`` / ``step`` / ``render`` and refuse any float32 ``dot_general`` that is not at
``Precision.HIGHEST`` (what the geometry helpers of :mod:`jaxmed.ops.linalg` ask for).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmed.ops.plane as plane_ops
from jaxmed import ops

_DOT = re.compile(r"stablehlo\.dot_general[^\n]*")


def reduced_precision_dots(fn, *args, static_argnums=()) -> list[str]:
    """The float32 ``dot_general`` lines of ``jit(fn)(*args)``'s StableHLO (private functions
    included) whose precision is not ``HIGHEST``."""
    text = jax.jit(fn, static_argnums=static_argnums).lower(*args).as_text()
    return [m.group(0)[:240] for m in _DOT.finditer(text)
            if "f32>" in m.group(0) and "precision = [HIGHEST, HIGHEST]" not in m.group(0)]


def test_the_check_sees_a_default_precision_matmul():
    a = jnp.ones((4, 3), jnp.float32)
    m = jnp.eye(4, dtype=jnp.float32)
    assert len(reduced_precision_dots(lambda p, m: p @ m[:3, :3].T + m[:3, 3], a, m)) == 1
    assert reduced_precision_dots(ops.apply_affine, a, m) == []
    assert reduced_precision_dots(ops.matmul, m, m) == []


def test_apply_affine_matvec_vdot_match_numpy():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(5, 7, 3)).astype(np.float32) * 100
    aff = rng.normal(size=(4, 4)).astype(np.float32)
    want = pts.astype(np.float64) @ aff[:3, :3].T.astype(np.float64) + aff[:3, 3]
    np.testing.assert_allclose(np.asarray(ops.apply_affine(pts, aff)), want, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ops.apply_affine(pts, aff[:3])), want, rtol=1e-6, atol=1e-4)
    # integer voxel indices, batched affines
    ivox = rng.integers(0, 200, size=(2, 4, 3)).astype(np.int32)
    affs = rng.normal(size=(2, 1, 4, 4)).astype(np.float32)
    want = np.einsum("bkij,bkj->bki", affs[..., :3, :3].astype(np.float64), ivox) + affs[..., :3, 3]
    np.testing.assert_allclose(np.asarray(ops.apply_affine(ivox, affs)), want, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(np.asarray(ops.matvec(aff, pts[0, 0, :].tolist() + [1.0])), aff @ np.r_[pts[0, 0], 1.0],
                               rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.asarray(ops.vdot(pts, pts)), np.sum(pts.astype(np.float64) ** 2, -1), rtol=1e-6)
    with pytest.raises(ValueError, match="points"):
        ops.apply_affine(np.zeros((4, 2)), aff)
    with pytest.raises(ValueError, match="affine"):
        ops.apply_affine(pts, np.eye(3))


def _kernels():
    """``(name, fn, args, static_argnums)`` for every kernel that computes coordinates."""
    rng = np.random.default_rng(1)
    vol = jnp.asarray(rng.random((9, 8, 7)), jnp.float32)
    stack = jnp.pad(vol, 3)[None].astype(jnp.uint8)
    aff = jnp.asarray(np.eye(4) + 0.1 * rng.normal(size=(4, 4)), jnp.float32)
    pts = jnp.asarray(rng.random((6, 3)) * 6, jnp.float32)
    c, n = jnp.asarray([4.0, 4.0, 3.0]), jnp.asarray([0.2, 0.3, 0.9])
    u, v = plane_ops.plane_basis(n, jnp.asarray([1.0, 0.0, 0.0]))
    packed = ops.pack_levels([stack])
    params = jnp.asarray([1.0, -2.0, 0.5, 10.0, -5.0, 20.0])
    return [
        ("trilinear", ops.trilinear, (vol, pts), ()),
        ("resample_window", ops.resample_window, (vol, aff, 5), (2,)),
        ("resample_window_from_stack", lambda s, a: ops.resample_window_from_stack(s, 0, a, 5, margin=3), (stack, aff), ()),
        ("sample_plane", lambda v_, c_, n_: ops.sample_plane(v_, c_, n_, (6, 5), 3), (vol, c, n), ()),
        ("sample_plane_world_from_stack",
         lambda s, a: plane_ops.sample_plane_world_from_stack(s, 0, a, c, n, u, v, (6, 5), 3, margin=3), (stack, aff), ()),
        ("sample_plane_world_packed",
         lambda p, a: plane_ops.sample_plane_world_packed(p, (stack.shape[1:],), 0, 0, a, c, n, u, v, (6, 5), 3, margin=3),
         (packed, aff), ()),
        ("rigid_matrix", ops.rigid_matrix, (params, c), ()),
        ("compose / invert_rigid / matrix_to_params",
         lambda p: ops.matrix_to_params(ops.compose(ops.rigid_matrix(p), ops.invert_rigid(ops.rigid_matrix(p))), c), (params,), ()),
        ("rigid_distance", ops.rigid_distance, (params, params * 0.5), ()),
        ("fit_plane", plane_ops.fit_plane, (pts,), ()),
        ("plane_from_points / distances",
         lambda p: (plane_ops.plane_distance_angle(*ops.plane_from_points(p[0], p[1], p[2]), n, 1.0)
                    + (plane_ops.point_plane_distance(p, n, 2.0),)),
         (pts,), ()),
        ("plane_basis", plane_ops.plane_basis, (n, c), ()),
    ]


def test_no_sampling_kernel_has_a_reduced_precision_dot():
    found = {name: reduced_precision_dots(fn, *args, static_argnums=static) for name, fn, args, static in _kernels()}
    assert {k: v for k, v in found.items() if v} == {}


# every environment kind, on its small phantom config
_ENV_CONFIGS = [
    "configs/phantom_dqn.yaml",
    "configs/phantom_box_dqn.yaml",
    "configs/phantom_plane_dqn.yaml",
    "configs/phantom_registration_dqn.yaml",
    "configs/goal/phantom_goal_dqn.yaml",
    "configs/goal/phantom_goal_plane_dqn.yaml",
]


@pytest.mark.parametrize("path", _ENV_CONFIGS)
def test_no_environment_has_a_reduced_precision_dot(path):
    from jaxmed.config import load_yaml
    from jaxmed.experiment import ExperimentConfig, make_bank, make_env

    cfg = ExperimentConfig.from_dict(load_yaml(path), path)
    bank, _, _ = make_bank(cfg, "train", 2)
    env, params, _ = make_env(cfg, bank.labels)
    key = jax.random.key(0)
    _, state = jax.eval_shape(env.reset, key, params, bank)
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state)
    action = jnp.zeros(env.action_space(params).shape, jnp.int32)
    found = reduced_precision_dots(env.reset, key, params, bank)
    found += reduced_precision_dots(env.step, key, state, action, params, bank)
    found += reduced_precision_dots(lambda s, b: env.render(env.obs_state(s), b), state, bank)
    found += reduced_precision_dots(jax.vmap(env.eval_metrics, in_axes=(0, None, None)),
                                    jax.tree.map(lambda s: s[None], state), params, bank)
    assert found == [], f"{path}: float32 dot_general below HIGHEST precision:\n" + "\n".join(found)


# ---------------------------------------------------------------- bfloat16 networks (tensor cores)


def test_network3d_bfloat16_q_values_match_float32():
    """The published Network3D trunk computing in bfloat16 (float32 parameters, the same tree) gives
    the float32 Q-values to within 3 % of their spread, on real-looking uint8 frames (smooth blobs)."""
    from jaxmed.networks import network_from_config

    cfg = {"trunk": {"name": "network3d", "width": 0.25}, "head": {"name": "dueling", "hidden": [32]}, "n_actions": 6,
           "crop_size": 34}
    net32 = network_from_config(cfg)
    net16 = network_from_config({**cfg, "dtype": "bfloat16"})
    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, 34)] * 3, indexing="ij"), -1)
    frames = []
    for _ in range(8):  # (k=2, 34, 34, 34) per observation: two blobs at random places
        c = rng.uniform(-0.6, 0.6, size=(2, 3))
        frames.append([255 * np.exp(-np.sum((g - ci) ** 2, -1) / 0.1) for ci in c])
    x = jnp.asarray(np.asarray(frames).astype(np.uint8))
    params = net32.init(jax.random.key(0), x[:1])
    assert jax.tree.structure(jax.eval_shape(net16.init, jax.random.key(0), x[:1])) == jax.tree.structure(params)
    q32 = np.asarray(jax.jit(net32.apply)(params, x))
    q16 = np.asarray(jax.jit(net16.apply)(params, x))
    assert q16.dtype == np.float32 and q16.shape == q32.shape == (8, 6)
    spread = q32.max() - q32.min()
    err = np.abs(q16 - q32).max()
    assert 0 < err <= 0.03 * spread, (err, spread)
    # the greedy action is the same wherever float32 does not see a near tie
    top2 = np.sort(q32, -1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * err
    assert np.array_equal(q16.argmax(-1)[clear], q32.argmax(-1)[clear])


def test_dqn_with_a_bfloat16_network_still_learns():
    """configs/phantom_dqn.yaml with ``network.dtype: bfloat16``: from starts drawn as in training, the
    greedy agent ends (median) less than half as far from its landmark as the start points and as a
    random policy."""
    from jaxmed.agents import learners
    from jaxmed.agents.rollout import greedy_rollout
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.experiment import ExperimentConfig, make_bank, make_env, make_network

    path = "configs/phantom_dqn.yaml"
    cfg = ExperimentConfig.from_dict(apply_overrides(load_yaml(path), ["network.dtype=bfloat16"]), path)
    bank, _, _ = make_bank(cfg, "train", cfg.data.n_train)
    env, params, eval_params = make_env(cfg, bank.labels)
    net = make_network(cfg, env)
    assert net.dtype == jnp.bfloat16
    learner = learners.module(cfg.train.learner)
    rs, metrics = learners.run_chunks(learner.make_train(cfg.learner, env, params, net), bank, cfg.train.chunks, seed=0)
    assert np.isfinite(float(metrics["loss"]))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(rs.params))  # float32 master weights
    # starts as in training (within start_radius_mm of the landmark), 32 of them
    _, states = jax.jit(jax.vmap(env.reset, in_axes=(0, None, None)))(jax.random.split(jax.random.key(3), 32), params, bank)

    @jax.jit
    def run(use_random):
        def policy(o):
            key = jax.random.fold_in(jax.random.key(7), jnp.sum(o, dtype=jnp.uint32))
            random = jax.random.randint(key, o.shape[:2], 0, env.num_actions)
            return jnp.where(use_random, random, learners.policy_action(cfg.train.learner, net, rs.params, o))

        return greedy_rollout(policy, env, eval_params, bank, states)["metrics"]["distance_mm"][:, 0]

    start = np.asarray(jax.vmap(env.eval_metrics, in_axes=(0, None, None))(states, eval_params, bank)["distance_mm"][:, 0])
    trained, random = np.asarray(run(False)), np.asarray(run(True))
    assert np.median(trained) < 0.5 * np.median(start) and np.median(trained) < 0.5 * np.median(random), (trained, start, random)
