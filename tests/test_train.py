"""The outer loop: typed configs, run directories, checkpoints and exact resume, evaluate, detect."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import yaml

from jaxmed.cli import main
from jaxmed.config import apply_overrides, load_yaml
from jaxmed.errors import ConfigError, OverwriteError
from jaxmed.experiment import ExperimentConfig
from jaxmed.runs import load_params
from jaxmed.train import run_training

CONFIG = "configs/phantom_dqn.yaml"


def _cfg(**train):
    cfg = ExperimentConfig.from_dict(load_yaml(CONFIG), CONFIG)
    small_dqn = dataclasses.replace(cfg.dqn, chunk_steps=10, learning_starts=32, n_envs=8, batch_size=16)
    return dataclasses.replace(cfg, learner_config=small_dqn, train=dataclasses.replace(cfg.train, **train))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"config\.dqn: unknown key\(s\) learnin_rate; allowed: .*learning_rate"):
        ExperimentConfig.from_dict(apply_overrides(load_yaml(CONFIG), ["dqn.learnin_rate=0.1"]))
    with pytest.raises(ConfigError, match=r"env\.crop_size: expected an integer, got 'big'"):
        ExperimentConfig.from_dict(apply_overrides(load_yaml(CONFIG), ["env.crop_size=big"]))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) crop; config options: .*crop_size"):
        ExperimentConfig.from_dict(apply_overrides(load_yaml(CONFIG), ["env.crop=15"]))
    with pytest.raises(ConfigError, match="unknown environment 'landmrk-v0'"):
        ExperimentConfig.from_dict(apply_overrides(load_yaml(CONFIG), ["env.name=landmrk-v0"]))
    with pytest.raises(ConfigError, match="unknown learner 'sarsa'"):
        ExperimentConfig.from_dict(apply_overrides(load_yaml(CONFIG), ["train.learner=sarsa"]))
    with pytest.raises(ConfigError, match="cannot be combined"):
        ExperimentConfig.from_dict(apply_overrides(load_yaml(CONFIG), ["train.seeds=2", "train.devices=2"]))
    with pytest.raises(ConfigError, match="data.source"):
        ExperimentConfig.from_dict({"data": {"source": "mnist"}})
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")
    cfg = ExperimentConfig.from_dict(apply_overrides(load_yaml(CONFIG), ["dqn.learning_rate=3e-4", "env.targets=[L0, L1]"]))
    assert cfg.dqn.learning_rate == 3e-4 and tuple(cfg.env["targets"]) == ("L0", "L1")


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    full = tmp_path / "full"
    run_training(_cfg(chunks=4, checkpoint_every=2), full, progress=False, evaluate=False)

    class Killed(Exception):
        pass

    def kill_after_three(chunk, metrics):
        if chunk == 3:  # after the checkpoint at chunk 2: chunk 3 is lost and replayed
            raise Killed

    part = tmp_path / "part"
    with pytest.raises(Killed):
        run_training(_cfg(chunks=4, checkpoint_every=2), part, progress=False, evaluate=False, on_chunk=kill_after_three)
    run_training(_cfg(chunks=4, checkpoint_every=2), part, resume=True, progress=False, evaluate=False)
    _, _, p_full = load_params(full)
    _, _, p_part = load_params(part)
    for a, b in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_part)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = (part / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4  # header + one row per chunk, no duplicates after the resume
    header = rows[0].split(",")
    wall = [float(r.split(",")[header.index("wall_s")]) for r in rows[1:]]
    assert all(b > a for a, b in zip(wall, wall[1:])), wall  # cumulative across the resume
    summary = json.loads((part / "summary.json").read_text())
    assert summary["train_wall_s"] >= wall[-1] > wall[1]


def test_run_dir_is_not_clobbered_and_resume_checks_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(OverwriteError, match="--overwrite"):
        run_training(_cfg(chunks=1), run, progress=False, evaluate=False)
    assert (run / "notes.txt").read_text() == "mine"
    run_training(_cfg(chunks=1), tmp_path / "r2", progress=False, evaluate=False)
    other = dataclasses.replace(_cfg(chunks=2), env={**_cfg().env, "crop_size": 30})
    with pytest.raises(ConfigError, match=r"differs .*\['env'\]"):
        run_training(other, tmp_path / "r2", resume=True, progress=False, evaluate=False)
    # a run written before a config key existed resumes: the key's default is what it trained with
    saved = yaml.safe_load((tmp_path / "r2" / "config.yaml").read_text())
    del saved["train"]["average_from"]
    (tmp_path / "r2" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run_training(_cfg(chunks=1), tmp_path / "r2", resume=True, progress=False, evaluate=False)["seeds"] == 1


def test_cli_train_evaluate_detect(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", CONFIG, "train.chunks=3", "dqn.chunk_steps=10", "data.n_test=1", "env.eval_starts=4", "--run-dir", str(run),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| L0 |" in out and "template prior" in out
    assert (run / "trajectories.png").stat().st_size > 5000
    assert main(["evaluate", str(run), "--n-test", "1"]) == 0
    # detect on a synthetic subject written to disk (any orientation / voxel size)
    assert main(["data", "synth", "-n", "1", "-o", str(tmp_path / "pop"), "--split", "test", "--template", str(_phantom_nifti(tmp_path)),
                 "--landmarks", str(tmp_path / "tpl.fcsv")]) == 0
    image = next((tmp_path / "pop").glob("*_T1w.nii.gz"))
    out_fcsv = tmp_path / "found.fcsv"
    assert main(["detect", str(image), "--checkpoint", str(run), "-o", str(out_fcsv)]) == 0
    from jaxmed.data import read_landmarks

    found = read_landmarks(out_fcsv)
    assert found.labels == ("L0",) and np.all(np.isfinite(found.positions))
    assert main(["detect", str(image), "--checkpoint", str(run), "-o", str(out_fcsv)]) == 2  # no clobbering
    assert main(["detect", str(image), "--checkpoint", str(run), "-o", str(tmp_path / "x.fcsv"), "--labels", "AC"]) == 2
    assert "trained for L0; it cannot detect AC" in capsys.readouterr().err


def _phantom_nifti(tmp_path):
    from jaxmed.data import blob_phantom, save_nifti, write_landmarks

    vol, lm = blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=4, seed=0)
    write_landmarks(lm, tmp_path / "tpl.fcsv")
    return save_nifti(vol, tmp_path / "tpl.nii.gz")


def test_checkpoint_from_a_different_network_is_refused(tmp_path):
    run = tmp_path / "run"
    run_training(_cfg(chunks=1), run, progress=False, evaluate=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["network"]["head"]["hidden"] = [32, 16]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="do not fit"):
        load_params(run)


@pytest.mark.parametrize("path", sorted(p for p in __import__("pathlib").Path("configs").rglob("*.yaml") if p.parent.name != "sweeps"))
def test_every_shipped_config_is_valid(path):
    from jaxmed.envs.landmark import LandmarkEnv
    from jaxmed.experiment import make_env, make_network

    cfg = ExperimentConfig.from_dict(load_yaml(path), str(path))
    env, _, _ = make_env(cfg)
    net = make_network(cfg, env)  # validates trunk / head / crop size (raises ConfigError)
    assert net.n_actions == env.num_actions
    if isinstance(env, LandmarkEnv):
        assert set(env.config.levels) <= set(range(len(cfg.data.factors)))  # every env level exists in the bank


def test_variant_configs_inherit_from_their_base(tmp_path):
    cfg = ExperimentConfig.from_dict(load_yaml("configs/variants/afids_dueling_cpu.yaml"))
    base = ExperimentConfig.from_dict(load_yaml("configs/afids_dqn_cpu.yaml"))
    assert cfg.network["head"]["name"] == "dueling" and cfg.dqn.double is False
    assert cfg.env == base.env and cfg.data == base.data and cfg.network["trunk"] == base.network["trunk"]
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_yaml(tmp_path / "a.yaml")


def test_vmapped_seeds_train_in_one_program_and_report_mean_and_std(tmp_path):
    """train.seeds=2: one compiled program; each seed equals a separate single-seed run with its key."""
    import jax

    from jaxmed.agents.dqn import make_train
    from jaxmed.experiment import make_bank, make_env, make_network

    cfg = _cfg(chunks=2, checkpoint_every=2, seeds=2)
    summary = run_training(cfg, tmp_path / "seeds", progress=False, evaluate=True)
    ev = summary["evaluation"]
    assert len(ev["per_seed"]) == 2 and "mean over 2 seeds" in ev["table"]
    header = (tmp_path / "seeds" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "reward_std" in header
    # eval_episodes.csv: every episode of every seed, with its held-out subject, agreeing with the tables
    import csv

    rows = list(csv.DictReader(open(tmp_path / "seeds" / "eval_episodes.csv")))
    assert len(rows) == 2 * ev["episodes"] and {r["seed"] for r in rows} == {"0", "1"}
    n_test, starts = cfg.data.n_test, ev["episodes"] // cfg.data.n_test
    assert sorted(int(r["subject"]) for r in rows if r["seed"] == "0") == sorted(list(range(n_test)) * starts)
    for seed, stats in enumerate(ev["per_seed"]):
        for label, row in stats["distance_mm"].items():
            column = [float(r[f"distance_mm {label}"]) for r in rows if r["seed"] == str(seed)]
            assert abs(np.mean(column) - row["mean"]) < 1e-4 and len(column) == row["n"]
    _, _, stacked = load_params(tmp_path / "seeds")
    # seed 1 of the vmapped run == a plain run started from the same split key
    bank, _, _ = make_bank(cfg, "train", cfg.data.n_train)
    env, params, _ = make_env(cfg, bank.labels)
    fns = make_train(cfg.dqn, env, params, make_network(cfg, env))
    rs = jax.jit(fns.init)(jax.random.split(jax.random.key(cfg.train.seed), 2)[1], bank)
    for _ in range(2):
        rs, _ = jax.jit(fns.run_chunk)(rs, bank)
    # The batched and the plain program may sum in different orders, so single float32 parameters
    # can differ by rounding (~1e-6 of values ~1e-2 after two chunks). Compare each leaf by its
    # relative norm instead: rounding gives ~1e-7, any difference of logic (key, data, hyperparameter)
    # gives O(1), as the other seed shows.
    def rel_err(tree, seed):
        return max(float(np.linalg.norm(np.asarray(a) - np.asarray(b)[seed]) / np.linalg.norm(np.asarray(b)[seed]))
                   for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(stacked)))

    assert rel_err(rs.params, 1) < 1e-5
    assert rel_err(rs.params, 0) > 1e-2


def test_seed_batching_runs_the_same_seeds_side_by_side_or_in_turn():
    """train.seed_batching: vmap (batched) and map (lax.map, the CPU default) train each seed alike."""
    import jax

    from jaxmed.agents.core import over_members
    from jaxmed.agents.dqn import make_train
    from jaxmed.experiment import make_bank, make_env, make_network

    cfg = _cfg(chunks=2, seeds=2)
    bank, _, _ = make_bank(cfg, "train", cfg.data.n_train)
    env, params, _ = make_env(cfg, bank.labels)
    fns = make_train(cfg.dqn, env, params, make_network(cfg, env))
    init = jax.jit(jax.vmap(fns.init, in_axes=(0, None)))
    out = {}
    for batching in ("vmap", "map"):
        rs = init(jax.random.split(jax.random.key(0), 2), bank)
        chunk = jax.jit(over_members(fns.run_chunk, batching))
        for _ in range(2):
            rs, metrics = chunk(rs, bank)
        assert np.asarray(metrics["reward"]).shape[0] == 2  # per-seed metrics keep the seed axis
        out[batching] = rs.params
    for a, b in zip(jax.tree.leaves(out["vmap"]), jax.tree.leaves(out["map"])):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.shape[0] == 2
        for seed in range(2):  # rounding only (summation order), see the test above
            assert np.linalg.norm(a[seed] - b[seed]) <= 1e-5 * max(np.linalg.norm(b[seed]), 1e-12)
    assert np.linalg.norm(np.asarray(jax.tree.leaves(out["map"])[0][0] - jax.tree.leaves(out["map"])[0][1])) > 0
    with pytest.raises(ConfigError, match="train.seed_batching must be one of auto, vmap, map, got 'scan'"):
        ExperimentConfig.from_dict(apply_overrides(load_yaml(CONFIG), ["train.seed_batching=scan"]), CONFIG)


def test_over_members_maps_or_vmaps_the_member_arguments_and_shares_the_rest():
    """agents.core.over_members: arguments with in_axes 0 carry a member axis, None ones are shared;
    vmap and map (lax.map) give what a Python loop over members gives; a bad name is refused."""
    import jax
    import jax.numpy as jnp

    from jaxmed.agents.core import over_members

    def member(w, bank, x):  # a per-member weight and input, a shared bank
        h = jnp.tanh(x @ w + bank.sum())
        return {"out": h, "norm": jnp.linalg.norm(h)}

    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(3, 4, 5)).astype(np.float32), rng.normal(size=(3, 2, 4)).astype(np.float32)
    bank = rng.normal(size=(6,)).astype(np.float32)
    loop = [member(w[m], bank, x[m]) for m in range(3)]
    for batching in ("vmap", "map", "auto"):
        got = jax.jit(over_members(member, batching, in_axes=(0, None, 0)))(w, bank, x)
        assert got["out"].shape == (3, 2, 5) and got["norm"].shape == (3,)
        for m in range(3):
            np.testing.assert_allclose(np.asarray(got["out"][m]), np.asarray(loop[m]["out"]), rtol=1e-6, atol=1e-6)
    with pytest.raises(ConfigError, match="member batching must be one of auto, vmap, map, got 'pmap'"):
        over_members(member, "pmap")


def test_per_seed_hyperparameters_as_arrays(tmp_path):
    """train.hparams gives each vmapped member its own hyperparameters in one program (PPO here): a
    member with learning rate 0 keeps its initial parameters, the other trains; bad fields are refused."""
    from jaxmed.agents.learners import make_trainer
    from jaxmed.experiment import make_bank, make_env, make_network

    path = "configs/phantom_ppo.yaml"
    cfg = ExperimentConfig.from_dict(apply_overrides(load_yaml(path), [
        "train.seeds=2", "train.hparams={learning_rate: [1.0e-3, 1.0e-10], ent_coef: 0.02}", "ppo.updates_per_chunk=1",
        "data.n_train=2"]), path)
    assert cfg.train.hparam_rows() == [{"learning_rate": 1e-3, "ent_coef": 0.02}, {"learning_rate": 1e-10, "ent_coef": 0.02}]
    bank, _, _ = make_bank(cfg, "train", cfg.data.n_train)
    env, params, _ = make_env(cfg, bank.labels)
    init, run_chunk = make_trainer(cfg.train, cfg.learner, env, params, make_network(cfg, env))
    rs0 = init(jax.random.key(0), bank)
    start = jax.tree.map(np.asarray, rs0.params)
    np.testing.assert_allclose(np.asarray(rs0.hparams.learning_rate), [1e-3, 1e-10])
    np.testing.assert_allclose(np.asarray(rs0.hparams.ent_coef), [0.02, 0.02])
    rs, _ = run_chunk(rs0, bank)
    moved = [np.abs(np.asarray(a) - b).max(axis=tuple(range(1, b.ndim)))
             for a, b in zip(jax.tree.leaves(rs.params), jax.tree.leaves(start))]
    assert max(m[0] for m in moved) > 1e-4 and max(m[1] for m in moved) < 1e-7
    for bad, match in (("train.hparams={batch_size: [1, 2]}", "not hyperparameter leaves of ppo"),
                       ("train.hparams={learning_rate: [1.0e-3, 2.0e-3, 3.0e-3]}", "3 values for train.seeds=2")):
        with pytest.raises(ConfigError, match=match):
            ExperimentConfig.from_dict(apply_overrides(load_yaml(path), ["train.seeds=2", bad]), path)


def test_goal_config_trains_with_hindsight_relabelling(tmp_path):
    """`jaxmed train` wires the HER batch transform of a goal-conditioned env into the DQN learner."""
    from jaxmed.agents.her import transform_for
    from jaxmed.data.run_data import template
    from jaxmed.experiment import make_bank, make_env

    path = "configs/goal/phantom_goal_dqn.yaml"
    cfg = ExperimentConfig.from_dict(apply_overrides(load_yaml(path), [
        "train.chunks=2", "dqn.chunk_steps=10", "dqn.n_envs=8", "dqn.batch_size=16", "dqn.learning_starts=32",
        "data.n_test=2", "env.eval_starts=2", "env.eval_max_steps=5"]), path)
    env, params, _ = make_env(cfg)
    assert cfg.dqn.her.fraction == 0.3 and transform_for(env, params, cfg.dqn) is not None
    # the goal reference (bank volume 0) is the template the subjects are made from, not a subject
    bank, subjects, _ = make_bank(cfg, "test", 2)
    assert bank.n_volumes == 3 and len(subjects) == 2
    _, tpl_landmarks = template(cfg.data)
    np.testing.assert_allclose(np.asarray(bank.landmarks_world)[0], tpl_landmarks.select(bank.labels).positions, atol=1e-4)
    summary = run_training(cfg, tmp_path / "goal", progress=False)
    rows = (tmp_path / "goal" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and summary["env_steps"] == 2 * 10 * 8
    last = dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert np.isfinite(float(last["loss"]))  # updates ran on relabelled batches
    # evaluation: one row per goal over the test subjects only (2 subjects x 2 starts x 2 goals)
    evaluation = summary["evaluation"]
    assert set(evaluation["stats"]["distance_mm"]) == {"L0", "L1"} and evaluation["episodes"] == 8


def test_evaluate_run_on_a_corner_pair_env(tmp_path):
    """Envs that subclass the landmark env (corner pair) are evaluated by their own metrics, without
    the landmark-only template prior and trajectory plot."""
    import jax.numpy as jnp

    from jaxmed.experiment import build_experiment, dummy_observation, make_env, make_network
    from jaxmed.run_evaluation import evaluate_run

    cfg = ExperimentConfig.from_dict(apply_overrides(load_yaml("configs/phantom_box_dqn.yaml"), [
        "env={name: corner-pair-v0, structure: organ, n_points: 26, crop_size: 15, frames: 1, max_steps: 10, "
        "eval_starts: 2, eval_max_steps: 10}", "data.n_test=1", "network.n_agents=2"]))
    env, _, _ = make_env(cfg)
    params = make_network(cfg, env).init(jax.random.key(0), dummy_observation(cfg, env))
    ev = evaluate_run(build_experiment(cfg, with_data=False), jax.tree.map(jnp.asarray, params), tmp_path)
    assert "iou" in ev["stats"] and "template_prior" not in ev
    assert (tmp_path / "eval.md").exists() and not (tmp_path / "trajectories.png").exists()
    header = (tmp_path / "eval_episodes.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["seed", "episode", "subject"] and any(h.startswith("iou ") for h in header)
    assert len((tmp_path / "eval_episodes.csv").read_text().splitlines()) == 1 + ev["episodes"]


def test_evaluation_of_a_run_uses_the_experiment_it_was_built_from(tmp_path):
    """evaluate_run and the run's detector take the built experiment's env, evaluation parameters and
    held-out bank; the trajectory figure follows the env's hook; a run evaluated from an experiment
    built without data gives the same table as one built with it."""
    import jax.numpy as jnp

    from jaxmed import experiment as ex
    from jaxmed.detect import LandmarkDetector
    from jaxmed.envs import make
    from jaxmed.run_evaluation import evaluate_run

    cfg = dataclasses.replace(_cfg(chunks=1), data=dataclasses.replace(_cfg().data, n_test=1))
    exp = ex.build_experiment(cfg)
    params = jax.tree.map(jnp.asarray, exp.network.init(jax.random.key(0), ex.dummy_observation(cfg, exp.env)))
    detector = LandmarkDetector(cfg, exp.network, params, n_starts=2, experiment=exp)
    assert detector.env is exp.env and detector.eval_params is exp.eval_params
    bank, subjects = exp.held_out()
    assert bank.n_volumes == len(subjects) == 1 and bank.labels == exp.bank.labels
    states = exp.env.eval_states(exp.eval_params, bank, 2)
    assert np.array_equal(np.asarray(exp.env.trajectory_of(states)), np.asarray(states.pos))
    registration_env, _ = make("registration-v0", bank.labels)  # its agent answers no landmark: no path to draw
    assert not registration_env.landmark_targets
    with pytest.raises(NotImplementedError, match="landmark positions"):
        registration_env.trajectory_of(None)
    (tmp_path / "a").mkdir()
    ev = evaluate_run(exp, params, tmp_path / "a")
    bare = evaluate_run(ex.build_experiment(cfg, with_data=False), params, None)
    assert ev["table"] == bare["table"] and "template_prior" in ev and ev["episodes"] == cfg.eval_starts
    assert (tmp_path / "a" / "trajectories.png").stat().st_size > 0


def test_refresh_every_rebuilds_the_training_bank_without_retrace_and_resumes_exactly(tmp_path):
    from jaxmed import experiment as ex

    cfg = _cfg(chunks=3, checkpoint_every=2, refresh_every=1)
    exp = ex.build_experiment(cfg)
    b0, b1 = exp.train_bank(0), exp.train_bank(1)
    assert b0.labels == b1.labels and not np.allclose(np.asarray(b0.landmarks_world), np.asarray(b1.landmarks_world))
    full = run_training(cfg, tmp_path / "full", progress=False, evaluate=False)
    assert full["bank_epochs"] == [0, 1, 2] and full["chunk_compilations"] == 1  # fresh subjects, one compiled program
    # replay stores env states and re-renders them from the bank: a new epoch starts with an empty
    # buffer (else old subjects' rewards would be replayed with the new subjects' observations)
    from jaxmed.agents.learners import make_trainer
    from jaxmed.run_files import Checkpoints

    init, _ = make_trainer(cfg.train, cfg.learner, exp.env, exp.env_params, exp.network)
    ckpt = Checkpoints(tmp_path / "full" / "checkpoints")
    saved = ckpt.restore(3, init(jax.random.key(0), exp.bank))
    ckpt.close()
    assert int(saved.buffer.size) == cfg.dqn.n_envs * cfg.dqn.chunk_steps  # only the last chunk's transitions
    assert int(saved.steps) == 3 * cfg.dqn.chunk_steps and int(saved.updates) > 0  # counters and learning carry on

    class Killed(Exception):
        pass

    def kill(chunk, metrics):
        if chunk == 3:
            raise Killed

    with pytest.raises(Killed):
        run_training(cfg, tmp_path / "part", progress=False, evaluate=False, on_chunk=kill)
    run_training(cfg, tmp_path / "part", resume=True, progress=False, evaluate=False)  # chunk 3 replayed on epoch 2's bank
    for a, b in zip(jax.tree.leaves(load_params(tmp_path / "full")[2]), jax.tree.leaves(load_params(tmp_path / "part")[2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ConfigError, match="refresh_every"):
        _cfg(refresh_every=-1)


def test_weight_averaging_saves_the_mean_of_late_snapshots_and_resumes_exactly(tmp_path, monkeypatch):
    from flax import serialization

    import jaxmed.train as train_module
    from jaxmed.run_files import network_to_save

    cfg = _cfg(chunks=3, checkpoint_every=1, average_from=2)
    evaluated = []
    monkeypatch.setattr(train_module, "evaluate_run", lambda exp, params, run_dir: evaluated.append(params) or {})
    summary = run_training(cfg, tmp_path / "full", progress=False)
    names = sorted(p.name for p in (tmp_path / "full" / "snapshots").iterdir())
    assert names == ["chunk_000002.msgpack", "chunk_000003.msgpack"]  # from average_from on
    assert summary["network_averages_chunks"] == [2, 3]
    _, _, saved = load_params(tmp_path / "full")
    snaps = [serialization.from_bytes(saved, (tmp_path / "full" / "snapshots" / n).read_bytes()) for n in names]
    leaves = [[np.asarray(x) for x in jax.tree.leaves(t)] for t in [saved, *snaps]]
    assert not np.allclose(leaves[1][-1], leaves[2][-1])  # the snapshots differ: the mean is not one of them
    for saved_leaf, *snap_leaves in zip(*leaves):
        assert saved_leaf.dtype == snap_leaves[0].dtype
        np.testing.assert_allclose(saved_leaf, np.mean(snap_leaves, axis=0), rtol=1e-6, atol=1e-7)
    # the run's own evaluation scores the saved (averaged) network, not the last parameters
    for a, b in zip(jax.tree.leaves(evaluated[0]), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    class Killed(Exception):
        pass

    def kill(chunk, metrics):
        if chunk == 2:  # after the first snapshot: the resumed run averages it with the next one
            raise Killed

    with pytest.raises(Killed):
        run_training(cfg, tmp_path / "part", progress=False, evaluate=False, on_chunk=kill)
    part = run_training(cfg, tmp_path / "part", resume=True, progress=False, evaluate=False)
    assert part["network_averages_chunks"] == [2, 3]
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(load_params(tmp_path / "part")[2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # without averaging nothing is kept beside the network, and the network is the last parameters
    kept, averaged = network_to_save(tmp_path / "plain", _cfg(chunks=3).train.average_from, 3, snaps[1])
    assert kept is snaps[1] and averaged == []
    assert not (tmp_path / "plain").exists()
    for bad in (-1, 4):
        with pytest.raises(ConfigError, match="train.average_from"):
            _cfg(chunks=3, average_from=bad)


def test_a_saved_run_is_loaded_as_one_experiment_that_detection_reuses(tmp_path, capsys):
    """load_run builds the run's experiment once (no data) beside its saved parameters; the run's
    detector and `jaxmed evaluate RUN` take that experiment's env instead of making another."""
    from jaxmed import experiment as ex
    from jaxmed.detect import LandmarkDetector
    from jaxmed.runs import load_run

    cfg = dataclasses.replace(_cfg(chunks=1), data=dataclasses.replace(_cfg().data, n_test=1))
    run_training(cfg, tmp_path / "run", progress=False, evaluate=False)
    exp, params = load_run(tmp_path / "run")
    assert isinstance(exp, ex.Experiment) and exp.bank is None and exp.cfg == cfg
    _, _, same = load_params(tmp_path / "run")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same)))
    detector = LandmarkDetector.from_run(tmp_path / "run", n_starts=2)
    assert type(detector.env) is type(exp.env) and detector.env.config == exp.env.config
    assert detector.eval_params.max_steps == exp.eval_params.max_steps
    mine = LandmarkDetector.from_run(tmp_path / "run", n_starts=2, experiment=exp)
    assert mine.env is exp.env
    bank, subjects = exp.held_out()
    a, _ = detector.find([v for v, _ in subjects])
    b, _ = mine.find([v for v, _ in subjects])
    assert np.array_equal(a[0].positions, b[0].positions)
    assert main(["evaluate", str(tmp_path / "run"), "--level-step-limit", "7", "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "eval.json").exists()
    assert main(["evaluate", str(tmp_path / "run"), "--level-step-limit", "-1", "--out", str(tmp_path / "ev2")]) == 2
    assert "level_step_limit" in capsys.readouterr().err and not (tmp_path / "ev2").exists()
