"""Evaluation of a trained run, from its built :class:`~jaxmed.experiment.Experiment`.

:func:`evaluate_run`: greedy rollouts from the env's fixed evaluation starts on the run's held-out
subjects, per-agent metrics per label, the template prior beside them for envs whose agents answer
landmarks, ``eval.json`` / ``eval.md`` / ``eval_episodes.csv`` (:func:`episode_rows`: which held-out
subject and start each episode had, and how it ended) / ``trajectories.png``. :func:`evaluate_extra_sets`: a landmark
run's detector on the held-out subjects and every ``eval.extra_sets`` spec, with the template-prior
and registration baselines. Both take the experiment the run was built from (``jaxmed train``) or
one built without data for a saved run (``jaxmed evaluate``): nothing is built again from the config.

What is specific to an env comes from the env's hooks: :attr:`~jaxmed.envs.base.Environment.landmark_targets`
(which agents answer landmarks), :meth:`~jaxmed.envs.base.Environment.metric_stats` (table rows) and
:meth:`~jaxmed.envs.base.Environment.trajectory_of` (what the trajectory figure draws).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxmed import experiment as ex
from jaxmed.errors import JaxmedError
from jaxmed.runs import make_policy_rollout, seed_params


def evaluate_run(exp: ex.Experiment, net_params, run_dir: str | Path | None = None) -> dict:
    """Greedy agents from the env's fixed evaluation starts (``env.eval_starts`` per subject) on the
    run's ``data.n_test`` held-out subjects: per-agent metrics (mm, degrees, IoU, ...) per label, beside
    the template prior for envs with :attr:`~jaxmed.envs.base.Environment.landmark_targets`. A
    multi-seed run (``net_params`` with a leading seed axis) is evaluated per seed and summarised as
    mean ± std across seeds; seconds are per seed, without compilation.

    Writes ``eval.json``, ``eval.md``, ``eval_episodes.csv`` (one row per episode and seed:
    :func:`episode_rows`) and, for landmark envs, ``trajectories.png`` (the first test subject's first
    episode) into ``run_dir`` when given. Returns the result dict (``stats``,
    ``table``, ``episodes``, ``eval_s``, ``seconds_per_subject``, ``template_prior``, ``per_seed``,
    ...)."""
    from jaxmed.evaluation import format_metric_tables, metric_stats, seed_summary

    cfg, env, eval_params = exp.cfg, exp.env, exp.eval_params
    bank, subjects = exp.held_out()
    states = env.eval_states(eval_params, bank, cfg.eval_starts, seed=cfg.train.seed)
    draws_paths = bool(env.landmark_targets)
    rollout = make_policy_rollout(cfg, env, eval_params, exp.network, record=env.trajectory_of if draws_paths else None)
    per_seed, eval_s, first, seed_metrics = [], 0.0, None, []
    for seed in range(cfg.train.seeds):
        args = (seed_params(cfg, net_params, seed), bank, states)
        compiled = rollout.lower(*args).compile()
        t0 = time.perf_counter()  # timed without compilation
        out = jax.block_until_ready(compiled(*args))
        eval_s += time.perf_counter() - t0
        first = out if first is None else first
        per_seed.append({m: env.metric_stats(states, v, m) for m, v in out["metrics"].items()})
        seed_metrics.append(jax.device_get(out["metrics"]))
    stats = per_seed[0]
    baseline = None
    reference = exp.reference() if env.landmark_targets else None
    if reference is not None:
        _, tpl_landmarks = reference
        prior = np.stack([np.linalg.norm(lm.positions - tpl_landmarks.select(lm.labels).positions, axis=1) for _, lm in subjects])
        baseline = {"template prior": {"distance_mm": metric_stats(prior, list(subjects[0][1].labels), "distance_mm")}}
    table = format_metric_tables(stats, baseline)
    result = {"env": cfg.env_name, "learner": cfg.train.learner, "stats": stats,
              "episodes": int(np.asarray(next(iter(first["metrics"].values()))).shape[0]),
              "eval_s": eval_s / cfg.train.seeds, "seconds_per_subject": eval_s / cfg.train.seeds / len(subjects), "table": table}
    if baseline:
        result["baselines"] = baseline
        result["template_prior"] = baseline["template prior"]["distance_mm"]
    if cfg.train.hparams:
        result["hparams"] = cfg.train.hparam_rows()
    if cfg.train.seeds > 1:
        result["per_seed"] = per_seed
        result["seeds"] = seed_summary(per_seed)
        result["table"] = table = table + "\n\n" + result["seeds"]["table"]
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)  # `jaxmed evaluate RUN --out NEW_DIR`
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
        (run_dir / "eval.md").write_text(table + "\n")
        write_episode_rows(run_dir / "eval_episodes.csv", episode_rows(env, states, seed_metrics))
        if draws_paths:
            plot_trajectories(env, bank, first["record"], np.asarray(first["final_state"].volume), run_dir / "trajectories.png")
    return result


def episode_rows(env, states, seed_metrics) -> list[dict]:
    """One row per evaluation episode and seed: ``seed``, ``episode`` (its index in ``states``),
    ``subject`` (the bank volume it ran on, i.e. the held-out subject's index, for states that carry
    one) and ``"<metric> <label>"`` for every metric of the rollout and every distinct
    :attr:`~jaxmed.envs.base.Environment.metric_labels` entry (agents sharing a label, e.g. several
    agents per landmark, are averaged). ``seed_metrics``: per seed, ``{metric: (E, A) array}``."""
    labels = tuple(env.metric_labels)
    columns = {label: [i for i, l in enumerate(labels) if l == label] for label in dict.fromkeys(labels)}
    volume = getattr(states, "volume", None)
    subject = None if volume is None else np.asarray(volume).reshape(-1)
    rows = []
    for seed, metrics in enumerate(seed_metrics):
        values = {m: np.asarray(v, np.float64).reshape(np.shape(v)[0], -1) for m, v in metrics.items()}
        n_episodes = len(next(iter(values.values())))
        for e in range(n_episodes):
            row = {"seed": seed, "episode": e}
            if subject is not None and len(subject) == n_episodes:
                row["subject"] = int(subject[e])
            for m, v in values.items():
                if v.shape[1] == len(labels):
                    row.update({f"{m} {label}": float(v[e, idx].mean()) for label, idx in columns.items()})
                else:  # a metric that is not per agent
                    row.update({f"{m} {j}" if v.shape[1] > 1 else m: float(v[e, j]) for j in range(v.shape[1])})
            rows.append(row)
    return rows


def write_episode_rows(path: Path, rows: list[dict]) -> Path:
    """:func:`episode_rows` as CSV, written atomically (:func:`jaxmed.data.fetch.write_atomic`)."""
    from jaxmed.data.fetch import write_atomic

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["seed", "episode"])
    writer.writeheader()
    writer.writerows(rows)
    return write_atomic(path, lambda f: f.write(buf.getvalue().encode()))


def plot_trajectories(env, bank, path_vox, volumes, path: Path) -> Path:
    """Draw the first episode on the first evaluated volume: each agent's path (``path_vox``, what
    :meth:`~jaxmed.envs.base.Environment.trajectory_of` recorded, ``(T + 1, E, A, 3)`` level-0 voxels)
    and its target landmark (:attr:`~jaxmed.envs.base.Environment.landmark_targets`) on orthogonal
    slices of that volume, written to ``path`` (PNG)."""
    from jaxmed.envs.viewer import bank_volume, render_episode, trajectory_world

    v = int(volumes[0])
    episode = int(np.flatnonzero(np.asarray(volumes) == v)[0])
    world = trajectory_world(bank, v, np.asarray(path_vox)[:, episode])  # (A, T+1, 3) mm
    targets = np.asarray(bank.landmarks_world[v])[[bank.label_index(t) for t in env.landmark_targets]]
    return render_episode(bank_volume(bank, v), world, targets, path, overwrite=True)


def evaluate_extra_sets(exp: ex.Experiment, net_params, run_dir) -> dict:
    """After training a landmark run: its detector (seed 0; the run's ``eval`` settings) on the
    held-out synthetic subjects and every ``eval.extra_sets`` spec, each beside the template-prior
    and registration baselines (``eval_<set>.md`` / ``.csv`` in ``run_dir``). A set that cannot be
    had here (e.g. not fetched) is reported and skipped; the trained run stands. Returns
    ``{"sets": [summary rows], "sets_table": markdown, "sets_skipped": [...]}``."""
    from jaxmed.detect import LandmarkDetector
    from jaxmed.evaluation import evaluate_sets, summary_table

    cfg = exp.cfg
    detector = LandmarkDetector(cfg, exp.network, seed_params(cfg, net_params, 0), n_starts=cfg.eval_starts,
                                seed=cfg.train.seed, where=str(run_dir), experiment=exp)
    results, skipped = [], []
    for spec in ["test", *cfg.eval.extra_sets]:
        try:
            results += evaluate_sets(detector, [spec], out_dir=run_dir, overwrite=True, registration=cfg.eval.registration,
                                     progress=lambda m: print(m, file=sys.stderr, flush=True))
        except JaxmedError as err:
            print(f"eval.extra_sets: {spec} not evaluated: {err}", file=sys.stderr)
            skipped.append({"set": spec, "error": str(err)})
    return {"sets": [r.summary_row() for r in results], "sets_table": summary_table(results), "sets_skipped": skipped}
