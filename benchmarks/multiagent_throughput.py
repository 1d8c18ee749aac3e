"""Multi-agent DQN training throughput: a thin wrapper over ``jaxmed bench``.

Runs the grid ``benchmarks/grids/multiagent.yaml`` (equivalent:
``jaxmed bench benchmarks/grids/multiagent.yaml --out benchmarks/results/bench_multiagent.json``): agents
per image (2, 4, 8 AFIDs landmarks) x parallel images (16, 64, 256) x the three Collab-DQN network
variants (independent trunks, one shared trunk, shared trunk + CommNet); per point the whole jitted DQN
training program after learning has started (env-steps/s = steps of one image with all its agents;
agent-steps/s = that x agents) and updates/s, and the environment alone under a random policy
(agent-steps/s). Each point runs in a fresh process; the JSON is rewritten after every point.

Every ``jaxmed bench`` option applies (``--agents 2 4 --n-envs 16`` for a quick run, ``--out``,
``--replot``). ``benchmarks/results/multiagent_throughput_*.json[l]`` (quoted in BENCHMARKS.md) came
from the earlier stand-alone version of this script.

Usage::

    python benchmarks/multiagent_throughput.py [--agents 2 4 8] [--n-envs 16 64 256] [--variant shared comm]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_grid_script  # noqa: E402


def main(argv=None) -> int:
    return run_grid_script("multiagent.yaml", "bench_multiagent.json", argv)


if __name__ == "__main__":
    sys.exit(main())
