"""``jaxmed bench [GRID.yaml] [--n-envs 16 64] [--devices 1 2 4] ...``: a scaling study.

Measures every point of the grid in its own subprocess (fake CPU devices for the device axis) and
writes the JSON after every point, then a PNG of the throughput curves with ideal-scaling lines and
a Markdown table; see :mod:`jaxmed.bench` for the grid file and the units.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _run(args) -> int:
    from jaxmed.bench import grid_from_args, markdown, run_grid

    grid = grid_from_args(args)
    result = run_grid(grid, args.out, in_process=args.in_process, timeout_s=args.timeout, progress=not args.quiet)
    print()
    print(markdown(result))
    print(f"\nwrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="scaling study over agents, devices, crop size, dtype, trunk, learner")
    p.add_argument("grid", nargs="?", help="grid YAML (see jaxmed/bench.py); the options below replace its axes")
    p.add_argument("--config", help="base experiment YAML (default: the grid's, else configs/phantom_dqn.yaml)")
    p.add_argument("--override", dest="overrides", action="append", default=[], help="section.key=value for the base config (repeatable)")
    p.add_argument("--n-envs", dest="n_envs", type=int, nargs="+", help="parallel environments per device")
    p.add_argument("--devices", type=int, nargs="+", help="data-parallel devices (fake CPU devices on CPU)")
    p.add_argument("--agents", type=int, nargs="+", help="agents per environment (the template's first K landmarks)")
    p.add_argument("--crop-size", dest="crop_size", type=int, nargs="+")
    p.add_argument("--dtype", nargs="+", help="bank storage dtype (uint8, float16, float32)")
    p.add_argument("--trunk", nargs="+", help="network trunk (patch, strided, network3d)")
    p.add_argument("--learner", nargs="+", help="dqn, a2c, ppo, grpo")
    p.add_argument("--chunks", type=int, help="timed training chunks per point (default 3)")
    p.add_argument("--env-steps", dest="env_steps", type=int, help="steps of the timed environment rollout (default 50)")
    p.add_argument("--out", default="benchmarks/results/bench.json", help="result JSON (PNG beside it; default %(default)s)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per grid point (default %(default)s)")
    p.add_argument("--in-process", action="store_true", help="measure in this process (no device axis > visible devices)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_run)
    return p
