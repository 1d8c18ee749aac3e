"""``jaxmed evaluate RUN_DIR [--data SPEC ...] [--out DIR] [--starts N]``: evaluate a trained run.

Without ``--data``: the run's synthetic held-out subjects, every env's own metrics (``eval.md``; per
episode, with its subject, ``eval_episodes.csv``),
plus the sets listed in the run's ``eval.extra_sets``. With ``--data`` (landmark runs): any labelled
set (``colin27``, ``mni-t2w``, ``test`` for the run's own held-out subjects, a folder of scans with
landmark files, a manifest, a data YAML); per landmark the agents' errors beside the template prior
and the affine registration baseline on the same subjects, written to ``eval_<name>.md`` and
``eval_<name>.csv`` (per subject) in the run directory or ``--out``; box and corner-pair runs: IoU,
centre error and wall distance beside the start boxes, the template box and the registration
baseline (:mod:`jaxmed.box_evaluation`; ``eval_<name>.md`` / ``.json``); registration runs: the run's
template registered to every subject under ``--poses`` known rigid poses, TRE and the error to the
best rigid fit on the landmarks they share, beside the identity and the optax baselines
(:mod:`jaxmed.registration_evaluation`; ``eval_<name>.md`` / ``.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from jaxmed.commands import add_detection_options, detection_options


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def evaluate_landmark_sets(run_dir, specs, *, out_dir=None, overwrite=False, registration=True, seeds=False,
                           **options) -> list:
    """Evaluate a landmark run directory on each ``--data`` spec; returns the results (seed 0, or
    every seed of a multi-seed run with ``seeds``) and prints their tables and a summary
    (``options``: :class:`jaxmed.detect.LandmarkDetector`'s keywords, e.g. ``n_starts``, ``aggregate``,
    ``shape``, ``intensity_scales``; each defaults to the run's own)."""
    from jaxmed.detect import LandmarkDetector
    from jaxmed.evaluation import evaluate_sets, summary_table
    from jaxmed.runs import load_run, seed_params

    exp, params = load_run(run_dir)
    cfg = exp.cfg
    out = Path(out_dir) if out_dir else Path(run_dir)
    members = range(cfg.train.seeds) if seeds else [0]
    results = []
    for seed in members:
        detector = LandmarkDetector(cfg, exp.network, seed_params(cfg, params, seed), seed=cfg.train.seed, where=str(run_dir),
                                    experiment=exp, **options)
        target = out / f"seed{seed}" if seeds and cfg.train.seeds > 1 else out
        res = evaluate_sets(detector, specs, out_dir=target, overwrite=overwrite, registration=registration, progress=_progress)
        for r in res:
            print(r.table())
        print(summary_table(res) + "\n")
        print(f"written to {target}/ (eval_<set>.md, eval_<set>.csv)")
        results.extend(res)
    return results


def _run(args) -> int:
    from jaxmed.envs.registry import with_level_step_limit
    from jaxmed.run_evaluation import evaluate_run
    from jaxmed.runs import load_run

    if args.data:
        from jaxmed.box_evaluation import evaluate_box_sets, is_box_run

        if is_box_run(args.run_dir):  # box / corner-pair runs: IoU and centre error beside box baselines
            for r in evaluate_box_sets(args.run_dir, args.data, out_dir=args.out, overwrite=args.overwrite,
                                       registration=not args.no_registration, seeds=args.seeds, progress=_progress):
                print(r["table"])
            return 0
        from jaxmed.registration_evaluation import evaluate_registration_sets, is_registration_run

        if is_registration_run(args.run_dir):  # the run's template registered to each subject under known poses
            for r in evaluate_registration_sets(args.run_dir, args.data, out_dir=args.out, overwrite=args.overwrite,
                                                n_poses=args.poses, registration=not args.no_registration, seeds=args.seeds,
                                                intensity_scales=args.intensity_scales, starts=args.starts or 1,
                                                progress=_progress):
                print(r["table"])
            return 0
        evaluate_landmark_sets(args.run_dir, args.data, out_dir=args.out, overwrite=args.overwrite,
                               registration=not args.no_registration, seeds=args.seeds, n_starts=args.starts,
                               aggregate=args.aggregate, shape=args.shape, **detection_options(args))
        return 0
    exp, params = load_run(args.run_dir)
    cfg = exp.cfg
    if args.n_test:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_test=args.n_test))
    if args.level_step_limit is not None:
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, level_step_limit=args.level_step_limit))
    exp = dataclasses.replace(exp, cfg=cfg, eval_params=with_level_step_limit(exp.eval_params, args.level_step_limit,
                                                                              "eval.level_step_limit"))
    ev = evaluate_run(exp, params, args.out or args.run_dir)
    print(ev["table"])
    if cfg.eval.extra_sets:
        evaluate_landmark_sets(args.run_dir, ["test", *cfg.eval.extra_sets], out_dir=args.out, overwrite=args.overwrite,
                               registration=cfg.eval.registration and not args.no_registration, n_starts=args.starts,
                               aggregate=args.aggregate, **detection_options(args))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    e = subparsers.add_parser("evaluate", help="evaluate a trained run on held-out subjects or any labelled set (--data)")
    e.add_argument("run_dir")
    e.add_argument("--data", nargs="+", metavar="SPEC",
                   help="labelled set(s): colin27, mni-t2w, test (the run's held-out subjects), a folder, a manifest .csv/.tsv "
                        "or a data .yaml")
    e.add_argument("--out", help="output directory for eval_<set>.md / .csv (default: the run directory)")
    e.add_argument("--starts", type=int, help="start points per agent and subject (default: the run's env.eval_starts; "
                                               "registration runs: episodes per intensity copy and pair, pooled, default 1)")
    e.add_argument("--aggregate", default="median", help="how a landmark's end points are combined (median, mean, trimmed, geomedian)")
    e.add_argument("--shape", choices=("none", "affine"), default="none",
                   help="with --data: shape-check each subject's answers against the template's landmark configuration "
                        "(jaxmed detect --shape)")
    add_detection_options(e)
    e.add_argument("--no-registration", action="store_true", help="skip the affine registration baseline (slow on large sets)")
    e.add_argument("--seeds", action="store_true", help="evaluate every seed of a multi-seed run (default: seed 0)")
    e.add_argument("--overwrite", action="store_true", help="replace existing eval_<set> files")
    e.add_argument("--n-test", type=int, help="number of held-out subjects (default: the run's data.n_test)")
    e.add_argument("--poses", type=int, default=4,
                   help="registration runs with --data: known rigid poses per subject (default %(default)s)")
    e.set_defaults(func=_run)
    return e
