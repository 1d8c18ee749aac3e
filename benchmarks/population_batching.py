"""Seconds per chunk of a sweep population: its trials side by side (``vmap``) or in turn
(``lax.map``), beside one trial alone, on the machine this runs on.

The population is :class:`jaxmed.sweep.population.Population` of the sweep benchmark's base config
(``configs/afids_dqn_cpu.yaml`` with ``benchmarks/sweep_afids.py``'s shorter schedule), every trial
with the config's own hyperparameters and its own PRNG key. For each way of batching it compiles
the chunk program, runs ``--warmup`` chunks, then times ``--chunks`` chunks (wall clock, after
``block_until_ready``) and reports seconds per chunk and per trial-chunk. ``train.seed_batching``
picks the way in a real sweep (``auto``: ``map`` on CPU, ``vmap`` on accelerators).

Usage::

    python benchmarks/population_batching.py [--trials 4] [--chunks 3] [--out benchmarks/results/population_batching_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def time_population(cfg, bank, trials: int, warmup: int, chunks: int) -> dict:
    """Compile, warm up and time one population of ``trials`` trials of ``cfg`` on ``bank``."""
    import jax

    from jaxmed.sweep.population import Population

    pop = Population(cfg, bank, devices=jax.devices()[:1])
    keys = jax.random.split(jax.random.key(cfg.train.seed), trials)
    state = pop.init(keys, pop.hparams([cfg] * trials))
    state, _, first_s = pop.run(state, warmup)
    t0 = time.perf_counter()
    state, metrics, _ = pop.run(state, chunks)
    per_chunk = (time.perf_counter() - t0) / chunks
    return {"trials": trials, "batching": cfg.train.seed_batching, "warmup_s_incl_compile": round(first_s, 2),
            "s_per_chunk": round(per_chunk, 3), "s_per_trial_chunk": round(per_chunk / trials, 3),
            "reward_mean": float(np.nanmean(metrics["reward"]))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs/afids_dqn_cpu.yaml"))
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1, help="chunks run before timing (the first compiles)")
    p.add_argument("--chunks", type=int, default=3, help="timed chunks per way of batching")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/population_batching_cpu.json")
    args = p.parse_args()

    import jax
    from common import load_avg, machine_info
    from sweep_afids import OVERRIDES

    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.experiment import ExperimentConfig, make_bank

    def config(batching: str) -> ExperimentConfig:
        raw = apply_overrides(load_yaml(args.config), [*OVERRIDES, f"train.seed_batching={batching}"])
        return ExperimentConfig.from_dict(raw, args.config)

    cfg = config("auto")
    bank, _, _ = make_bank(cfg, "train", cfg.data.n_train)
    result = {"machine": machine_info(), "backend": jax.default_backend(), "date": time.strftime("%Y-%m-%dT%H:%M"),
              "config": str(Path(args.config).resolve().relative_to(ROOT)), "overrides": OVERRIDES,
              "command": "python benchmarks/population_batching.py " + " ".join(sys.argv[1:]),
              "load_avg_start": load_avg(), "rows": []}
    runs = [(1, "vmap"), (args.trials, "vmap"), (args.trials, "map")]
    for trials, batching in runs:
        row = time_population(config(batching), bank, trials, args.warmup, args.chunks)
        row["load_avg"] = load_avg()
        result["rows"].append(row)
        print(f"{trials} trial(s), {batching}: {row['s_per_chunk']:.2f} s per chunk, "
              f"{row['s_per_trial_chunk']:.2f} s per trial-chunk (first {row['warmup_s_incl_compile']:.1f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
