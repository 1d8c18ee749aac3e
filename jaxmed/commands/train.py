"""``jaxmed train CONFIG.yaml [section.key=value ...]``: train any learner on any env (see configs/),
then evaluate on the held-out subjects."""

from __future__ import annotations

import argparse
import dataclasses

from jaxmed import commands


def load_config(config: str, overrides: list[str]):
    """The :class:`~jaxmed.experiment.ExperimentConfig` of a YAML file with ``section.key=value`` overrides."""
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.experiment import ExperimentConfig

    return ExperimentConfig.from_dict(apply_overrides(load_yaml(config), overrides), config)


def _run(args) -> int:
    from jaxmed.train import device_description, run_training

    run_dir = commands.run_dir(args)
    cfg = load_config(args.config, args.overrides)
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=args.seeds))
    print(f"device: {device_description()}", flush=True)
    summary = run_training(cfg, run_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, evaluate=not args.no_eval)
    if "evaluation" in summary:
        ev = summary["evaluation"]
        print(f"\nheld-out test subjects: {cfg.data.n_test}, episodes: {ev['episodes']}, "
              f"{ev['seconds_per_subject']:.2f} s per subject for all agents")
        print(ev["table"])
        if "sets_table" in ev:
            print("\nper subject (each landmark's answer from all agents and starts) beside the baselines:\n" + ev["sets_table"])
    print(f"\ntrained {summary['env_steps']:,} env steps in {summary['train_wall_s']:.0f} s; run directory: {run_dir}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    t = subparsers.add_parser("train", help="train any learner on any env from a YAML config (see configs/)")
    commands.add_config_args(t, "experiment YAML (see configs/)", "section.key=value overrides, e.g. dqn.learning_rate=3e-4")
    commands.add_run_args(t, "output directory (default: runs/CONFIG_NAME)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    t.add_argument("--seeds", type=int, help="train this many seeds at once in one compiled program (train.seeds); "
                   "the evaluation reports mean ± std across seeds")
    t.set_defaults(func=_run)
    return t
