"""``jaxmed bench [GRID.yaml] [--n-envs 16 64] [--devices 1 2 4] [--processes 1 2] ...``: a scaling study.

Measures every point of the grid in its own subprocess (fake CPU devices for the device axis; a
local ``jax.distributed`` cluster of that many processes for the processes axis) and writes the JSON
after every point, then a PNG of the throughput curves with ideal-scaling lines and a Markdown
table; see :mod:`jaxmed.bench` for the grid file, the units and the multi-host launch
(``--cluster``: one process per host, the same command everywhere, ``JAXMED_*`` variables set).
Ready-made grids: ``benchmarks/grids/*.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _run(args) -> int:
    from jaxmed.bench import grid_from_args, markdown, plot, run_grid

    if args.replot:
        import json

        result = json.loads(Path(args.replot).read_text())
        plot(result, Path(args.replot).with_suffix(".png"))
        print(markdown(result))
        return 0
    grid = grid_from_args(args)
    result = run_grid(grid, args.out, in_process=args.in_process, cluster=args.cluster, timeout_s=args.timeout,
                      progress=not args.quiet)
    if not args.cluster or _is_process_zero():
        print()
        print(markdown(result))
        print(f"\nwrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def _is_process_zero() -> bool:
    import jax

    return jax.process_index() == 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="scaling study over configs, learners, envs, devices, processes, agents, crop, dtype, trunk")
    add_arguments(p)
    p.set_defaults(func=_run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``jaxmed bench`` (also used by the thin wrapper scripts in ``benchmarks/``)."""
    p.add_argument("grid", nargs="?", help="grid YAML (see jaxmed/bench/__init__.py); the options below replace its axes")
    p.add_argument("--config", help="base experiment YAML (default: the grid's, else configs/phantom_dqn.yaml)")
    p.add_argument("--configs", nargs="+", help="config axis: several experiment YAMLs (e.g. one per environment)")
    p.add_argument("--variant", nargs="+", help="variant axis: names of the grid's override sets")
    p.add_argument("--override", dest="overrides", action="append", default=[], help="section.key=value for the base config (repeatable)")
    p.add_argument("--n-envs", dest="n_envs", type=int, nargs="+", help="parallel environments per device")
    p.add_argument("--devices", type=int, nargs="+", help="data-parallel devices per process (fake CPU devices on CPU)")
    p.add_argument("--processes", type=int, nargs="+", help="local jax.distributed processes per point (DQN; CPU)")
    p.add_argument("--agents", type=int, nargs="+", help="agents per environment (the template's first K landmarks)")
    p.add_argument("--crop-size", dest="crop_size", type=int, nargs="+")
    p.add_argument("--dtype", nargs="+", help="bank storage dtype (uint8, float16, float32)")
    p.add_argument("--trunk", nargs="+", help="network trunk (patch, strided, network3d)")
    p.add_argument("--learner", nargs="+", help="dqn, a2c, ppo, grpo")
    p.add_argument("--measure", nargs="+", choices=["env", "train"], help="what to time (default: the grid's, else both)")
    p.add_argument("--chunks", type=int, help="timed training chunks per point (default 3)")
    p.add_argument("--env-steps", dest="env_steps", type=int, help="steps per timed environment rollout call (default 50)")
    p.add_argument("--min-time", dest="min_time", type=float, help="seconds of repeated rollout calls per point (default 0: one)")
    p.add_argument("--out", default="benchmarks/results/bench.json", help="result JSON (PNG beside it; default %(default)s)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per grid point (default %(default)s)")
    p.add_argument("--in-process", action="store_true", help="measure in this process (no device axis > visible devices)")
    p.add_argument("--cluster", action="store_true",
                   help="this process is one host of a multi-host cluster (JAXMED_COORDINATOR / JAXMED_NUM_PROCESSES / "
                        "JAXMED_PROCESS_ID or SLURM/MPI): run the same command on every host; process 0 writes the results")
    p.add_argument("--replot", help="only redraw the PNG and reprint the table of this result JSON")
    p.add_argument("--quiet", action="store_true")


def main(argv=None, **defaults) -> int:
    """Run ``jaxmed bench`` with ``argv`` (the wrapper scripts pass their grid file; ``defaults``
    replace option defaults, e.g. ``out=...``)."""
    p = argparse.ArgumentParser(prog="jaxmed bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(**defaults)
    return _run(p.parse_args(argv))
