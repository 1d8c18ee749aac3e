"""Policy-gradient learners (A2C, PPO, GRPO): GAE / loss / group-advantage maths against NumPy, the
rollout's truncation bootstrap on a hand-checkable env, learning on a phantom, data parallelism,
vmapped seeds and config errors."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from jaxmed.agents import a2c, grpo, ppo
from jaxmed.agents.core import make_apply_gradients, make_optimizer
from jaxmed.agents.learners import policy_action
from jaxmed.agents.policy_gradient import gae, group_advantages, make_collect, make_group_rollout, mode_action, policy_loss, value_loss
from jaxmed.data import blob_phantom, build_bank
from jaxmed.envs.base import Box, Discrete, Environment
from jaxmed.envs.landmark import LandmarkConfig, LandmarkEnv, LandmarkParams
from jaxmed.errors import ConfigError
from jaxmed.networks import actor_critic_from_config

D = 15

# ------------------------------------------------------------------ a hand-checkable toy env


@struct.dataclass
class CountState:
    t: jax.Array  # () int32, steps taken
    start: jax.Array  # () int32, drawn at reset (identifies the start state)
    done: jax.Array  # (2,) bool, agent finished


@struct.dataclass
class CountParams:
    max_steps: int = 4


class CountEnv(Environment):
    """Two agents, two actions. Agent ``a`` earns ``(t + 1) * (a + 1)`` per step while live and finishes
    when it takes action 1 at ``t >= 1``; terminated when both finished, truncated at ``t >= max_steps``.
    Observation ``(2, 1, 1, 1, 1)`` float32 = ``t + start`` (the start is drawn at reset)."""

    n_agents = 2

    @property
    def default_params(self):
        return CountParams()

    def reset_env(self, key, params, bank):
        return CountState(t=jnp.zeros((), jnp.int32), start=jax.random.randint(key, (), 0, 1000), done=jnp.zeros((2,), bool))

    def step_env(self, key, state, action, params, bank):
        live = ~state.done
        reward = jnp.where(live, (state.t + 1.0) * jnp.arange(1.0, 3.0), 0.0)
        done = state.done | (live & (action == 1) & (state.t >= 1))
        t = state.t + 1
        terminated = jnp.all(done)
        truncated = (t >= params.max_steps) & ~terminated
        ended = terminated | truncated
        info = {"final_t": jnp.where(ended, jnp.full((2,), t, jnp.float32), jnp.nan)}
        return CountState(t=t, start=state.start, done=done), reward, terminated, truncated, info

    def get_obs(self, state, params=None, bank=None):
        return jnp.full((2, 1, 1, 1, 1), state.t + state.start, jnp.float32)

    def observation_space(self, params=None):
        return Box(-np.inf, np.inf, (2, 1, 1, 1, 1))

    def action_space(self, params=None):
        return Discrete(2, (2,))


class LinearAC(nn.Module):
    """``(..., A, 1, 1, 1, 1) -> (logits (..., A, 2), value (..., A) = w x + b)``."""

    @nn.compact
    def __call__(self, obs):
        x = obs.reshape(obs.shape[:-4] + (1,))
        return nn.Dense(2, name="pi")(x * 0.01), nn.Dense(1, name="v")(x)[..., 0]


def _gae_numpy(rows, next_v_last, gamma, lam):
    """Backward GAE loop over one env's rows (dicts of per-agent arrays)."""
    T = len(rows)
    A = len(rows[0]["r"])
    adv = np.zeros((T, A))
    nxt = np.zeros(A)
    for k in reversed(range(T)):
        row = rows[k]
        for a in range(A):
            if row["terminal"][a]:
                boot = 0.0
            elif row["ended"]:
                boot = row["final"]
            else:
                boot = rows[k + 1]["v"] if k + 1 < T else next_v_last
            delta = row["r"][a] + gamma * boot - row["v"]
            cont = 0.0 if (row["terminal"][a] or row["ended"]) else 1.0
            adv[k, a] = delta + gamma * lam * cont * nxt[a]
        nxt = adv[k].copy()
    return adv


def test_gae_matches_numpy_loop():
    rng = np.random.default_rng(0)
    T, N, A = 9, 3, 2
    reward = rng.normal(size=(T, N, A)).astype(np.float32)
    value = rng.normal(size=(T, N, A)).astype(np.float32)
    next_value = rng.normal(size=(T, N, A)).astype(np.float32)
    ended = np.zeros((T, N), bool)
    ended[[2, 5], 0] = True  # env 0: two episode ends
    ended[4, 1] = True
    terminal = np.zeros((T, N, A), bool)
    terminal[2, 0] = True  # env 0 terminated at step 2 (both agents); truncated at step 5
    terminal[1, 2, 1] = True  # env 2, agent 1 finished at step 1 while the episode runs on
    gamma, lam = 0.9, 0.8
    adv, ret = jax.jit(gae, static_argnums=(5, 6))(jnp.asarray(reward), jnp.asarray(value), jnp.asarray(next_value), jnp.asarray(terminal),
                                                    jnp.asarray(np.broadcast_to(ended[..., None], (T, N, A))), gamma, lam)
    ref = np.zeros((T, N, A))
    for n in range(N):
        for a in range(A):
            running = 0.0
            for t in reversed(range(T)):
                boot = 0.0 if terminal[t, n, a] else next_value[t, n, a]
                delta = reward[t, n, a] + gamma * boot - value[t, n, a]
                if terminal[t, n, a] or ended[t, n]:
                    running = 0.0
                running = delta + gamma * lam * running
                ref[t, n, a] = running
    np.testing.assert_allclose(np.asarray(adv), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), ref + value, rtol=1e-5, atol=1e-5)


def test_rollout_bootstraps_truncation_from_the_final_observation():
    """make_collect on CountEnv vs a NumPy replay of the same actions: a truncated episode bootstraps
    from V(final obs) (not the reset obs), a finished agent / terminated episode does not bootstrap."""
    env = CountEnv()
    T, N, gamma, lam = 11, 4, 0.9, 0.7
    net = LinearAC()
    params = net.init(jax.random.key(0), jnp.zeros((1, 2, 1, 1, 1, 1)))
    w = float(params["params"]["v"]["kernel"][0, 0])
    b = float(params["params"]["v"]["bias"][0])
    obs, state = jax.vmap(env.reset, in_axes=(0, None, None))(jax.random.split(jax.random.key(1), N), env.default_params, None)
    collect = jax.jit(make_collect(env, env.default_params, net, N, T, gamma, lam))
    batch, state_after, obs_after, sums, _ = collect(params, state, obs, jax.random.key(2), None)
    actions = np.asarray(batch["action"])
    starts = np.asarray(batch["obs_state"].start)  # (T, N): the start of the episode each step belongs to
    assert 0 < actions.mean() < 1
    for n in range(N):
        rows, t, done = [], 0, np.zeros(2, bool)
        for k in range(T):
            start = starts[k, n]
            live = ~done
            reward = np.where(live, (t + 1.0) * np.arange(1, 3), 0.0)
            new_done = done | (live & (actions[k, n] == 1) & (t >= 1))
            t_new = t + 1
            terminated = bool(new_done.all())
            ended = terminated or t_new >= 4
            rows.append(dict(v=w * (t + start) + b, r=reward, terminal=new_done | terminated, ended=ended, final=w * (t_new + start) + b))
            np.testing.assert_array_equal(np.asarray(batch["valid"][k, n]), live)
            t, done = (0, np.zeros(2, bool)) if ended else (t_new, new_done)
        last_v = w * float(obs_after[n, 0, 0, 0, 0, 0]) + b
        ref = _gae_numpy(rows, last_v, gamma, lam)
        np.testing.assert_allclose(np.asarray(batch["advantage"][:, n]), ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(batch["target"][:, n]), ref + np.array([r["v"] for r in rows])[:, None], rtol=1e-4, atol=1e-4)
    assert float(sums["episodes"]) > 0 and float(sums["final_t/count"]) == float(sums["episodes"])


def test_group_rollout_shares_starts_masks_ended_steps_and_reports_final_metrics():
    env = CountEnv()
    N, G, H = 8, 4, 6  # horizon past the env's truncation at 4: steps 5, 6 are frozen
    net = LinearAC()
    params = net.init(jax.random.key(0), jnp.zeros((1, 2, 1, 1, 1, 1)))
    traj, out = jax.jit(make_group_rollout(env, env.default_params, net, N, G, H))(params, jax.random.key(3), None)
    start = np.asarray(traj["obs_state"].start[0])
    assert (start.reshape(2, G) == start.reshape(2, G)[:, :1]).all() and start[0] != start[G]
    actions, valid = np.asarray(traj["action"]), np.asarray(traj["valid"])
    for n in range(N):
        t, done, total, ended_at = 0, np.zeros(2, bool), np.zeros(2), None
        for k in range(H):
            live = ~done & (ended_at is None)
            np.testing.assert_array_equal(valid[k, n], live)
            if ended_at is None:
                total += np.where(live, (t + 1.0) * np.arange(1, 3), 0.0)
                done = done | (live & (actions[k, n] == 1) & (t >= 1))
                t += 1
                if done.all() or t >= 4:
                    ended_at = t
        np.testing.assert_allclose(np.asarray(out["return"][n]), total, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(out["final_t"][n]), [ended_at] * 2)
        assert int(out["length"][n]) == ended_at and bool(out["ended"][n])


def test_group_advantages_match_numpy():
    rng = np.random.default_rng(1)
    returns = rng.normal(size=(12, 3)).astype(np.float32)
    returns[4:8, 1] = 2.5  # a unanimous group: advantage 0, not NaN
    adv = np.asarray(jax.jit(group_advantages, static_argnums=(1,))(jnp.asarray(returns), 4))
    r = returns.reshape(3, 4, 3)
    ref = ((r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-6)).reshape(12, 3)
    np.testing.assert_allclose(adv, ref, rtol=1e-5, atol=1e-5)
    assert np.all(adv[4:8, 1] == 0)
    centred = np.asarray(group_advantages(jnp.asarray(returns), 4, scale_by_std=False))
    np.testing.assert_allclose(centred, (r - r.mean(1, keepdims=True)).reshape(12, 3), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="group_size"):
        group_advantages(jnp.zeros((10, 1)), 4)


def test_ppo_losses_match_numpy():
    rng = np.random.default_rng(2)
    shape = (64, 2)
    logp, old = rng.normal(-1.5, 0.3, shape), rng.normal(-1.5, 0.3, shape)
    adv, value, old_value, target = (rng.normal(size=shape) for _ in range(4))
    mask = rng.random(shape) < 0.8
    eps = 0.2
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    loss, stats = policy_loss(f32(logp), f32(old), f32(adv), jnp.asarray(mask), eps)
    ratio = np.exp(logp - old)
    surr = np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv)
    np.testing.assert_allclose(float(loss), -surr[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(stats["clip_frac"]), (np.abs(ratio - 1) > eps)[mask].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(stats["approx_kl"]), ((ratio - 1) - np.log(ratio))[mask].mean(), rtol=1e-4)
    a2c_loss, _ = policy_loss(f32(logp), f32(old), f32(adv), jnp.asarray(mask), None)
    np.testing.assert_allclose(float(a2c_loss), -(logp * adv)[mask].mean(), rtol=1e-5)
    vl = value_loss(f32(value), f32(old_value), f32(target), jnp.asarray(mask), eps)
    clipped = old_value + np.clip(value - old_value, -eps, eps)
    ref = 0.5 * np.maximum((value - target) ** 2, (clipped - target) ** 2)[mask].mean()
    np.testing.assert_allclose(float(vl), ref, rtol=1e-5)
    vl_plain = value_loss(f32(value), f32(old_value), f32(target), jnp.asarray(mask), None)
    np.testing.assert_allclose(float(vl_plain), 0.5 * ((value - target) ** 2)[mask].mean(), rtol=1e-5)
    # at ratio 1 (fresh data) the clipped surrogate's gradient is the vanilla policy gradient
    g_ppo = jax.grad(lambda lp: policy_loss(lp, f32(logp), f32(adv), jnp.asarray(mask), eps)[0])(f32(logp))
    g_a2c = jax.grad(lambda lp: policy_loss(lp, f32(logp), f32(adv), jnp.asarray(mask), None)[0])(f32(logp))
    np.testing.assert_allclose(np.asarray(g_ppo), np.asarray(g_a2c), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ learning on a phantom


@pytest.fixture(scope="module")
def phantom():
    subjects = [blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=2, seed=s) for s in range(4)]
    bank = build_bank(subjects, labels=("L0", "L1"), max_crop=D, dtype="uint8")
    env = LandmarkEnv(LandmarkConfig(targets=("L0",), crop_size=D, frames=1), labels=bank.labels)
    params = LandmarkParams(max_steps=40, start_radius_mm=16.0, terminate_at_target_mm=1.0)
    return bank, env, params


def _network(critic=True, n_agents=None):
    cfg = {"trunk": {"name": "patch", "patch_size": 5, "width": 0.5}, "head": {"hidden": [64, 32]}, "crop_size": D}
    if n_agents:
        cfg["n_agents"] = n_agents
    return actor_critic_from_config(cfg, critic=critic)


def _eval_states(env, bank, n=32, seed=1, radius_vox=8):
    rng = np.random.default_rng(seed)
    vols = np.arange(n) % bank.n_volumes
    lm = np.asarray(bank.landmarks_vox[0, :, 0])[vols]
    starts = np.clip(np.rint(lm + rng.uniform(-radius_vox, radius_vox, size=(n, 3))), 0, 31).astype(np.int32)
    return env.states_at(bank, vols, starts[:, None, :])


_EVALS: dict = {}


def _final_distance(env, env_params, bank, states, net, params, random: bool, max_steps=40):
    """``(E,)`` mm: distance after running the greedy policy of ``net`` (or, with ``random``, uniformly
    random actions) from ``states`` without auto-reset, freezing each episode once it ends. One
    compiled program per network kind (``random`` is a traced flag)."""
    if net.critic not in _EVALS:
        v_step = jax.vmap(env.step_env, in_axes=(None, 0, 0, None, None))
        v_obs = jax.vmap(env.get_obs, in_axes=(0, None, None))

        @jax.jit
        def run(params, states, bank, random):
            def body(carry, key):
                state, finished = carry
                obs = v_obs(state, env_params, bank)
                greedy = mode_action(net, params, obs)
                action = jnp.where(random, jax.random.randint(key, greedy.shape, 0, 6), greedy)
                new, _, term, trunc, _ = v_step(key, state, action, env_params, bank)
                state = jax.tree.map(lambda o, n_: jnp.where(finished.reshape((-1,) + (1,) * (n_.ndim - 1)), o, n_), state, new)
                return (state, finished | term | trunc), None

            n = jax.tree.leaves(states)[0].shape[0]
            (final, _), _ = jax.lax.scan(body, (states, jnp.zeros((n,), bool)), jax.random.split(jax.random.key(7), max_steps))
            return jax.vmap(env.distance_mm, in_axes=(0, None))(final, bank)[:, 0]

        _EVALS[net.critic] = run
    return np.asarray(_EVALS[net.critic](params, states, bank, jnp.asarray(random)))


def _train_and_evaluate(module, config, phantom, chunks, critic=True):
    bank, env, params = phantom
    net = _network(critic)
    fns = module.make_train(config, env, params, net)
    rs = jax.jit(fns.init)(jax.random.key(0), bank)
    chunk = jax.jit(fns.run_chunk)
    for _ in range(chunks):
        rs, metrics = chunk(rs, bank)
    assert np.isfinite(float(metrics["loss"])) and int(rs.updates) == chunks * config.grad_steps_per_chunk
    eval_params = env.eval_params(params)  # no stop at the target: never use the ground truth at test time
    assert float(eval_params.terminate_at_target_mm) == 0.0
    states = _eval_states(env, bank)
    trained = _final_distance(env, eval_params, bank, states, net, rs.params, random=False)
    random = _final_distance(env, eval_params, bank, states, net, rs.params, random=True)
    return trained, random, metrics


def test_ppo_learns_to_find_landmark(phantom):
    cfg = ppo.PPOConfig(n_envs=16, num_steps=32, updates_per_chunk=5, update_epochs=4, num_minibatches=4, gamma=0.9,
                        learning_rate=1e-3)
    trained, random, _ = _train_and_evaluate(ppo, cfg, phantom, chunks=8)
    assert np.median(trained) < 4.0 and trained.mean() < 0.4 * random.mean(), (np.median(trained), trained.mean(), random.mean())


def test_a2c_learns_to_find_landmark(phantom):
    cfg = a2c.A2CConfig(n_envs=32, num_steps=8, updates_per_chunk=50, gamma=0.9, gae_lambda=0.95, learning_rate=1e-3,
                        normalize_advantages=True)
    trained, random, _ = _train_and_evaluate(a2c, cfg, phantom, chunks=8)
    assert np.median(trained) < 4.0 and trained.mean() < 0.4 * random.mean(), (np.median(trained), trained.mean(), random.mean())


def test_grpo_learns_to_find_landmark(phantom):
    cfg = grpo.GRPOConfig(n_envs=64, group_size=8, max_steps=40, updates_per_chunk=2, update_epochs=2, num_minibatches=4,
                          learning_rate=3e-3)
    trained, random, metrics = _train_and_evaluate(grpo, cfg, phantom, chunks=30, critic=False)
    assert np.median(trained) < 4.0 and trained.mean() < 0.4 * random.mean(), (np.median(trained), trained.mean(), random.mean())
    assert float(metrics["episodes"]) == 2 * 64 and np.isfinite(float(metrics["final_distance_mm"]))


# ------------------------------------------------------------------ parallelism, seeds, configs


@pytest.mark.devices(4)
def test_data_parallel_training_keeps_replicas_identical():
    env = CountEnv()
    config = ppo.PPOConfig(n_envs=4, num_steps=8, update_epochs=2, num_minibatches=2, updates_per_chunk=2)
    init, chunk = ppo.make_parallel_train(config, env, env.default_params, LinearAC(), n_devices=4)
    rs = init(jax.random.key(3), None)
    for _ in range(2):
        rs, metrics = chunk(rs, None)
    assert int(rs.updates[0]) == 2 * config.grad_steps_per_chunk
    for leaf in jax.tree.leaves((rs.params, rs.opt_state)):
        leaf = np.asarray(leaf)
        for d in range(1, 4):
            np.testing.assert_array_equal(leaf[d], leaf[0])
    for value in metrics.values():  # averaged over devices
        np.testing.assert_array_equal(np.asarray(value), np.broadcast_to(np.asarray(value)[0], np.shape(value)))
    keys = np.asarray(jax.random.key_data(rs.key))
    assert not np.array_equal(keys[0], keys[1])  # each device samples its own environments


def _leaves(tree):
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x) for x in jax.tree.leaves(tree)]


def test_vmapped_grpo_seeds_are_independent():
    """GRPO (with KL and terminal reward) vmapped over seeds: swapping the seeds swaps the results
    exactly, and a seed given twice gives two identical runs."""
    env = CountEnv()
    config = grpo.GRPOConfig(n_envs=4, group_size=2, max_steps=6, num_minibatches=2, kl_coef=0.1, terminal_reward="final_t")
    fns = grpo.make_train(config, env, env.default_params, LinearAC())
    v_init, v_chunk = jax.jit(jax.vmap(fns.init, in_axes=(0, None))), jax.jit(jax.vmap(fns.run_chunk, in_axes=(0, None)))
    k0, k1 = jax.random.split(jax.random.key(5), 2)
    runs = {}
    for name, keys in {"01": (k0, k1), "10": (k1, k0), "00": (k0, k0)}.items():
        rs, m = v_chunk(v_init(jnp.stack(keys), None), None)
        runs[name] = (_leaves(rs), {k: np.asarray(v) for k, v in m.items()})
    for a, b, c in zip(runs["01"][0], runs["10"][0], runs["00"][0]):
        np.testing.assert_array_equal(a[0], b[1])
        np.testing.assert_array_equal(a[1], b[0])
        np.testing.assert_array_equal(c[0], c[1])
    assert np.isfinite(runs["01"][1]["kl"]).all() and (runs["01"][1]["return"] < 0).all()  # return = -final_t
    assert not np.array_equal(runs["01"][0][0][0], runs["01"][0][0][1])  # the seeds really differ



# ------------------------------------------------------------------ hyperparameter leaves


def test_apply_gradients_with_config_hparams_match_the_optax_chain():
    """The PG step reading the runner state's leaves (clip to hp.max_grad_norm, Adam direction, learning
    rate annealed by hp) equals optax.chain(clip_by_global_norm, adam(linear_schedule)) with the config's
    values, step by step, including steps past the decay horizon and clipped ones."""
    config = ppo.PPOConfig(learning_rate=0.05, lr_decay_steps=4, lr_final_fraction=0.2, max_grad_norm=1.0, adam_eps=1e-4)
    hp = ppo.default_hparams(config)
    apply = jax.jit(make_apply_gradients(config, make_optimizer(config)))
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.linear_schedule(0.05, 0.01, 4), eps=1e-4))
    rng = np.random.default_rng(4)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}
    ref_params, ref_state = params, reference.init(params)
    state = make_optimizer(config).init(params)
    for step in range(7):
        scale = 5.0 if step % 2 else 0.1  # odd steps exceed max_grad_norm
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * scale, jnp.float32), params)
        params, state = apply(params, state, grads, hp, jnp.asarray(step))
        upd, ref_state = reference.update(grads, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, upd)
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_default_hparams_fields_overrides_and_errors():
    assert ppo.HPARAM_FIELDS == ("learning_rate", "lr_final_fraction", "max_grad_norm", "gamma", "gae_lambda", "vf_coef",
                                 "ent_coef", "clip_eps")
    assert a2c.HPARAM_FIELDS == ppo.HPARAM_FIELDS[:-1] and "kl_coef" in grpo.HPARAM_FIELDS and "gamma" not in grpo.HPARAM_FIELDS
    hp = ppo.default_hparams(ppo.PPOConfig(gamma=0.9), clip_eps=0.1)
    assert float(hp.gamma) == np.float32(0.9) and float(hp.clip_eps) == np.float32(0.1) and hp.gamma.dtype == jnp.float32
    pop = ppo.stack_hparams([hp, ppo.default_hparams(ppo.PPOConfig(), learning_rate=1e-2)])
    assert pop.learning_rate.shape == (2,) and float(pop.learning_rate[1]) == np.float32(1e-2)
    with pytest.raises(ConfigError, match="sweepable: .*clip_eps"):
        ppo.default_hparams(ppo.PPOConfig(), update_epochs=2)  # static: changes the program
    with pytest.raises(ConfigError, match="gamma"):
        a2c.default_hparams(a2c.A2CConfig(), gamma=1.5)  # the config's own range check
    with pytest.raises(ConfigError, match="kl_coef"):
        grpo.default_hparams(grpo.GRPOConfig(), kl_coef=-1.0)


_HPARAM_CASES = {
    # learner: (module, config, the two settings); PPO anneals its learning rate over the run (A2C runs the
    # same program as PPO, with the unclipped losses)
    "ppo": (ppo, ppo.PPOConfig(n_envs=4, num_steps=8, update_epochs=2, num_minibatches=2, updates_per_chunk=2, lr_decay_steps=6,
                               lr_final_fraction=0.3, learning_rate=3e-3),
            [dict(learning_rate=3e-3, gamma=0.9, clip_eps=0.1, ent_coef=0.0),
             dict(learning_rate=1e-3, gamma=0.99, gae_lambda=0.8, clip_eps=0.3, vf_coef=1.0, max_grad_norm=0.1)]),
    # one member with the KL penalty, one without: the lax.cond runs both under vmap
    "grpo": (grpo, grpo.GRPOConfig(n_envs=4, group_size=2, max_steps=6, num_minibatches=2, terminal_reward="final_t"),
             [dict(kl_coef=0.0, clip_eps=0.2), dict(kl_coef=0.5, clip_eps=0.1, learning_rate=1e-3, ent_coef=0.05)]),
}


@pytest.mark.parametrize("name", sorted(_HPARAM_CASES))
def test_vmapped_hparams_equal_separate_runs_with_those_settings(name):
    """S = 2 seeds (PPO; GRPO: one seed twice) and 2 hyperparameter settings as arrays in one compiled
    program: each member equals a separate run of a config with that setting and seed, and the members
    really differ."""
    module, config, settings = _HPARAM_CASES[name]
    env = CountEnv()
    fns = module.make_train(config, env, env.default_params, LinearAC())
    keys = jax.random.split(jax.random.key(13), 2) if name == "ppo" else jnp.stack([jax.random.key(13)] * 2)
    hps = module.stack_hparams([module.default_hparams(config, **s) for s in settings])
    both = jax.jit(jax.vmap(fns.init, in_axes=(0, None, 0)))(keys, None, hps)
    v_chunk = jax.jit(jax.vmap(fns.run_chunk, in_axes=(0, None)))
    for _ in range(2):
        both, m_both = v_chunk(both, None)
    for s, setting in enumerate(settings):
        separate = module.make_train(dataclasses.replace(config, **setting), env, env.default_params, LinearAC())
        rs, chunk = jax.jit(separate.init)(keys[s], None), jax.jit(separate.run_chunk)
        for _ in range(2):
            rs, m = chunk(rs, None)
        for a, b in zip(_leaves(both), _leaves(rs)):
            np.testing.assert_allclose(a[s], b, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(float(m_both["loss"][s]), float(m["loss"]), rtol=1e-4, atol=1e-6)
    first = jax.tree.leaves(both.params)[0]
    assert not np.allclose(np.asarray(first[0]), np.asarray(first[1]))
    if name == "grpo":  # same key: the settings alone make the difference
        assert float(m_both["kl"][0]) == 0.0 and float(m_both["kl"][1]) > 0.0


def test_bad_configs_raise_config_error():
    with pytest.raises(ConfigError, match="num_minibatches"):
        ppo.PPOConfig(n_envs=3, num_steps=5, num_minibatches=4)
    with pytest.raises(ConfigError, match="gamma"):
        ppo.PPOConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="clip_eps"):
        ppo.PPOConfig(clip_eps=0.0)
    with pytest.raises(ConfigError, match="n_envs"):
        a2c.A2CConfig(n_envs=0)
    with pytest.raises(ConfigError, match="learning_rate"):
        a2c.A2CConfig(learning_rate="fast")
    with pytest.raises(ConfigError, match="normalize_advantages"):
        a2c.A2CConfig(normalize_advantages="yes")
    with pytest.raises(ConfigError, match="multiple of group_size"):
        grpo.GRPOConfig(n_envs=10, group_size=4)
    with pytest.raises(ConfigError, match="group_size must be an int >= 2"):
        grpo.GRPOConfig(n_envs=10, group_size=1)
    with pytest.raises(ConfigError, match="final_"):
        grpo.GRPOConfig(terminal_reward="distance_mm")
    with pytest.raises(ConfigError, match="PPOConfig"):
        ppo.make_train(a2c.A2CConfig(), None, None, None)
    assert ppo.PPOConfig(n_envs=8, num_steps=16, updates_per_chunk=3).env_steps_per_chunk == 3 * 16 * 8
    assert a2c.A2CConfig(learning_rate=1).learning_rate == 1.0  # YAML ints become floats
    with pytest.raises(ConfigError, match="Q-value head"):
        actor_critic_from_config({"head": "dueling"})
    with pytest.raises(ConfigError, match="unknown key"):
        actor_critic_from_config({"heads": {}})
    with pytest.raises(ConfigError, match="divisible"):
        actor_critic_from_config({"trunk": "patch", "crop_size": 16})
    with pytest.raises(ConfigError, match="need n_agents"):
        actor_critic_from_config({"communication": True})


def test_grpo_terminal_reward_names_unknown_metric(phantom):
    bank, env, params = phantom
    cfg = grpo.GRPOConfig(n_envs=4, group_size=2, max_steps=4, num_minibatches=1, terminal_reward="final_iou")
    fns = grpo.make_train(cfg, env, params, _network(critic=False))
    rs = jax.eval_shape(fns.init, jax.random.key(0), bank)
    with pytest.raises(ConfigError, match="final_distance_mm"):
        jax.jit(fns.run_chunk).lower(rs, bank)


def test_actor_critic_shapes_and_policy_only():
    x = jax.ShapeDtypeStruct((3, 2, 1, D, D, D), jnp.uint8)
    net = _network(n_agents=2)
    p = jax.eval_shape(net.init, jax.random.key(0), x)
    logits, value = jax.eval_shape(net.apply, p, x)
    assert logits.shape == (3, 2, 6) and value.shape == (3, 2) and logits.dtype == jnp.float32
    head = p["params"]["head"]
    assert head["logits"]["kernel"].shape == (2, 32, 6) and "critic_hidden" in head  # one head per agent
    assert "critic_hidden" not in jax.eval_shape(_network(n_agents=2, critic=False).init, jax.random.key(0), x)["params"]["head"]
    single = jax.ShapeDtypeStruct((3, 1, D, D, D), jnp.uint8)
    pol = _network(critic=False)
    q = jax.eval_shape(pol.init, jax.random.key(0), single)
    assert jax.eval_shape(pol.apply, q, single)[1].shape == (3,)  # single agent: (..., k, X, Y, Z) -> (...)
    assert jax.eval_shape(lambda p, o: mode_action(net, p, o), p, x).shape == (3, 2)
    # the learner-agnostic action of an actor-critic learner is the argmax of its logits
    real = net.init(jax.random.key(1), jnp.zeros(x.shape, x.dtype))
    obs = jax.random.randint(jax.random.key(2), x.shape, 0, 255).astype(x.dtype)
    expected = jnp.argmax(net.apply(real, obs)[0], axis=-1)
    for name in ("a2c", "ppo", "grpo"):
        np.testing.assert_array_equal(policy_action(name, net, real, obs), expected)


def test_initial_policy_is_near_uniform_and_policy_only_value_is_zero():
    ac = actor_critic_from_config({"trunk": {"name": "patch", "patch_size": 1, "group": 1, "embed": 4, "hidden": 4},
                                   "head": {"hidden": [8]}}, critic=False)
    x = jnp.full((6, 1, 1, 1, 1), 200, jnp.uint8)
    logits, value = jax.jit(lambda x: ac.apply(ac.init(jax.random.key(0), x), x))(x)
    assert logits.shape == (6, 6) and np.abs(np.asarray(logits)).max() < 0.1 and np.all(np.asarray(value) == 0)


# ------------------------------------------------------------------ jaxmed sweep with a PG learner

_TINY_PPO = ["data.n_train=2", "data.n_test=1", "data.phantom_shape=[24,24,24]", "env.max_steps=12", "env.eval_max_steps=10",
             "env.crop_size=9", "network.trunk.patch_size=3", "network.trunk.width=0.25", "network.head.hidden=[16]",
             "ppo.n_envs=4", "ppo.num_steps=8", "ppo.updates_per_chunk=2", "ppo.update_epochs=1", "ppo.num_minibatches=2"]


@pytest.mark.devices(2)
def test_sweep_trains_a_tiny_ppo_population():
    """PPO trials differing only in hyperparameter leaves share one compiled group; the vmapped
    population trains (every member its own values) and is evaluated on validation subjects."""
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.experiment import ExperimentConfig, make_bank
    from jaxmed.sweep.population import Population, val_data
    from jaxmed.sweep.space import group_config, make_trial

    base = apply_overrides(load_yaml("configs/phantom_ppo.yaml"), _TINY_PPO)
    trials = [make_trial(base, {"ppo.learning_rate": 3e-3, "ppo.clip_eps": 0.1}, 0, 0),
              make_trial(base, {"ppo.learning_rate": 3e-4, "ppo.clip_eps": 0.3, "ppo.gamma": 0.99}, 0, 1)]
    assert trials[0].group == trials[1].group  # leaves only: one compiled program
    cfg = group_config(trials[0], base)
    bank, _, _ = make_bank(cfg, "train", cfg.data.n_train)
    pop = Population(cfg, bank, val=val_data(cfg, n_val=1, eval_starts=2), devices=jax.devices()[:2])  # a trial per device
    hps = pop.hparams([t.config for t in trials])
    np.testing.assert_allclose(np.asarray(hps.clip_eps), [0.1, 0.3], rtol=1e-6)
    keys = jnp.stack([jax.random.key(2)] * 2)
    state, metrics, seconds = pop.run(pop.init(keys, hps), 2)
    np.testing.assert_allclose(np.asarray(state.hparams.learning_rate), [3e-3, 3e-4], rtol=1e-6)
    assert np.asarray(state.updates).tolist() == [2 * cfg.ppo.grad_steps_per_chunk] * 2 and seconds > 0
    assert metrics["loss"].shape == (2,) and np.isfinite(metrics["loss"]).all()
    first = np.asarray(jax.tree.leaves(state.params)[0])
    assert not np.allclose(first[0], first[1])  # same key, different hyperparameters
    score, _ = pop.evaluate(state, "distance_mm")
    assert score.shape == (2,) and np.isfinite(score).all()
    assert isinstance(ExperimentConfig.from_dict(base).learner, ppo.PPOConfig)
