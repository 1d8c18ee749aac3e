"""The architecture-search controller (jaxmed.sweep.controller): REINFORCE gradient against a
hand-computed estimate, convergence to the known best architecture of toy spaces, the baseline,
random search, bad spaces, and `jaxmed sweep --method controller` end to end on a phantom."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxmed.errors import ConfigError
from jaxmed.sweep import controller as C

TOY = C.Decisions(("network.trunk.patch_size", "network.trunk.width", "network.head.name"),
                  ((3, 5, 7), (0.5, 1.0), ("q", "dueling", "x", "y")))
BEST = np.array([1, 0, 2])


def toy_reward(actions: np.ndarray, rng=None) -> np.ndarray:
    """Known optimum ``BEST``: minus the number of decisions that differ from it (+ noise)."""
    r = -np.sum(actions != BEST, axis=1).astype(np.float64)
    return r + (0 if rng is None else rng.normal(0, 0.1, len(r)))


def test_reinforce_gradient_matches_hand_computation():
    settings = C.ControllerSettings(policy="softmax")
    params = {"logits": jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)}
    actions = np.array([[0, 1, 3], [2, 0, 0], [1, 1, 2]])
    rewards = np.array([1.0, -0.5, 2.0])
    baseline = 0.4
    grad = jax.grad(C.reinforce_loss)(params, TOY, actions, rewards, baseline, 0.0)["logits"]
    # by hand: d/dθ_i of -(1/B) Σ_j (R_j - b) log softmax(θ_i)[a_ji] = -(1/B) Σ_j (R_j - b) (onehot(a_ji) - π_i)
    want = np.zeros((3, 4))
    for i, size in enumerate(TOY.sizes):
        logits = np.asarray(params["logits"][i, :size], np.float64)
        pi = np.exp(logits - logits.max())
        pi /= pi.sum()
        for a, r in zip(actions, rewards):
            want[i, :size] -= (r - baseline) * (np.eye(size)[a[i]] - pi) / len(actions)
    np.testing.assert_allclose(np.asarray(grad), want, atol=1e-6)
    assert settings.policy == "softmax"


def test_mlp_log_prob_is_normalised_and_autoregressive():
    d = TOY
    params = C.init_policy(d, C.ControllerSettings(policy="mlp", hidden=8), jax.random.key(1))
    params = {**params, "w2": jax.random.normal(jax.random.key(2), params["w2"].shape)}
    total = sum(float(jnp.exp(C.log_prob(params, d, np.array(a))[0])) for a in np.ndindex(*d.sizes))
    assert total == pytest.approx(1.0, abs=1e-5)
    # decision 1's distribution depends on decision 0's choice (the previous one-hot is an input)
    p_a = C.probabilities(params, d, [0, 0, 0])[1]
    p_b = C.probabilities(params, d, [2, 0, 0])[1]
    assert not np.allclose(p_a, p_b)


@pytest.mark.parametrize("policy", ["softmax", "mlp"])
def test_controller_converges_to_the_best_architecture(policy):
    rng = np.random.default_rng(0)
    settings = C.ControllerSettings(rounds=60, batch=8, policy=policy, hidden=16, learning_rate=0.1, seed=1)
    ctrl = C.search(TOY, settings, lambda a: toy_reward(a, rng))
    greedy = [int(np.argmax(p)) for p in C.probabilities(ctrl.params, TOY)]
    assert greedy == BEST.tolist()
    p_best = float(jnp.exp(C.log_prob(ctrl.params, TOY, BEST)[0]))
    assert p_best > 0.7, p_best
    # the random policy never learns: it stays uniform
    rand = C.search(TOY, C.ControllerSettings(rounds=3, batch=4, policy="random"), toy_reward)
    assert float(jnp.exp(C.log_prob(rand.params, TOY, BEST)[0])) == pytest.approx(1 / 24)


def test_moving_average_baseline_and_nan_rewards():
    seen = []
    rewards = iter([np.array([1.0, 3.0]), np.array([np.nan, 0.0]), np.array([4.0, 4.0])])
    settings = C.ControllerSettings(rounds=3, batch=2, policy="softmax", baseline_decay=0.5)
    C.search(TOY, settings, lambda a: next(rewards), lambda r, a, rw, c: seen.append((rw.tolist(), c.baseline)))
    # round 0: b starts at the mean 2, then 0.5 * 2 + 0.5 * 2 = 2; round 1: NaN -> worst seen (0) -> mean 0 -> 1;
    # round 2: 0.5 * 1 + 0.5 * 4 = 2.5
    assert seen[0] == ([1.0, 3.0], 2.0) and seen[1] == ([0.0, 0.0], 1.0) and seen[2][1] == 2.5


def test_bad_spaces_are_refused():
    with pytest.raises(ConfigError, match="choice"):
        C.decisions_of({"dqn.learning_rate": {"log_uniform": [1e-4, 1e-3]}})
    with pytest.raises(ConfigError, match="at least one"):
        C.decisions_of({"dqn.gamma": 0.9})
    with pytest.raises(ConfigError, match="policy"):
        C.ControllerSettings(policy="lstm")
    with pytest.raises(ConfigError):
        C.split_space({"params": {"a.b": {"choice": [1]}}, "controller": {"rounds": 0}})


def test_sweep_method_controller_end_to_end(tmp_path):
    """Two rounds of two children on the blob phantom (one compiled group: the decision is a DQN
    hyperparameter leaf), through the command line."""
    from jaxmed.cli import main

    base = yaml.safe_load(open("configs/phantom_dqn.yaml"))
    base["dqn"].update(n_envs=8, chunk_steps=20, learning_starts=50)
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(base))
    space = {"metric": {"name": "distance_mm", "split": "val", "mode": "min", "n_val": 1, "eval_starts": 2},
             "params": {"dqn.learning_rate": {"choice": [1.0e-3, 1.0e-5]}, "dqn.gamma": 0.9},
             "controller": {"rounds": 2, "batch": 2, "chunks": 1, "policy": "softmax", "learning_rate": 0.5}}
    sp = tmp_path / "space.yaml"
    sp.write_text(yaml.safe_dump(space))
    out = tmp_path / "out"
    assert main(["sweep", str(cfg), "--space", str(sp), "--method", "controller", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["children"] == 4 and summary["env_steps"] == 4 * 160
    assert (out / "curves.png").exists() and (out / "best.yaml").exists()
    rounds = json.loads((out / "controller.json").read_text())["rounds"]
    assert len(rounds) == 2 and np.isclose(sum(rounds[-1]["probabilities"][0]), 1.0)
    with pytest.raises(SystemExit):
        main(["sweep", str(cfg), "--space", str(sp), "--method", "bogus"])
    assert main(["sweep", str(cfg), "--space", str(sp), "--method", "controller", "--out", str(out)]) == 2  # exists
    assert main(["sweep", str(cfg), "--space", str(sp), "--out", str(tmp_path / "o2")]) == 2  # controller: needs --method
