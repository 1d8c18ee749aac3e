"""``jaxmed sweep CONFIG.yaml --space SPACE.yaml [--out DIR] [--method M] [--resume] [--devices N] [--distributed]``:
hyperparameter search; ``--method controller`` searches architectures with an RL controller
(:mod:`jaxmed.sweep.controller`), ``--method random`` samples them uniformly at the same budget.

A population of trials trains inside one jitted, vmapped program per compiled group, its trials
sharded over the devices; successive halving (or Hyperband brackets) stops the worse trials at
every rung and the rest continue from their state. See :mod:`jaxmed.sweep.space` for the space file
and :mod:`jaxmed.sweep.runner` for the output directory (``results.csv`` / ``results.md``,
``best.yaml``, ``curves.png``).

Multi-host: start the same command in one process per host with ``--distributed`` and the
``JAXMED_COORDINATOR`` / ``JAXMED_NUM_PROCESSES`` / ``JAXMED_PROCESS_ID`` variables (or under
SLURM / Open MPI, which JAX detects); see :func:`jaxmed.agents.distributed.initialize`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxmed.commands import add_config_args
from jaxmed.errors import ConfigError


def _run(args) -> int:
    if args.distributed:  # before anything touches a JAX backend
        from jaxmed.agents.distributed import initialize

        initialize()
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.sweep import Space, run_sweep
    from jaxmed.sweep.cluster import is_main

    base = apply_overrides(load_yaml(args.config), args.overrides)
    out = Path(args.out) if args.out else Path("sweeps") / Path(args.config).stem
    if args.method in ("controller", "random"):
        return _run_controller(args, base, out)
    space_data = load_yaml(args.space)
    if isinstance(space_data, dict) and "controller" in space_data:
        raise ConfigError(f"{args.space}: a controller: section needs --method controller (or random)")
    if args.method is not None and isinstance(space_data, dict):
        space_data = {**space_data, "method": args.method}
    space = Space.from_dict(space_data, args.space)
    summary = run_sweep(base, space, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                        devices=args.devices)
    if not is_main():
        return 0
    print((out / "results.md").read_text())
    if "best_trial" in summary:
        print(f"best trial {summary['best_trial']}: {summary['metric']} ({summary['split']}) = {summary['best_metric']:.4g} "
              f"with {summary['best_values']}")
    if summary.get("default_metric") is not None:
        print(f"default config (trial 0): {summary['metric']} = {summary['default_metric']:.4g}")
    print(f"{summary['trials']} trials, {summary['env_steps']:,} env steps in {summary['wall_s']:.0f} s; "
          f"train the best config with: jaxmed train {out / 'best.yaml'}")
    return 0


def _run_controller(args, base: dict, out: Path) -> int:
    """``--method controller`` / ``random``: architecture search (:mod:`jaxmed.sweep.controller`)."""
    import dataclasses

    from jaxmed.config import load_yaml
    from jaxmed.sweep import Space
    from jaxmed.sweep.controller import run_controller_sweep, split_space

    if args.resume:
        raise ConfigError("--resume is not supported with --method controller / random (each round updates the controller)")
    space_data, settings = split_space(load_yaml(args.space), args.space)
    if args.method == "random":
        settings = dataclasses.replace(settings, policy="random")
    summary = run_controller_sweep(base, Space.from_dict(space_data, args.space), settings, out, overwrite=args.overwrite,
                                   progress=not args.quiet, devices=args.devices)
    print((out / "results.md").read_text())
    if "best_child" in summary:
        print(f"best child {summary['best_child']}: {summary['metric']} (val) = {summary['best_metric']:.4g} with {summary['best_values']}")
    print(f"{summary['children']} children, {summary['env_steps']:,} env steps in {summary['wall_s']:.0f} s; "
          f"train the best config with: jaxmed train {out / 'best.yaml'}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("sweep", help="hyperparameter search: vmapped trial populations + successive halving / Hyperband")
    add_config_args(p, "base experiment YAML (see configs/)", "section.key=value overrides of the base config")
    p.add_argument("--space", required=True, help="search space YAML (see configs/sweeps/)")
    p.add_argument("--out", help="output directory (default: sweeps/CONFIG_NAME)")
    p.add_argument("--method", choices=("halving", "hyperband", "controller", "random"),
                   help="halving / hyperband: override the space file's method; controller: architecture search with an "
                        "RL controller (REINFORCE, the space file's controller: section); random: the same budget, "
                        "uniformly sampled architectures")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out from its last completed rung")
    p.add_argument("--overwrite", action="store_true", help="replace an existing sweep directory")
    p.add_argument("--quiet", action="store_true", help="no per-trial progress lines")
    p.add_argument("--devices", type=int, help="shard the trials over the first N devices (default: all devices of all processes)")
    p.add_argument("--distributed", action="store_true",
                   help="join a jax.distributed cluster first (one process per host; JAXMED_COORDINATOR, "
                        "JAXMED_NUM_PROCESSES, JAXMED_PROCESS_ID or SLURM / Open MPI)")
    p.set_defaults(func=_run)
    return p
