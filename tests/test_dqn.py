"""DQN family: learning on a phantom, Q-value probe, state-based replay size, data-parallel step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmed.agents.dqn import DQNConfig, greedy_action, make_parallel_train, make_train, nstep_transition, td_loss, variant
from jaxmed.agents.learners import run_chunks
from jaxmed.agents.rollout import greedy_rollout
from jaxmed.data import blob_phantom, build_bank
from jaxmed.envs.landmark import LandmarkConfig, LandmarkEnv, LandmarkParams
from jaxmed.errors import ConfigError
from jaxmed.networks import QNetwork

D = 15


@pytest.fixture(scope="module")
def setup():
    subjects = [blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=2, seed=s) for s in range(4)]
    bank = build_bank(subjects, labels=("L0",), max_crop=D, dtype="uint8")
    env = LandmarkEnv(LandmarkConfig(targets=("L0",), crop_size=D, frames=1), labels=bank.labels)
    params = LandmarkParams(max_steps=40, start_radius_mm=16.0, terminate_at_target_mm=1.0)
    return bank, env, params


def _network(head="q"):
    return QNetwork(trunk="patch", head=head, trunk_kwargs={"patch_size": 5, "width": 0.5}, head_kwargs={"hidden": (64, 32)})


def _eval_starts(bank, n=32, seed=1, radius_vox=8):
    rng = np.random.default_rng(seed)
    vols = np.arange(n) % bank.n_volumes
    lm = np.asarray(bank.landmarks_vox[0, :, 0])[vols]
    starts = np.clip(np.rint(lm + rng.uniform(-radius_vox, radius_vox, size=(n, 3))), 0, 31).astype(np.int32)
    return jnp.asarray(vols), jnp.asarray(starts[:, None, :])


@pytest.mark.parametrize("name,n_step", [("dqn", 1), ("double", 1), ("dueling", 1), ("dueling-double", 1), ("double", 3)])
def test_variant_learns_to_find_landmark(setup, name, n_step):
    bank, env, params = setup
    double, head = variant(name)
    net = _network(head)
    cfg = DQNConfig(n_envs=16, chunk_steps=50, batch_size=64, learning_rate=1e-3, learning_starts=200, replay_capacity=20_000,
                    eps_decay_steps=600, target_update_period=100, double=double, n_step=n_step)
    fns = make_train(cfg, env, params, net)
    # n-step targets mix in 3 exploratory rewards: those variants get 6 more chunks
    rs, metrics = run_chunks(fns, bank, 14 if n_step == 1 else 20, seed=0)
    assert np.isfinite(float(metrics["loss"]))
    eval_params = params.replace(terminate_at_target_mm=0.0)  # never use the ground truth at test time
    vols, starts = _eval_starts(bank)
    states = env.states_at(bank, vols, starts)
    rollout = jax.jit(lambda p: greedy_rollout(lambda o: greedy_action(net, p, o), env, eval_params, bank, states))
    trained, untrained = rollout(rs.params), rollout(jax.jit(fns.init)(jax.random.key(9), bank).params)
    err, err0 = np.asarray(trained["metrics"]["distance_mm"]), np.asarray(untrained["metrics"]["distance_mm"])
    start_mm = np.linalg.norm((np.asarray(starts[:, 0]) - np.asarray(bank.landmarks_vox[0, :, 0])[np.asarray(vols)]) * 2.0, axis=-1)
    assert np.median(err) < 4.0, (name, np.median(err), start_mm.mean())
    assert (err < 4.0).mean() > 0.6 and (err < 4.0).mean() > (err0 < 4.0).mean() + 0.4
    assert err.mean() < 0.4 * start_mm.mean()


def test_q_values_converge_to_known_values():
    """Probe: one state; action 0 ends the episode with reward 1 (Q=1); action 1 loops with reward 1
    and no terminal (Q = 1 / (1 - gamma) = 2 at gamma 0.5 when the loop is always followed greedily)."""
    import flax.linen as nn

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(x.reshape(x.shape[:-4] + (-1,)).astype(jnp.float32))

    net = Tiny()
    obs = jnp.ones((2, 1, 1, 1, 1, 1))
    batch = {"action": jnp.array([[0], [1]]), "reward": jnp.ones((2, 1)), "terminal": jnp.array([[True], [False]]),
             "valid": jnp.ones((2, 1), bool)}
    params = net.init(jax.random.key(0), obs)
    opt = optax.adam(0.05)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        g = jax.grad(lambda p: td_loss(net, p, params, obs, obs, batch, 0.5, True, 10.0)[0])(params)
        u, state = opt.update(g, state)
        return optax.apply_updates(params, u), state

    for _ in range(400):
        params, state = step(params, state)
    q = np.asarray(net.apply(params, obs))[0, 0]
    np.testing.assert_allclose(q, [1.0, 2.0], atol=0.02)


def test_replay_stores_states_not_pixels(setup):
    bank, env, params = setup
    cfg = DQNConfig(n_envs=2, replay_capacity=8, n_step=3)
    rs = jax.jit(make_train(cfg, env, params, _network()).init)(jax.random.key(0), bank)
    per = sum(x.dtype.itemsize * int(np.prod(x.shape[1:])) for x in jax.tree.leaves(rs.buffer.data))
    assert per * 1_000_000 < 100e6, per  # 1e6 transitions in < 100 MB
    obs, state = env.reset(jax.random.key(0), params, bank)
    np.testing.assert_array_equal(np.asarray(env.render(env.obs_state(state), bank)), np.asarray(obs))


def test_nstep_aggregation_matches_hand_computation():
    """Window of 4 steps, 2 agents; the episode ends (truncated) after step 2; agent 1 terminated at step 1."""
    g = 0.9
    r = np.array([[1.0, 0.5], [2.0, -1.0], [3.0, 0.0], [7.0, 7.0]], np.float32)
    window = {
        "obs_state": {"pos": jnp.arange(4)}, "next_obs_state": {"pos": jnp.arange(4) + 10},
        "action": jnp.array([[1, 2], [3, 4], [5, 0], [1, 1]]), "reward": jnp.asarray(r),
        "terminal": jnp.array([[False, False], [False, True], [False, True], [False, False]]),
        "ended": jnp.array([False, False, True, False]), "valid": jnp.ones((4, 2), bool),
    }
    out = jax.jit(nstep_transition, static_argnums=1)(window, g)
    np.testing.assert_allclose(out["reward"], [1 + g * 2 + g * g * 3, 0.5 - g], rtol=1e-6)
    np.testing.assert_allclose(out["discount"], [g**3, 0.0], rtol=1e-6)  # truncation bootstraps, terminal does not
    assert int(out["next_obs_state"]["pos"]) == 12 and int(out["obs_state"]["pos"]) == 0
    np.testing.assert_array_equal(out["action"], [1, 2])
    no_end = dict(window, ended=jnp.zeros(4, bool), terminal=jnp.zeros((4, 2), bool))
    out = nstep_transition(no_end, g)
    np.testing.assert_allclose(out["reward"], (r * g ** np.arange(4)[:, None]).sum(0), rtol=1e-6)
    np.testing.assert_allclose(out["discount"], [g**4, g**4], rtol=1e-6)
    assert int(out["next_obs_state"]["pos"]) == 13


def _small_batch(env, bank, params, n, seed):
    keys = jax.random.split(jax.random.key(seed), n)
    _, states = jax.vmap(env.reset, in_axes=(0, None, None))(keys, params, bank)
    os = jax.vmap(env.obs_state)(states)
    rng = np.random.default_rng(seed)
    batch = {"action": jnp.asarray(rng.integers(0, 6, (n, 1))), "reward": jnp.asarray(rng.normal(size=(n, 1)), jnp.float32),
             "terminal": jnp.asarray(rng.random((n, 1)) < 0.3), "valid": jnp.ones((n, 1), bool)}
    obs = jax.vmap(env.render, in_axes=(0, None))(os, bank)
    return obs, batch


@pytest.mark.devices(4)
def test_four_device_gradient_equals_single_device_on_concatenated_batch(setup):
    bank, env, params = setup
    net = _network()
    obs, batch = _small_batch(env, bank, params, 16, 0)
    p = net.init(jax.random.key(0), obs[:1])
    t = jax.tree.map(lambda x: x * 0.9, p)

    def grad(p, t, obs, batch):
        return jax.grad(lambda p: td_loss(net, p, t, obs, obs, batch, 0.9, True, 1.0)[0])(p)

    single = jax.jit(grad)(p, t, obs, batch)
    shard = lambda x: x.reshape((4, -1) + x.shape[1:])  # noqa: E731
    par = jax.pmap(lambda o, b: jax.lax.pmean(grad(p, t, o, b), "d"), axis_name="d")(shard(obs), jax.tree.map(shard, batch))
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(par)):
        np.testing.assert_allclose(np.asarray(b[0]), np.asarray(a), rtol=1e-4, atol=1e-6)
        for d in range(1, 4):
            np.testing.assert_array_equal(np.asarray(b[d]), np.asarray(b[0]))


def test_data_parallel_training_keeps_replicas_identical(setup):
    bank, env, params = setup
    cfg = DQNConfig(n_envs=4, chunk_steps=20, batch_size=8, learning_starts=16, replay_capacity=1000, eps_decay_steps=100)
    init, chunk = make_parallel_train(cfg, env, params, _network(), n_devices=4)
    rs = init(jax.random.key(3), bank)
    for _ in range(2):
        rs, metrics = chunk(rs, bank)
    assert int(rs.updates[0]) > 0
    for leaf in jax.tree.leaves(rs.params):
        leaf = np.asarray(leaf)
        for d in range(1, 4):
            np.testing.assert_array_equal(leaf[d], leaf[0])
    # each device explored its own environments
    assert not np.array_equal(np.asarray(rs.env_state.pos[0]), np.asarray(rs.env_state.pos[1]))


def test_same_seed_same_run(setup):
    bank, env, params = setup
    cfg = DQNConfig(n_envs=4, chunk_steps=20, batch_size=8, learning_starts=16, replay_capacity=1000)
    fns = make_train(cfg, env, params, _network())
    runs = []
    for _ in range(2):
        rs = jax.jit(fns.init)(jax.random.key(5), bank)
        rs, _ = jax.jit(fns.run_chunk)(rs, bank)
        runs.append(rs)
    for a, b in zip(jax.tree.leaves(runs[0].params), jax.tree.leaves(runs[1].params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bad_config():
    with pytest.raises(ConfigError, match="unknown DQN variant 'rainbow'"):
        variant("rainbow")
    with pytest.raises(ConfigError, match="gamma"):
        DQNConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="batch_size"):
        DQNConfig(batch_size=0)
    with pytest.raises(ConfigError, match="n_step"):
        DQNConfig(n_step=0)


def test_network_with_other_action_count_is_refused(setup):
    """A network whose outputs do not match the env's actions fails at init with a clear error (it
    would otherwise train without ever taking the missing actions), for value and policy learners."""
    from jaxmed.agents import ppo
    from jaxmed.errors import ConfigError
    from jaxmed.networks.actor_critic import actor_critic_from_config

    bank, env, params = setup
    wrong_q = QNetwork(trunk="patch", n_actions=4, trunk_kwargs={"patch_size": 5, "width": 0.5}, head_kwargs={"hidden": (8,)})
    with pytest.raises(ConfigError, match="4 action outputs but env .* has 6 actions"):
        make_train(DQNConfig(n_envs=2, replay_capacity=64), env, params, wrong_q).init(jax.random.key(0), bank)
    wrong_ac = actor_critic_from_config({"trunk": {"name": "patch", "patch_size": 5, "width": 0.5},
                                         "head": {"name": "actor_critic", "hidden": [8]}, "n_actions": 8})
    with pytest.raises(ConfigError, match="8 action outputs"):
        ppo.make_train(ppo.PPOConfig(n_envs=2, num_steps=4, num_minibatches=1), env, params, wrong_ac).init(jax.random.key(0), bank)


def test_greedy_rollout_stops_early_and_equals_the_fixed_length_scan(setup):
    """Without a record the rollout stops once every episode has ended (a while loop); the final
    states, rewards and step counts equal the fixed-length scan's (taken when a record is asked)."""
    bank, env, params = setup
    net = _network()
    p = jax.jit(net.init)(jax.random.key(3), jnp.zeros((1, 1, 1, D, D, D), jnp.uint8))
    eval_params = params.replace(terminate_at_target_mm=0.0, max_steps=60)
    vols, starts = _eval_starts(bank)
    states = env.states_at(bank, vols, starts)
    policy = lambda o: greedy_action(net, p, o)  # noqa: E731
    early = jax.jit(lambda s: greedy_rollout(policy, env, eval_params, bank, s))(states)
    full = jax.jit(lambda s: greedy_rollout(policy, env, eval_params, bank, s, record=lambda st: st.pos))(states)
    for a, b in zip(jax.tree.leaves(early["final_state"]), jax.tree.leaves(full["final_state"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(early["steps"]), np.asarray(full["steps"]))
    np.testing.assert_allclose(np.asarray(early["reward"]), np.asarray(full["reward"]), rtol=0, atol=0)
    assert int(np.min(early["steps"])) < 60  # some episodes ended early: the case the while loop is for
    assert full["record"].shape[0] == 61
