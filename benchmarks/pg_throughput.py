"""PPO training throughput against parallel environments: a thin wrapper over ``jaxmed bench``.

Runs the grid ``benchmarks/grids/ppo_n_envs.yaml`` (equivalent:
``jaxmed bench benchmarks/grids/ppo_n_envs.yaml --out benchmarks/results/bench_ppo_n_envs.json``): for
n = 1, 4, 16, ..., 4096 parallel environments on one device, the environment steps/s of the whole PPO
training program (``run_chunk`` of :func:`jaxmed.agents.ppo.make_train`, one iteration = a 32-step
rollout + GAE + 4 epochs of 4 minibatches, on AFIDs AC + PC with the multi-scale patch-trunk
actor-critic of ``configs/afids_ppo_cpu.yaml``), its compile time, and the environments alone under a
random policy. Each point runs in a fresh process; the JSON is rewritten after every point.

Every ``jaxmed bench`` option applies (``--n-envs 1 16 256`` for a quick run, ``--out``, ``--replot``).
``benchmarks/results/pg_throughput.json`` (quoted in BENCHMARKS.md) came from the earlier stand-alone
version of this script, which also timed the rollout alone to split an iteration into rollout and update.

Usage::

    python benchmarks/pg_throughput.py [--n-envs 1 16 256] [--out benchmarks/results/bench_ppo_n_envs.json]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_grid_script  # noqa: E402


def main(argv=None) -> int:
    return run_grid_script("ppo_n_envs.yaml", "bench_ppo_n_envs.json", argv)


if __name__ == "__main__":
    sys.exit(main())
