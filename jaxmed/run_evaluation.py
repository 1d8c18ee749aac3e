"""Evaluation of a trained run, from its built :class:`~jaxmed.experiment.Experiment`.

:func:`evaluate_run`: greedy rollouts from the env's fixed evaluation starts on the run's held-out
subjects, per-agent metrics per label, the template prior beside them for envs whose agents answer
landmarks, ``eval.json`` / ``eval.md`` / ``eval_episodes.csv`` (:func:`~jaxmed.envs.metrics.episode_rows`: which held-out
subject and start each episode had, and how it ended) / ``trajectories.png``. :func:`evaluate_extra_sets`: a landmark
run's detector on the held-out subjects and every ``eval.extra_sets`` spec, with the template-prior
and registration baselines. Both take the experiment the run was built from (``jaxmed train``) or
one built without data for a saved run (``jaxmed evaluate``): nothing is built again from the config.

What is specific to an env comes from the env's hooks: :attr:`~jaxmed.envs.base.Environment.landmark_targets`
(which agents answer landmarks), :meth:`~jaxmed.envs.base.Environment.metric_stats` (table rows) and
:meth:`~jaxmed.envs.base.Environment.trajectory_of` (what the trajectory figure draws).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxmed import experiment as ex
from jaxmed.agents.core import member_params
from jaxmed.agents.hparams import member_rows
from jaxmed.agents.learners import policy_rollout
from jaxmed.data import run_data
from jaxmed.data.fetch import write_atomic
from jaxmed.envs.metrics import episode_csv, episode_rows
from jaxmed.errors import JaxmedError


def evaluate_run(exp: ex.Experiment, net_params, run_dir: str | Path | None = None) -> dict:
    """Greedy agents from the env's fixed evaluation starts (``env.eval_starts`` per subject) on the
    run's ``data.n_test`` held-out subjects: per-agent metrics (mm, degrees, IoU, ...) per label, beside
    the template prior for envs with :attr:`~jaxmed.envs.base.Environment.landmark_targets`. A
    multi-seed run (``net_params`` with a leading seed axis) is evaluated per seed and summarised as
    mean ± std across seeds; seconds are per seed, without compilation.

    Writes ``eval.json``, ``eval.md``, ``eval_episodes.csv`` (one row per episode and seed:
    :func:`~jaxmed.envs.metrics.episode_rows`) and, for landmark envs, ``trajectories.png`` (the first test subject's first
    episode) into ``run_dir`` when given. Returns the result dict (``stats``,
    ``table``, ``episodes``, ``eval_s``, ``seconds_per_subject``, ``template_prior``, ``per_seed``,
    ...)."""
    from jaxmed.evaluation import format_metric_tables, metric_stats, seed_summary

    cfg, env, eval_params = exp.cfg, exp.env, exp.eval_params
    bank, subjects = exp.held_out()
    baseline = None
    reference = run_data.template(cfg.data) if env.landmark_targets else None  # the template prior
    if reference is not None:
        _, tpl_landmarks = reference
        prior = np.stack([np.linalg.norm(lm.positions - tpl_landmarks.select(lm.labels).positions, axis=1) for _, lm in subjects])
        baseline = {"template prior": {"distance_mm": metric_stats(prior, list(subjects[0][1].labels), "distance_mm")}}
    states = env.eval_states(eval_params, bank, cfg.eval_starts, seed=cfg.train.seed)
    draws_paths = bool(env.landmark_targets)
    rollout = policy_rollout(cfg.train.learner, exp.network, env, eval_params, record=env.trajectory_of if draws_paths else None)
    per_seed, eval_s, first, seed_metrics = [], 0.0, None, []
    for seed in range(cfg.train.seeds):
        args = (member_params(net_params, cfg.train.seeds, seed), bank, states)
        compiled = rollout.lower(*args).compile()
        t0 = time.perf_counter()  # timed without compilation
        out = jax.block_until_ready(compiled(*args))
        eval_s += time.perf_counter() - t0
        first = out if first is None else first
        per_seed.append({m: env.metric_stats(states, v, m) for m, v in out["metrics"].items()})
        seed_metrics.append(jax.device_get(out["metrics"]))
    stats = per_seed[0]
    table = format_metric_tables(stats, baseline)
    result = {"env": cfg.env_name, "learner": cfg.train.learner, "stats": stats,
              "episodes": int(np.asarray(next(iter(first["metrics"].values()))).shape[0]),
              "eval_s": eval_s / cfg.train.seeds, "seconds_per_subject": eval_s / cfg.train.seeds / len(subjects), "table": table}
    if baseline:
        result["baselines"] = baseline
        result["template_prior"] = baseline["template prior"]["distance_mm"]
    if cfg.train.hparams:
        result["hparams"] = member_rows(cfg.train.hparams, cfg.train.seeds)
    if cfg.train.seeds > 1:
        result["per_seed"] = per_seed
        result["seeds"] = seed_summary(per_seed)
        result["table"] = table = table + "\n\n" + result["seeds"]["table"]
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)  # `jaxmed evaluate RUN --out NEW_DIR`
        (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
        (run_dir / "eval.md").write_text(table + "\n")
        rows = episode_csv(episode_rows(env, states, seed_metrics))
        if draws_paths:
            from jaxmed.envs.viewer import plot_first_episode

            plot_first_episode(env.landmark_targets, bank, first["record"], np.asarray(first["final_state"].volume),
                               run_dir / "trajectories.png")
        write_atomic(run_dir / "eval_episodes.csv", lambda f: f.write(rows.encode()))
    return result


def evaluate_extra_sets(exp: ex.Experiment, net_params, run_dir) -> dict:
    """After training a landmark run: its detector (seed 0; the run's ``eval`` settings) on the
    held-out synthetic subjects and every ``eval.extra_sets`` spec, each beside the template-prior
    and registration baselines (``eval_<set>.md`` / ``.csv`` in ``run_dir``). A set that cannot be
    had here (e.g. not fetched) is reported and skipped; the trained run stands. Returns
    ``{"sets": [summary rows], "sets_table": markdown, "sets_skipped": [...]}``."""
    from jaxmed.detect import LandmarkDetector
    from jaxmed.evaluation import evaluate_sets, summary_table

    cfg = exp.cfg
    detector = LandmarkDetector(cfg, exp.network, member_params(net_params, cfg.train.seeds, 0), n_starts=cfg.eval_starts,
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
