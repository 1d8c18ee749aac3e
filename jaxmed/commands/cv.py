"""``jaxmed cv CONFIG.yaml [section.key=value ...] [--folds K] [--run-dir D]``: K-fold cross-validation
of a run on your own labelled scans (``data.source: files``).

Fold ``k`` is a normal run directory ``D/fold<k>`` trained with ``data.fold: [k, K]`` (its test
split: the subjects of fold ``k``; training: the others) and evaluated on its test subjects beside the
template prior and the affine registration baseline (``eval_test.md`` / ``.csv``). The per-subject
results of all folds are pooled into ``D/cv_subjects.csv`` (a ``fold`` column added) and ``D/cv.md``.
Resumable: a fold with its ``eval_test.csv`` is skipped, a fold that stopped during training is resumed
from its last checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from jaxmed import commands


def run_cv(config: str, overrides: list[str], folds: int, run_dir: Path, *, progress: bool = True, registration: bool = True) -> dict:
    """Train and evaluate every fold (skipping finished ones), pool the per-subject results; returns
    ``{"folds": [fold dirs], "rows": pooled rows, "table": markdown}``."""
    from jaxmed.commands.evaluate import evaluate_landmark_sets
    from jaxmed.commands.train import load_config
    from jaxmed.data.fetch import write_atomic
    from jaxmed.errors import ConfigError
    from jaxmed.evaluation import CSV_FIELDS, pooled_table
    from jaxmed.train import run_training

    if folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {folds}")
    base = load_config(config, overrides)
    if base.data.source != "files":
        raise ConfigError(f"{config}: cross-validation needs data.source: files (your own subjects), not {base.data.source!r}")
    from jaxmed.experiment import make_env

    if not make_env(base)[0].landmark_targets:
        raise ConfigError(f"{config}: cross-validation evaluates landmark runs; {base.env_name} agents do not answer landmarks")
    dirs, rows = [], []
    for k in range(folds):
        cfg = load_config(config, [*overrides, f"data.fold=[{k}, {folds}]"])
        fold_dir = run_dir / f"fold{k}"
        dirs.append(fold_dir)
        result_csv = fold_dir / "eval_test.csv"
        if result_csv.exists():
            print(f"fold {k}/{folds}: done, skipped ({result_csv})")
        else:
            resume = (fold_dir / "checkpoints").is_dir() and any((fold_dir / "checkpoints").iterdir())
            print(f"fold {k}/{folds}: {'resuming' if resume else 'training'} in {fold_dir}")
            run_training(cfg, fold_dir, resume=resume, overwrite=False, progress=progress, evaluate=False)
            evaluate_landmark_sets(fold_dir, ["test"], out_dir=fold_dir, overwrite=True, registration=registration)
        with open(result_csv, newline="") as f:
            rows.extend({"fold": str(k), **r} for r in csv.DictReader(f))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["fold", *CSV_FIELDS])
    w.writeheader()
    w.writerows(rows)
    write_atomic(run_dir / "cv_subjects.csv", lambda f: f.write(buf.getvalue().encode()))
    table = pooled_table(rows, f"{folds}-fold cross-validation of {Path(config).name}")
    write_atomic(run_dir / "cv.md", lambda f: f.write(table.encode()))
    return {"folds": dirs, "rows": rows, "table": table}


def _run(args) -> int:
    run_dir = commands.run_dir(args, f"_cv{args.folds}")
    res = run_cv(args.config, args.overrides, args.folds, run_dir, progress=not args.quiet, registration=not args.no_registration)
    print("\n" + res["table"])
    print(f"pooled results: {run_dir / 'cv.md'}, {run_dir / 'cv_subjects.csv'}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("cv", help="K-fold cross-validation on your own labelled scans (data.source: files)")
    commands.add_config_args(p, "experiment YAML with data.source: files", "section.key=value overrides")
    p.add_argument("--folds", type=int, default=5, help="number of folds K (default %(default)s)")
    commands.add_run_args(p, "output directory (default: runs/CONFIG_NAME_cvK); fold k in D/fold<k>")
    p.add_argument("--no-registration", action="store_true", help="skip the affine registration baseline")
    p.set_defaults(func=_run)
    return p
