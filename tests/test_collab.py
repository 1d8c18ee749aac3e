"""Collab-DQN: shared-trunk multi-agent learning, team replay, data parallelism, several agents per landmark."""

import jax
import numpy as np
import pytest

from jaxmed.agents.dqn import DQNConfig, greedy_action, make_parallel_train, make_train
from jaxmed.agents.rollout import greedy_rollout
from jaxmed.data import blob_phantom, build_bank
from jaxmed.detect import robust_mean
from jaxmed.envs import make
from jaxmed.errors import ConfigError
from jaxmed.evaluation import metric_stats
from jaxmed.networks import network_from_config

D = 15


@pytest.fixture(scope="module")
def setup():
    """Three landmarks per phantom; three agents, one per landmark, in the same volume."""
    subjects = [blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=3, seed=s) for s in range(4)]
    bank = build_bank(subjects, labels=("L0", "L1", "L2"), max_crop=D, dtype="uint8")
    env, params = make("landmark-multiagent-v0", bank.labels, targets=("L0", "L1", "L2"), crop_size=D, frames=1,
                       max_steps=40, start_radius_mm=14.0, terminate_at_target_mm=1.0)
    return bank, env, params


def _network(**kw):
    return network_from_config({"trunk": {"name": "patch", "patch_size": 5, "width": 0.5}, "head": {"name": "q", "hidden": [64, 32]},
                                "n_agents": 3, "crop_size": D, **kw})


def _param_shapes(params):
    return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(params)}


def test_shared_trunk_agents_learn_all_landmarks(setup):
    bank, env, params = setup
    net = _network(share_trunk=True)
    cfg = DQNConfig(n_envs=16, chunk_steps=50, batch_size=64, learning_rate=1e-3, learning_starts=200, replay_capacity=20_000,
                    eps_decay_steps=600, target_update_period=100, double=True)
    fns = make_train(cfg, env, params, net)
    rs = jax.jit(fns.init)(jax.random.key(0), bank)
    # parameter sharing is real: one trunk (no agent axis), three heads (leading agent axis 3)
    shapes = _param_shapes(rs.params)
    trunk = {k: s for k, s in shapes.items() if "['trunk']" in k}
    head = {k: s for k, s in shapes.items() if "['head']" in k}
    assert trunk and head
    x = np.zeros((1, 3, 1, D, D, D), np.uint8)
    independent = _param_shapes(jax.eval_shape(_network(share_trunk=False).init, jax.random.key(0), x))
    ind_trunk = {k: s for k, s in independent.items() if "['trunk']" in k}
    assert set(ind_trunk) == set(trunk) and all(ind_trunk[k] == (3,) + trunk[k] for k in trunk)  # n trunks vs one
    assert all(s[0] == 3 for s in head.values())  # one head per agent
    n_shared = sum(int(np.prod(s)) for s in shapes.values())
    n_indep = sum(int(np.prod(s)) for s in independent.values())
    assert n_indep - n_shared == 2 * sum(int(np.prod(s)) for s in trunk.values())
    # a team transition holds every agent: the replay stores (A, ...) states and actions
    assert rs.buffer.data["action"].shape[1:] == (3,) and rs.buffer.data["obs_state"].history.shape[1:3] == (3, 1)
    chunk = jax.jit(fns.run_chunk)
    for _ in range(14):
        rs, metrics = chunk(rs, bank)
    assert np.isfinite(float(metrics["loss"]))
    eval_params = env.eval_params(params)
    # fixed starts within the training start distribution (± 14 mm = 7 voxels around each agent's target)
    rng = np.random.default_rng(1)
    vols = np.arange(32) % bank.n_volumes
    targets = np.asarray(bank.landmarks_vox[0])[vols][:, :3]  # (32, 3 agents, 3)
    starts = np.clip(np.rint(targets + rng.uniform(-7, 7, size=targets.shape)), 0, 31).astype(np.int32)
    states = env.states_at(bank, vols, starts)
    rollout = jax.jit(lambda p: greedy_rollout(lambda o: greedy_action(net, p, o), env, eval_params, bank, states))
    start = np.asarray(jax.vmap(env.distance_mm, in_axes=(0, None))(states, bank))
    err = np.asarray(rollout(rs.params)["metrics"]["distance_mm"])
    err0 = np.asarray(rollout(jax.jit(fns.init)(jax.random.key(5), bank).params)["metrics"]["distance_mm"])
    assert err.shape == (32, 3)
    for a in range(3):  # every agent found its own landmark
        assert np.median(err[:, a]) < 4.0, (a, np.median(err[:, a]), start[:, a].mean())
        assert (err[:, a] < 4.0).mean() > (err0[:, a] < 4.0).mean() + 0.3


@pytest.mark.devices(4)
def test_collab_training_is_data_parallel_with_identical_replicas(setup):
    """pmap over 4 fake CPU devices: pmean of gradients keeps the shared trunk and every head identical."""
    bank, env, params = setup
    cfg = DQNConfig(n_envs=4, chunk_steps=6, batch_size=8, learning_starts=8, replay_capacity=1000, target_update_period=3)
    init, chunk = make_parallel_train(cfg, env, params, _network(share_trunk=True, communication=True), n_devices=4)
    rs = init(jax.random.key(0), bank)
    before = jax.tree.map(np.asarray, rs.params)
    rs, metrics = chunk(rs, bank)
    assert int(np.asarray(rs.updates)[0]) > 0
    for leaf, old in zip(jax.tree.leaves(rs.params), jax.tree.leaves(before)):
        leaf = np.asarray(leaf)
        assert leaf.shape[0] == 4
        np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))
    assert any(not np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(rs.params), jax.tree.leaves(before)))
    # the devices acted in different environments
    pos = np.asarray(rs.env_state.pos)
    assert not np.array_equal(pos[0], pos[1])


def test_several_agents_per_landmark_start_apart_and_pool():
    subjects = [blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=2, seed=0)]
    bank = build_bank(subjects, labels=("L0", "L1"), max_crop=D, dtype="uint8")
    env, params = make("landmark-v0", bank.labels, targets=("L0", "L1"), agents_per_target=3, crop_size=D, frames=1)
    assert env.config.targets == ("L0", "L0", "L0", "L1", "L1", "L1") and env.n_agents == 6
    assert env.required_labels == ("L0", "L1")
    states = env.eval_states(env.eval_params(params), bank, 27)
    pos = np.asarray(states.pos)  # (27, 6, 3)
    assert pos.shape == (27, 6, 3)
    for e in range(27):
        assert len({tuple(p) for p in pos[e, :3]}) == 3  # the three copies of L0 start at different points
        np.testing.assert_array_equal(pos[e, :3], pos[e, 3:])  # L1's copies mirror L0's
    # every copy still visits every grid point once over the 27 episodes
    assert all(len({tuple(p) for p in pos[:, a]}) == 27 for a in range(6))
    stats = metric_stats(np.arange(12, dtype=float).reshape(2, 6), env.metric_labels, "distance_mm")
    assert stats["L0"]["n"] == 6 and stats["L0"]["mean"] == np.mean([0, 1, 2, 6, 7, 8])
    with pytest.raises(ConfigError, match="agents_per_target must be a positive int"):
        make("landmark-v0", bank.labels, targets=("L0",), agents_per_target=0)


def test_robust_mean_ignores_a_lost_agent():
    pts = np.array([[10.0, 10, 10], [10.5, 9.5, 10], [9.5, 10.5, 10], [10, 10, 10.5], [60, -40, 3]])
    np.testing.assert_allclose(robust_mean(pts, "median"), [10, 10, 10])
    np.testing.assert_allclose(robust_mean(pts, "trimmed"), [10, 10, 10.125])
    assert np.linalg.norm(robust_mean(pts, "mean") - [10, 10, 10]) > 5
    with pytest.raises(ConfigError, match="unknown aggregate"):
        robust_mean(pts, "mode")


def test_metric_stats_success_directions():
    iou = metric_stats(np.array([[0.4], [0.6], [0.8]]), ["box"], "iou")["box"]
    assert iou["success_iou0.5"] == pytest.approx(2 / 3) and iou["success_iou0.7"] == pytest.approx(1 / 3)
    deg = metric_stats(np.array([[1.0], [3.0], [20.0]]), ["plane"], "angle_deg")["plane"]
    assert deg["success_2deg"] == pytest.approx(1 / 3) and deg["success_10deg"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="do not match"):
        metric_stats(np.zeros((3, 2)), ["a"], "iou")
