"""Goal-conditioned landmark navigation: the goal image steers one policy to either of two landmarks,
hindsight relabelling against a NumPy hand computation, learning on a phantom, bad inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.agents.dqn import DQNConfig, greedy_action, make_train
from jaxmed.agents.her import HERConfig, make_her_transform, transform_for
from jaxmed.agents.rollout import greedy_rollout
from jaxmed.data import blob_phantom, build_bank
from jaxmed.envs import make
from jaxmed.envs.goal_landmark import GoalLandmarkConfig, GoalLandmarkEnv, goal_example
from jaxmed.envs.landmark import LandmarkConfig, LandmarkEnv, LandmarkParams
from jaxmed.errors import ConfigError, LandmarkError
from jaxmed.networks import QNetwork

D = 15


@pytest.fixture(scope="module")
def setup():
    subjects = [blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=2, seed=s) for s in range(4)]
    bank = build_bank(subjects, labels=("L0", "L1"), max_crop=D, dtype="uint8")
    env = GoalLandmarkEnv(GoalLandmarkConfig(goals=("L0", "L1"), crop_size=D, frames=1), labels=bank.labels)
    params = LandmarkParams(max_steps=40, terminate_at_target_mm=1.0)
    return bank, env, params


@pytest.fixture(scope="module")
def trained(setup):
    """One goal-conditioned DQN agent for both landmarks (HER on), and an untrained one."""
    bank, env, params = setup
    net = QNetwork(trunk="patch", head="q", trunk_kwargs={"patch_size": 5, "width": 0.5}, head_kwargs={"hidden": (64, 32)})
    cfg = DQNConfig(n_envs=16, chunk_steps=50, batch_size=64, learning_rate=1e-3, learning_starts=200, replay_capacity=20_000,
                    eps_decay_steps=600, target_update_period=100, double=True, her=HERConfig(fraction=0.3))
    fns = make_train(cfg, env, params, net, batch_transform=transform_for(env, params, cfg))
    rs = jax.jit(fns.init)(jax.random.key(0), bank)
    chunk = jax.jit(fns.run_chunk)
    for _ in range(18):
        rs, _ = chunk(rs, bank)
    eval_params = env.eval_params(params)
    states = env.eval_states(eval_params, bank, 8, seed=3)  # volumes 1..3, 8 starts, both goals from each start
    rollout = jax.jit(lambda p: greedy_rollout(lambda o: greedy_action(net, p, o), env, eval_params, bank, states))
    return states, rollout(rs.params), rollout(jax.jit(fns.init)(jax.random.key(9), bank).params)


def test_obs_carries_the_reference_goal_crop_and_render_matches(setup):
    bank, env, params = setup
    obs, state = env.reset(jax.random.key(4), params, bank)
    assert obs.shape == (1, 2, D, D, D)
    assert int(state.nav.volume) != 0  # never in the reference volume
    label = env.config.goals[int(state.goal[0])]
    centre = np.rint(np.asarray(bank.landmarks_vox)[0, 0, bank.label_index(label)]).astype(int)  # reference = volume 0
    m = bank.margin
    lo = centre - D // 2 + m
    expected = np.asarray(bank.levels[0])[0, lo[0]:lo[0] + D, lo[1]:lo[1] + D, lo[2]:lo[2] + D]
    np.testing.assert_array_equal(np.asarray(obs[0, 1]), expected)
    expected = np.asarray(bank.landmarks_world)[int(state.nav.volume), bank.label_index(label)]
    np.testing.assert_allclose(np.asarray(state.goal_world[0]), expected)
    obs2, state2, reward, *_ = env.step(jax.random.key(5), state, jnp.array([2]), params, bank)
    np.testing.assert_array_equal(np.asarray(env.render(env.obs_state(state2), bank)), np.asarray(obs2))


def test_goal_image_decides_where_one_policy_goes(setup, trained):
    bank, env, _ = setup
    states, after, _ = trained
    final = np.asarray(after["final_state"].nav.pos[:, 0])  # (E, 3) level-0 voxels
    vol = np.asarray(states.nav.volume)
    goal = np.asarray(states.goal[:, 0])
    start = np.asarray(states.nav.pos[:, 0])
    lm = np.asarray(bank.landmarks_vox)[0][vol]  # (E, 2, 3) voxels of L0, L1 in each episode's volume
    dist = np.linalg.norm((final[:, None, :] - lm) * 2.0, axis=-1)  # (E, 2) mm
    a, b = goal == 0, goal == 1
    # the same starts, asked once for L0 and once for L1
    np.testing.assert_array_equal(start[a], start[b])
    np.testing.assert_array_equal(vol[a], vol[b])
    assert np.mean(dist[a, 0] < dist[a, 1]) >= 0.8 and np.mean(dist[b, 1] < dist[b, 0]) >= 0.8
    assert np.median(dist[a, 0]) < 8.0 and np.median(dist[b, 1]) < 8.0  # 2 mm voxels; starts ~25 mm away
    # pairwise: from one start the two goals lead to different end points
    assert np.median(np.linalg.norm((final[a] - final[b]) * 2.0, axis=-1)) > 10.0


def test_goal_agent_learns_on_phantom(setup, trained):
    bank, env, _ = setup
    states, after, before = trained
    err, err0 = np.asarray(after["metrics"]["distance_mm"]), np.asarray(before["metrics"]["distance_mm"])
    assert np.median(err) < 7.0 and np.median(err) < 0.3 * np.median(err0), (np.median(err), np.median(err0))
    per_goal = env.metric_stats(states, err, "distance_mm")
    assert set(per_goal) == {"L0", "L1"} and all(v["n"] == 24 for v in per_goal.values())


def _replay_batch(env, bank, params, n=12, steps=3, seed=0):
    """One-step transitions of ``n`` envs after ``steps`` random steps, laid out like a sampled DQN batch."""
    keys = jax.random.split(jax.random.key(seed), n)
    _, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None, None)))(keys, params, bank)
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None, None)))
    for i in range(steps + 1):
        action = jax.random.randint(jax.random.key(100 + i), (n, 1), 0, 6, jnp.int32)
        _, new, reward, *_, info = step(jax.random.split(jax.random.key(200 + i), n), state, action, params, bank)
        if i < steps:
            state = new
    final = info["final_state"]
    return {"obs_state": jax.vmap(env.obs_state)(state), "next_obs_state": jax.vmap(env.obs_state)(final),
            "action": action.astype(jnp.int8), "reward": reward, "discount": 0.9 * (1.0 - final.done.astype(jnp.float32)),
            "valid": ~state.done}


@pytest.mark.parametrize("strategy", ["next", "near"])
def test_her_relabelling_matches_numpy(setup, strategy):
    bank, env, _ = setup
    params = LandmarkParams(max_steps=40, terminate_at_target_mm=1.0, reward_clip=1.5)
    batch = _replay_batch(env, bank, params)
    her = make_her_transform(env, params, 0.9, HERConfig(fraction=1.0, strategy=strategy, radius_mm=6.0))
    out = jax.jit(her)(batch, jax.random.key(7), bank)
    vol = np.asarray(batch["obs_state"].nav.volume)
    pos = np.asarray(batch["obs_state"].nav.history[:, :, 0], np.float64)
    nxt = np.asarray(batch["next_obs_state"].nav.history[:, :, 0], np.float64)
    aff = np.asarray(bank.affines[0], np.float64)[vol]  # (B, 4, 4)
    world = lambda v: np.einsum("bij,baj->bai", aff[:, :3, :3], v) + aff[:, None, :3, 3]  # noqa: E731
    gvox = np.asarray(out["obs_state"].goal_vox, np.float64)
    if strategy == "next":
        np.testing.assert_array_equal(gvox, nxt)
    else:
        off = world(gvox) - world(nxt)
        assert np.all(np.abs(off) <= 6.0 + 1.0 + 1e-4) and np.abs(off).max() > 0  # ± radius, rounded to a 2 mm voxel
        ext = np.asarray(bank.shapes)[0][vol][:, None, :]
        assert np.all((gvox >= 0) & (gvox <= ext - 1))
    np.testing.assert_array_equal(np.asarray(out["next_obs_state"].goal_vox), gvox)
    np.testing.assert_array_equal(np.asarray(out["obs_state"].goal_volume), vol)
    g = world(gvox)
    d0 = np.linalg.norm(world(pos) - g, axis=-1)
    d1 = np.linalg.norm(world(nxt) - g, axis=-1)
    valid = np.asarray(batch["valid"])
    np.testing.assert_allclose(np.asarray(out["reward"]), np.where(valid, np.clip(d0 - d1, -1.5, 1.5), 0.0), atol=1e-4)
    reached = valid & (d1 <= 1.0)  # one level: every move is at the finest level
    terminal = np.asarray(batch["next_obs_state"].osc_done) | reached
    np.testing.assert_allclose(np.asarray(out["discount"]), 0.9 * (1.0 - terminal), atol=1e-6)
    if strategy == "next":
        assert np.all(np.asarray(out["discount"])[valid] == 0.0)  # the achieved position is reached
    # the relabelled goal image is the subject's own crop at the achieved position
    obs = np.asarray(jax.vmap(env.render, in_axes=(0, None))(out["obs_state"], bank))
    i = 0
    c = gvox[i, 0].astype(int) - D // 2 + bank.margin
    np.testing.assert_array_equal(obs[i, 0, -1], np.asarray(bank.levels[0])[vol[i], c[0]:c[0] + D, c[1]:c[1] + D, c[2]:c[2] + D])
    # fraction 0: nothing changes
    same = jax.jit(make_her_transform(env, params, 0.9, HERConfig(fraction=0.0)))(batch, jax.random.key(7), bank)
    for x, y in zip(jax.tree.leaves(same), jax.tree.leaves(batch)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bad_inputs_raise_clear_errors(setup):
    bank, env, params = setup
    with pytest.raises(LandmarkError, match="nope"):
        make("goal-landmark-v0", bank.labels, goals=("L0", "nope"), crop_size=D)
    lone = GoalLandmarkEnv(GoalLandmarkConfig(goals=("L2",), crop_size=D))
    with pytest.raises(LandmarkError, match="L2"):
        lone.reset(jax.random.key(0), params, bank)
    one_volume = build_bank([blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=2, seed=0)], labels=("L0", "L1"), max_crop=D)
    with pytest.raises(ConfigError, match="reference volume"):
        env.reset(jax.random.key(0), params, one_volume)
    with pytest.raises(ConfigError, match="goal indices"):
        env.states_at(bank, [1], [[[5, 5, 5]]], [[2]])
    with pytest.raises(ConfigError, match="HER strategy"):
        HERConfig(strategy="final")
    with pytest.raises(ConfigError, match="n_step"):
        DQNConfig(n_step=3, her=HERConfig(fraction=0.5))
    assert transform_for(env, params, DQNConfig()) is None  # her.fraction 0: no relabelling
    plain = LandmarkEnv(LandmarkConfig(targets=("L0",), crop_size=D, frames=1))
    with pytest.raises(ConfigError, match="relabelling hooks"):
        make_her_transform(plain, params, 0.9, HERConfig(fraction=0.5))
    with pytest.raises(ConfigError, match=r"expected \(15, 15, 15\)"):
        goal_example(np.zeros((15, 15, 14)), 2.0, 15)
    with pytest.raises(ConfigError, match="finite"):
        goal_example(np.full((15, 15, 15), np.nan), 2.0, 15)
    vol, lm = goal_example(np.ones((15, 15, 15)), 2.0, 15)
    np.testing.assert_allclose(vol.voxel_to_world(np.array([7.0, 7.0, 7.0])), lm.positions[0])


def test_old_env_her_keys_move_to_the_dqn_section():
    """Configs written before HER became a learner option (``env.her_fraction`` ...) still load, as ``dqn.her``."""
    from jaxmed.config import load_yaml
    from jaxmed.experiment import ExperimentConfig

    data = load_yaml("configs/goal/phantom_goal_dqn.yaml")
    her = data["dqn"].pop("her")
    data["env"].update(her_fraction=her["fraction"], her_strategy=her["strategy"], her_radius_mm=her["radius_mm"])
    cfg = ExperimentConfig.from_dict(data)
    assert cfg.dqn.her == HERConfig(fraction=0.3, strategy="near", radius_mm=8.0)
    assert not any(k.startswith("her_") for k in cfg.env)
    with pytest.raises(ConfigError, match="dqn learner"):
        ExperimentConfig.from_dict({**data, "train": {"learner": "ppo"}})
    with pytest.raises(ConfigError, match="both"):
        ExperimentConfig.from_dict({**data, "dqn": {"her": her}})


def test_detect_goal_from_a_run_directory_by_label_or_patch(tmp_path):
    """`jaxmed detect --goal` / `--goal-patch` on a goal-conditioned run: one answer inside the image,
    by a template label or a goal patch; clear errors naming the bad input, and for other runs."""
    from test_evaluate_data import untrained_run

    from jaxmed.config import load_yaml
    from jaxmed.data import save_nifti
    from jaxmed.detect import detect_goal
    from jaxmed.experiment import ExperimentConfig, build_experiment, dummy_observation
    from jaxmed.run_files import save_network
    from jaxmed.train import prepare_run_dir

    config = "configs/goal/phantom_goal_dqn.yaml"
    cfg = ExperimentConfig.from_dict(load_yaml(config), config)
    exp = build_experiment(cfg, with_data=False)
    run = tmp_path / "run"
    prepare_run_dir(run, cfg, resume=False, overwrite=False)
    save_network(run, exp.network.init(jax.random.key(0), dummy_observation(cfg, exp.env)))
    vol, _ = blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=2, seed=7)
    image = save_nifti(vol, tmp_path / "scan.nii.gz")
    corners = vol.voxel_to_world(np.array([[0, 0, 0], np.array(vol.shape) - 1], np.float64))
    lo, hi = corners.min(axis=0) - 1e-6, corners.max(axis=0) + 1e-6

    by_label = detect_goal(run, image, goal="L1", n_starts=3)
    assert by_label.labels == ("L1",) and by_label.positions.shape == (1, 3)
    assert np.all(by_label.positions >= lo) and np.all(by_label.positions <= hi)
    assert np.array_equal(detect_goal(run, image, goal="L1", n_starts=3).positions, by_label.positions)  # deterministic
    edge = exp.env.config.crop_size * max(cfg.data.factors[level] for level in exp.env.config.levels)
    np.save(tmp_path / "goal.npy", np.random.default_rng(0).uniform(size=(edge,) * 3).astype(np.float32))
    by_patch = detect_goal(run, image, goal_patch=tmp_path / "goal.npy", n_starts=3)
    assert by_patch.labels == ("goal",) and np.all(by_patch.positions >= lo) and np.all(by_patch.positions <= hi)

    with pytest.raises(ConfigError, match="exactly one"):
        detect_goal(run, image, goal="L1", goal_patch=tmp_path / "goal.npy")
    with pytest.raises(LandmarkError, match="unknown goal 'nope'"):
        detect_goal(run, image, goal="nope")
    np.save(tmp_path / "small.npy", np.zeros((edge - 2,) * 3, np.float32))
    with pytest.raises(ConfigError, match=r"small\.npy: goal patch has shape"):
        detect_goal(run, image, goal_patch=tmp_path / "small.npy")
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    with pytest.raises(ConfigError, match=r"broken\.npy: cannot read a goal patch"):
        detect_goal(run, image, goal_patch=tmp_path / "broken.npy")
    untrained_run(tmp_path / "plain")
    with pytest.raises(ConfigError, match="not goal-conditioned"):
        detect_goal(tmp_path / "plain", image, goal="L0")
