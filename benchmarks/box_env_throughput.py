"""Box environment throughput under a random policy: a thin wrapper over ``jaxmed bench``.

Runs the grid ``benchmarks/grids/box_env.yaml`` (equivalent:
``jaxmed bench benchmarks/grids/box_env.yaml --out benchmarks/results/bench_box_env.json``): for 1 ...
4096 parallel environments on one device, agent-steps/s of ``jit(shard_map(lax.scan(vmap(env.step))))``
with uniformly random actions (auto-reset included, reset and compilation excluded) of

* the box env of ``configs/afids_box_dqn_cpu.yaml`` (one agent, ``15^3`` trilinear samples from the
  packed pyramid, 1 frame, 3 levels) and the same with a ``30^3`` grid and 2 frames
  (``benchmarks/grids/configs/box_g30_k2.yaml``),
* the corner-pair env of ``configs/afids_corner_pair_cpu.yaml`` (two agents, ``15^3`` crops, 2 frames).

Each point runs in a fresh process; the JSON is rewritten after every point. The view-plane and
registration envs are in ``benchmarks/grids/env_kinds.yaml``. Every ``jaxmed bench`` option applies
(``--n-envs 1 16`` for a quick run, ``--out``, ``--replot``). ``benchmarks/results/box_env_throughput.json``
(quoted in BENCHMARKS.md) came from the earlier stand-alone version of this script, which also timed the
box env on a bank without the packed pyramid (3x the gathers).

Usage::

    python benchmarks/box_env_throughput.py [--n-envs 1 16 256] [--out benchmarks/results/bench_box_env.json]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_grid_script  # noqa: E402


def main(argv=None) -> int:
    return run_grid_script("box_env.yaml", "bench_box_env.json", argv)


if __name__ == "__main__":
    sys.exit(main())
