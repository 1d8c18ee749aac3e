"""jaxmed sweep: successive halving / Hyperband on a toy objective, vmapped DQN populations equal
separate runs, resume after a kill, the result files and the best config; the trials sharded over
4 devices of one process and over 2 processes x 2 devices (jax.distributed) give the same metrics."""

import json
import sys

import jax
import numpy as np
import pytest
import yaml
from multiprocess import run_processes

from jaxmed.config import apply_overrides, load_yaml
from jaxmed.errors import ConfigError, OverwriteError
from jaxmed.experiment import ExperimentConfig
from jaxmed.sweep import Space, halving, run_sweep
from jaxmed.sweep.space import get_path, make_trial, sample

TINY = ["data.n_train=2", "data.n_test=1", "data.phantom_shape=[24,24,24]", "env.max_steps=12", "env.eval_max_steps=10",
        "env.crop_size=9", "network.trunk.patch_size=3", "network.trunk.width=0.25", "network.head.hidden=[16]",
        "dqn.n_envs=4", "dqn.chunk_steps=8", "dqn.batch_size=8", "dqn.learning_starts=16", "dqn.replay_capacity=256",
        "dqn.eps_decay_steps=40", "dqn.target_update_period=10", "train.chunks=4"]


def _base() -> dict:
    return apply_overrides(load_yaml("configs/phantom_dqn.yaml"), TINY)


def _space(**kw) -> Space:
    data = {"method": "halving", "trials": 3, "eta": 2, "min_chunks": 1, "max_chunks": 2, "seed": 3,
            "metric": {"name": "distance_mm", "split": "val", "n_val": 1, "eval_starts": 2},
            "params": {"dqn.learning_rate": {"log_uniform": [3e-4, 3e-3]}, "dqn.gamma": {"uniform": [0.8, 0.95]},
                       "dqn.target_update_period": {"choice": [5, 10]}}}
    data.update(kw)
    return Space.from_dict(data)


# ------------------------------------------------------------------ halving on a toy objective


def test_successive_halving_keeps_the_trials_nearest_the_optimum():
    """f(x, budget) = (x - 0.3)^2 + noise / budget: the survivors of every rung are the best of
    that rung, and the last survivor is the trial nearest the optimum."""
    rng = np.random.default_rng(0)
    xs = {i: float(x) for i, x in enumerate(rng.uniform(0, 1, 16))}
    noise = {i: float(e) for i, e in enumerate(rng.normal(0, 0.01, 16))}
    rungs = halving.successive_halving(16, 1, 8, eta=2)
    assert rungs == [halving.Rung(16, 1), halving.Rung(8, 2), halving.Rung(4, 4), halving.Rung(2, 8)]
    calls = []

    def train_to(ids, budget):
        calls.append((sorted(ids), budget))
        return {i: (xs[i] - 0.3) ** 2 + noise[i] / budget for i in ids}

    alive = halving.run_bracket(list(xs), rungs, train_to, mode="min")
    assert [len(ids) for ids, _ in calls] == [16, 8, 4, 2] and [b for _, b in calls] == [1, 2, 4, 8]
    for (ids, budget), (nxt, _) in zip(calls, calls[1:]):  # the kept half is the best half by the rung's metric
        scores = sorted(ids, key=lambda i: (xs[i] - 0.3) ** 2 + noise[i] / budget)
        assert sorted(scores[: len(nxt)]) == nxt
    final = {i: (xs[i] - 0.3) ** 2 + noise[i] / 8 for i in alive}
    assert min(final, key=final.get) == min(xs, key=lambda i: abs(xs[i] - 0.3))
    # maximising keeps the other end
    assert halving.select({0: 1.0, 1: 3.0, 2: float("nan"), 3: 2.0}, 2, "max") == [1, 3]
    assert halving.select({0: 1.0, 1: float("nan"), 2: 0.5}, 2, "min") == [0, 2]


def test_hyperband_brackets_and_bad_settings():
    br = halving.hyperband(1, 8, eta=2)
    assert [r[0] for r in br] == [halving.Rung(8, 1), halving.Rung(6, 2), halving.Rung(4, 4), halving.Rung(4, 8)]  # ceil(4 / (s + 1) * 2^s)
    assert all(r[-1].budget == 8 for r in br)
    assert br[0] == [halving.Rung(8, 1), halving.Rung(4, 2), halving.Rung(2, 4), halving.Rung(1, 8)]
    with pytest.raises(ConfigError):
        halving.successive_halving(4, 3, 2)
    with pytest.raises(ConfigError):
        halving.select({0: 1.0}, 1, "best")


def test_space_validation_and_sampling():
    s = _space()
    vals = sample(s, 50, np.random.default_rng(0))
    lrs = np.array([v["dqn.learning_rate"] for v in vals])
    assert lrs.min() >= 3e-4 and lrs.max() <= 3e-3 and {v["dqn.target_update_period"] for v in vals} == {5, 10}
    with pytest.raises(ConfigError, match="log_uniform"):
        _space(params={"dqn.learning_rate": {"log_uniform": [0.0, 1.0]}})
    with pytest.raises(ConfigError, match="unknown key"):
        Space.from_dict({"params": {"dqn.gamma": 0.9}, "bogus": 1})
    with pytest.raises(ConfigError, match="split"):
        _space(metric={"split": "test"})
    with pytest.raises(ConfigError):  # a bad value fails in the trial's config, before anything is built
        make_trial(_base(), {"dqn.gamma": 1.5}, 0, 0)
    with pytest.raises(ConfigError, match="tau"):
        make_trial(_base(), {"dqn.tau": 0.5}, 0, 0)
    from jaxmed.sweep.population import Population

    with pytest.raises(ConfigError, match="train.seeds=1"):  # trials are spread over the devices, one seed each
        Population(ExperimentConfig.from_dict(apply_overrides(_base(), ["train.seeds=2"])), bank=None)
    # leaves share a group; a static choice (trunk width) makes another one
    a = make_trial(_base(), {"dqn.gamma": 0.8, "network.trunk.width": 0.25}, 0, 0)
    b = make_trial(_base(), {"dqn.gamma": 0.9, "network.trunk.width": 0.25}, 0, 1)
    c = make_trial(_base(), {"dqn.gamma": 0.9, "network.trunk.width": 0.5}, 0, 2)
    assert a.group == b.group != c.group and a.config.dqn.gamma == 0.8


# ------------------------------------------------------------------ vmapped population == separate runs


@pytest.fixture(scope="module")
def population():
    """The compiled population of the tiny base config, trials sharded over conftest's 4 CPU devices,
    built the way the sweep builds it (so run_sweep below finds it in its cache: one compilation)."""
    from jaxmed.sweep import runner

    base = ExperimentConfig.from_dict(_base()).to_dict()
    trial = make_trial(base, {"dqn.gamma": 0.9}, 0, 0)
    return runner._Groups(base, _space(), jax.devices()).population(trial)


def test_vmapped_population_equals_separate_runs(population):
    """P=2 trials with different learning rates, gammas and target periods trained in one vmapped
    program (built from the base config, sharded over 4 devices: padded to 4 rows) give the same
    parameters and metrics as separate runs. The separate runs are make_train of trial 0's config,
    whose leaf values all differ from the base config's (a learner reading a closed-over config value
    instead of its runner state's leaf would differ here): trial 0 as it is, trial 1 with its own
    hyperparameters given to init (one compiled chunk for both)."""
    from jaxmed.agents.dqn import default_hparams, make_train
    from jaxmed.experiment import make_env, make_network

    pop = population
    assert pop.n_devices == 4 and pop.padded(2) == 4 and pop.padded(5) == 8
    base = _base()
    trials = [make_trial(base, {"dqn.learning_rate": 2e-3, "dqn.gamma": 0.8, "dqn.target_update_period": 5}, 0, 0),
              make_trial(base, {"dqn.learning_rate": 5e-4, "dqn.gamma": 0.95, "dqn.target_update_period": 7}, 0, 1)]
    assert all(trials[0].values[p] != get_path(base, p) for p in trials[0].values)
    bank = pop._local_bank
    key = jax.random.key(7)
    keys = jax.random.wrap_key_data(np.stack([np.asarray(jax.random.key_data(key))] * 2))
    state = pop.init(keys, pop.hparams([t.config for t in trials]))
    assert jax.tree.leaves(state.params)[0].shape[0] == 4
    assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == 4
    state, metrics, _ = pop.run(state, 2)
    cfg = trials[0].config
    env, params, _ = make_env(cfg, bank.labels)
    fns = make_train(cfg.dqn, env, params, make_network(cfg, env))
    init, chunk = jax.jit(fns.init), jax.jit(fns.run_chunk)
    for row, rs in enumerate([init(key, bank), init(key, bank, default_hparams(trials[1].config.dqn))]):
        for _ in range(2):
            rs, m = chunk(rs, bank)
        assert int(rs.updates) > 0
        for a, b in zip(jax.tree.leaves(rs.params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b)[row], rtol=2e-4, atol=2e-5)
        for k in ("loss", "reward", "steps", "updates"):
            np.testing.assert_allclose(float(m[k]), metrics[k][row], rtol=2e-4, atol=1e-5)
    p0 = np.asarray(jax.tree.leaves(state.params)[0])
    assert not np.allclose(p0[0], p0[1])
    np.testing.assert_array_equal(p0[3], p0[1])  # the padding row repeats the last trial
    # keeping the second trial only: its row continues where it was
    kept = pop.take(state, [1])
    np.testing.assert_array_equal(np.asarray(jax.tree.leaves(kept.params)[0])[0], p0[1])
    assert int(np.asarray(kept.updates)[0]) == int(np.asarray(state.updates)[1])


def test_population_batched_or_in_turn_trains_the_same_trials():
    """train.seed_batching=vmap (trials side by side, the accelerator default) and map (in turn, the
    CPU default) give every trial of a population the same parameters, metrics and validation
    score (rounding only)."""
    from jaxmed.experiment import make_bank
    from jaxmed.sweep.population import Population, val_data

    out = {}
    for batching in ("vmap", "map"):
        trials = [make_trial(_base(), {"dqn.learning_rate": lr, "train.seed_batching": batching}, 0, i)
                  for i, lr in enumerate((2e-3, 5e-4))]
        cfg = trials[0].config
        bank, _, _ = make_bank(cfg, "train", cfg.data.n_train)
        pop = Population(cfg, bank, val=val_data(cfg, 1, 2), devices=jax.devices()[:1])
        state = pop.init(jax.random.split(jax.random.key(3), 2), pop.hparams([t.config for t in trials]))
        state, metrics, _ = pop.run(state, 2)
        score, _ = pop.evaluate(state, "distance_mm")
        out[batching] = (jax.tree.leaves(state.params), metrics, score)
    (pv, mv, sv), (pm, mm, sm) = out["vmap"], out["map"]
    for a, b in zip(pv, pm):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    assert not np.allclose(np.asarray(pm[0])[0], np.asarray(pm[0])[1])  # two different trials
    np.testing.assert_allclose(mv["loss"], mm["loss"], rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(sv, sm, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ the whole sweep, resume, results


@pytest.fixture(scope="module")
def full_sweep(tmp_path_factory, population):
    """The tiny sweep, single process, its 3 trials sharded over 4 devices (the population's cache)."""
    out = tmp_path_factory.mktemp("sweep") / "full"
    summary = run_sweep(_base(), _space(), out, progress=False)
    return out, summary


def test_sweep_writes_tables_figure_and_a_trainable_best_config(full_sweep):
    out, summary = full_sweep
    prog = json.loads((out / "progress.json").read_text())
    rec = prog["trials"]
    assert len(rec) == 3 and prog["brackets"][0]["done"] == 2
    assert all("1" in r["metrics"] for r in rec)  # every trial measured at rung 0
    finished = [r for r in rec if "2" in r["metrics"]]
    assert len(finished) == 1  # floor(3 / 2) survivors trained on to the full budget
    survivor = finished[0]
    rung0 = {r["id"]: np.nan if r["metrics"]["1"] is None else r["metrics"]["1"] for r in rec}
    assert [survivor["id"]] == halving.select(rung0, 1, "min")
    assert survivor["env_steps"] == 2 * 8 * 4 and survivor["seconds"] > 0
    assert summary["best_trial"] == survivor["id"] and summary["default_trial"] == 0
    # trial 0 is the base config
    assert rec[0]["values"]["dqn.learning_rate"] == _base()["dqn"]["learning_rate"]
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["trial", "bracket", "dqn.learning_rate", "dqn.gamma", "dqn.target_update_period"]
    assert "distance_mm@1" in header and "env_steps" in header and "seconds" in header
    assert "(best)" in (out / "results.md").read_text()
    assert (out / "curves.png").stat().st_size > 1000
    text = (out / "best.yaml").read_text()
    cfg = ExperimentConfig.from_dict(yaml.safe_load(text), "best.yaml")
    assert cfg.train.chunks == 2
    for path, v in survivor["values"].items():
        section, field = path.split(".")
        assert getattr(getattr(cfg, section), field) == v


def test_sweep_resumes_after_a_kill_with_the_same_results(full_sweep, tmp_path):
    out_full, _ = full_sweep
    out = tmp_path / "killed"

    class Killed(Exception):
        pass

    def kill(bracket, rung):
        if rung == 0:
            raise Killed

    with pytest.raises(Killed):
        run_sweep(_base(), _space(), out, progress=False, on_rung=kill)
    assert json.loads((out / "progress.json").read_text())["brackets"][0]["done"] == 1
    with pytest.raises(OverwriteError):
        run_sweep(_base(), _space(), out, progress=False)
    with pytest.raises(ConfigError, match="differs"):
        run_sweep(_base(), _space(seed=4), out, progress=False, resume=True)
    with pytest.raises(ConfigError, match="device_count=4.*device_count=2"):  # its rows live on 4 devices
        run_sweep(_base(), _space(), out, progress=False, resume=True, devices=2)
    run_sweep(_base(), _space(), out, progress=False, resume=True)
    a = json.loads((out_full / "progress.json").read_text())["trials"]
    b = json.loads((out / "progress.json").read_text())["trials"]
    assert [r["values"] for r in a] == [r["values"] for r in b]
    for ra, rb in zip(a, b):
        assert ra["metrics"].keys() == rb["metrics"].keys() and ra["stopped_at"] == rb["stopped_at"]
        for k in ra["metrics"]:
            np.testing.assert_allclose(ra["metrics"][k], rb["metrics"][k], rtol=1e-5)


def test_sweep_cli_bad_space(tmp_path):
    import argparse

    from jaxmed.commands import sweep as cmd

    parser = argparse.ArgumentParser()
    cmd.add_parser(parser.add_subparsers())
    (tmp_path / "space.yaml").write_text("params: {dqn.gamma: {normal: [0, 1]}}\n")
    args = parser.parse_args(["sweep", "configs/phantom_dqn.yaml", "--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="expected one of"):
        args.func(args)
    (tmp_path / "space.yaml").write_text("params: {dqn.gamma: {uniform: [0.8, 0.9]}}\n")
    args = parser.parse_args(["sweep", "configs/phantom_dqn.yaml", "--space", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "o"),
                              "--devices", "9"])
    with pytest.raises(ConfigError, match="devices=9"):
        args.func(args)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ another learner: PPO


def test_ppo_sweep_reads_the_leaves_from_the_learner(tmp_path):
    """The sweep is learner-generic: PPO's hyperparameter leaves (ppo.HPARAM_FIELDS) vary inside one
    vmapped program, a static PPO field makes its own group, and best.yaml is a PPO config."""
    from jaxmed.agents import ppo
    from jaxmed.sweep.space import is_leaf

    assert is_leaf("ppo.clip_eps", "ppo") and is_leaf("ppo.ent_coef", "ppo") and not is_leaf("ppo.update_epochs", "ppo")
    assert not is_leaf("dqn.gamma", "ppo")
    base = apply_overrides(load_yaml("configs/phantom_ppo.yaml"), TINY[:9] + [
        "ppo.n_envs=4", "ppo.num_steps=8", "ppo.updates_per_chunk=1", "ppo.update_epochs=1", "ppo.num_minibatches=2"])
    space = Space.from_dict({"method": "halving", "trials": 2, "eta": 2, "min_chunks": 1, "max_chunks": 2, "seed": 0,
                             "metric": {"name": "distance_mm", "split": "train"},
                             "params": {"ppo.learning_rate": {"log_uniform": [1e-3, 1e-2]}, "ppo.clip_eps": {"uniform": [0.1, 0.3]}}})
    summary = run_sweep(base, space, tmp_path / "ppo", progress=False, devices=2)
    rec = json.loads((tmp_path / "ppo" / "progress.json").read_text())["trials"]
    assert summary["groups"] == 1 and len(rec) == 2 and rec[0]["values"]["ppo.clip_eps"] == 0.2
    assert rec[0]["values"]["ppo.learning_rate"] != rec[1]["values"]["ppo.learning_rate"]
    assert all("1" in r["metrics"] for r in rec) and sum("2" in r["metrics"] for r in rec) == 1
    assert rec[0]["env_steps"] in (4 * 8, 2 * 4 * 8)
    best = ExperimentConfig.from_dict(yaml.safe_load((tmp_path / "ppo" / "best.yaml").read_text()), "best.yaml")
    assert best.train.learner == "ppo" and isinstance(best.learner, ppo.PPOConfig)
    assert best.ppo.clip_eps == rec[summary["best_trial"]]["values"]["ppo.clip_eps"]
    a = make_trial(base, {"ppo.clip_eps": 0.1, "ppo.update_epochs": 1}, 0, 0)
    b = make_trial(base, {"ppo.clip_eps": 0.3, "ppo.update_epochs": 2}, 0, 1)
    assert a.group != b.group  # update_epochs changes the program


# ------------------------------------------------------------------ multi-host: 2 processes x 2 devices

WORKER = """
import sys
from jaxmed.agents.distributed import initialize
initialize()  # JAXMED_COORDINATOR / NUM_PROCESSES / PROCESS_ID set by tests/multiprocess.py
from jaxmed.cli import main
from jaxmed.config import load_yaml
from jaxmed.sweep import Space, run_sweep
config, space, out = sys.argv[1:4]
class Killed(Exception):
    pass
def kill(bracket, rung):
    raise Killed
try:  # killed after the first rung (its checkpoint written), then resumed through the CLI
    run_sweep(load_yaml(config), Space.from_dict(load_yaml(space)), out, progress=False, on_rung=kill)
except Killed:
    print("killed after rung 0", flush=True)
sys.exit(main(["sweep", config, "--space", space, "--out", out, "--resume", "--distributed", "--quiet"]))
"""


def test_two_processes_sweep_like_one_process_and_resume(full_sweep, tmp_path):
    """The sweep under jax.distributed (2 local processes x 2 CPU devices: the trials sharded over 4
    global devices), killed after its first rung and resumed with `jaxmed sweep --resume
    --distributed`, gives every trial the metrics of the single-process sweep on 4 devices."""
    out_ref, ref_summary = full_sweep
    config, space, out = tmp_path / "base.yaml", tmp_path / "space.yaml", tmp_path / "dist"
    config.write_text(yaml.safe_dump(_base(), sort_keys=False))
    space.write_text(yaml.safe_dump(_space().to_dict(), sort_keys=False))  # params in order: same draws
    logs = run_processes(lambda i, port: [sys.executable, "-c", WORKER, config, space, out], 2, tmp_path / "logs",
                         local_devices=2, timeout_s=240)
    assert all("killed after rung 0" in log for log in logs)
    assert "(best)" in logs[0] and "(best)" not in logs[1]  # process 0 alone reports
    prog = json.loads((out / "progress.json").read_text())
    assert prog["processes"] == 2 and prog["devices"] == 4
    ref = json.loads((out_ref / "progress.json").read_text())
    assert json.loads((out_ref / "progress.json").read_text())["devices"] == 4
    for a, b in zip(ref["trials"], prog["trials"]):
        assert a["values"] == b["values"] and a["stopped_at"] == b["stopped_at"]
        assert a["metrics"].keys() == b["metrics"].keys()
        for k in a["metrics"]:
            np.testing.assert_allclose(b["metrics"][k], a["metrics"][k], rtol=1e-5)
    # each process wrote its own rows of the last checkpoint; the superseded one is gone
    ckpt = out / "state" / "b0" / "g0" / "rung1"
    assert sorted(p.name for p in ckpt.iterdir()) == ["process0.json", "process0.npz", "process1.json", "process1.npz"]
    assert json.loads((out / "summary.json").read_text())["best_trial"] == ref_summary["best_trial"]
    assert (out / "best.yaml").exists() and (out / "curves.png").exists()
