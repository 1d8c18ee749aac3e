"""Policy-gradient learners on the other environments: PPO trained from the shipped phantom configs
(``configs/phantom_registration_ppo.yaml``, ``configs/phantom_plane_ppo.yaml``) beats a uniformly random
policy and the start error by a clear margin in greedy evaluation from the env's fixed evaluation
starts on the training phantoms (``eval_params``: the ground truth never stops an episode)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.agents import learners
from jaxmed.agents.rollout import greedy_rollout
from jaxmed.config import load_yaml
from jaxmed.experiment import ExperimentConfig, make_bank, make_env, make_network


def _train_from_config(path: str, starts_per_volume: int = 8):
    """Train the config's learner for its ``train.chunks`` chunks on its training bank, then evaluate
    greedily from ``starts_per_volume`` fixed starts per subject. Returns ``(trained, random, start,
    metrics)``: the env's eval metrics ``{name: (E,)}`` of the trained greedy policy, of uniformly random
    actions, and of the start states; ``metrics`` the last chunk's training metrics."""
    cfg = ExperimentConfig.from_dict(load_yaml(path), path)
    bank, _, _ = make_bank(cfg, "train", cfg.data.n_train)
    env, params, eval_params = make_env(cfg, bank.labels)
    net = make_network(cfg, env)
    learner = learners.module(cfg.train.learner)
    fns = learner.make_train(cfg.learner, env, params, net)
    rs, metrics = learners.run_chunks(fns, bank, cfg.train.chunks, seed=cfg.train.seed)
    states = env.eval_states(eval_params, bank, starts_per_volume, seed=1)

    @jax.jit
    def run(use_random):
        def policy(o):
            # uniformly random actions; the key changes with the observation, so with every step
            key = jax.random.fold_in(jax.random.key(7), jnp.sum(o, dtype=jnp.uint32))
            random = jax.random.randint(key, o.shape[:2], 0, env.num_actions)
            return jnp.where(use_random, random, learners.policy_action(cfg.train.learner, net, rs.params, o))

        return greedy_rollout(policy, env, eval_params, bank, states)["metrics"]

    first_agent = lambda m: {k: np.asarray(v)[:, 0] for k, v in m.items()}  # noqa: E731
    start = jax.jit(jax.vmap(env.eval_metrics, in_axes=(0, None, None)))(states, eval_params, bank)
    return first_agent(run(False)), first_agent(run(True)), first_agent(start), metrics


def test_ppo_learns_to_register_phantoms():
    trained, random, start, metrics = _train_from_config("configs/phantom_registration_ppo.yaml")
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["final_tre_mm"]))
    tre = trained["tre_mm"]
    assert np.median(tre) < 0.3 * start["tre_mm"].mean() and tre.mean() < 0.4 * start["tre_mm"].mean(), (tre, start["tre_mm"].mean())
    assert (tre < 3.0).mean() > 0.7 and tre.mean() < 0.2 * random["tre_mm"].mean(), (tre, random["tre_mm"].mean())


def test_ppo_learns_to_find_the_phantom_plane():
    trained, random, start, metrics = _train_from_config("configs/phantom_plane_ppo.yaml")
    assert np.isfinite(float(metrics["loss"])) and np.isfinite(float(metrics["final_angle_deg"]))
    err, err_start, err_random = (m["angle_deg"] + m["distance_mm"] for m in (trained, start, random))
    assert np.median(trained["angle_deg"]) < 4.0 and np.median(trained["distance_mm"]) < 1.5, trained
    assert err.mean() < 0.4 * err_start.mean() and err.mean() < 0.3 * err_random.mean(), (err.mean(), err_start.mean(), err_random.mean())
