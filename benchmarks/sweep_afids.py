"""A real, bounded hyperparameter sweep on the AFIDs landmark task (AC + PC), vmapped vs sequential.

1. ``jaxmed sweep``: successive halving of ``configs/sweeps/afids_dqn.yaml`` around a shortened
   ``configs/afids_dqn_cpu.yaml`` (see ``OVERRIDES``), all trials in one vmapped program, metric:
   mean distance (mm) of greedy episodes on validation subjects.
2. Held-out comparison: the default config (trial 0) and the best config found, each trained by
   ``jaxmed train``'s loop (:func:`jaxmed.train.run_training`) to the sweep's full budget and
   evaluated on the held-out test subjects (27 starts per subject).
3. Sequential cost: those two single-trial runs give the per-chunk time and the compile time of
   one trial; the sweep's trial-chunks and compilations are priced with them (labelled
   *extrapolated*: running each trial one after another, one process per trial, same schedule).

Usage::

    python benchmarks/sweep_afids.py [--out benchmarks/results/sweep_afids] [--quick]

Writes ``sweep_afids.json`` (summary), the sweep directory (``results.csv`` / ``results.md`` /
``curves.png`` / ``best.yaml``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

OVERRIDES = ["data.n_train=8", "data.n_test=4", "dqn.n_envs=32", "dqn.chunk_steps=50", "dqn.batch_size=64",
             "dqn.replay_capacity=40000", "dqn.learning_starts=1000", "train.checkpoint_every=100"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sweep_afids")
    p.add_argument("--config", default=str(ROOT / "configs/afids_dqn_cpu.yaml"))
    p.add_argument("--space", default=str(ROOT / "configs/sweeps/afids_dqn.yaml"))
    p.add_argument("--quick", action="store_true", help="a smoke run: 4 trials, budgets 1..2 chunks")
    p.add_argument("--trials", type=int, help="replace the space's number of trials")
    p.add_argument("--chunks", type=int, nargs=2, metavar=("MIN", "MAX"), help="replace the space's min_chunks / max_chunks")
    args = p.parse_args()

    from common import machine_info
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.experiment import ExperimentConfig
    from jaxmed.sweep import Space, run_sweep
    from jaxmed.train import run_training

    base = apply_overrides(load_yaml(args.config), OVERRIDES)
    space_data = load_yaml(args.space)
    if args.quick:
        space_data.update(trials=4, min_chunks=1, max_chunks=2)
    if args.trials:
        space_data["trials"] = args.trials
    if args.chunks:
        space_data.update(min_chunks=args.chunks[0], max_chunks=args.chunks[1])
    space = Space.from_dict(space_data, args.space)
    args.out.mkdir(parents=True, exist_ok=True)
    sweep_dir = args.out / "sweep"
    result = {"machine": machine_info(), "config": args.config, "overrides": OVERRIDES, "space": space.to_dict()}

    from jaxmed.sweep import runner

    t0 = time.perf_counter()
    summary = run_sweep(base, space, sweep_dir, overwrite=True, progress=True)
    result["sweep"] = dict(summary, measured_wall_s=time.perf_counter() - t0)
    records = json.loads((sweep_dir / "progress.json").read_text())["trials"]
    trial_chunks = sum(r["budget"] for r in records)
    result["sweep"]["trial_chunks"] = trial_chunks
    # the same trials one after another (populations of one, same schedule), measured
    runner._POPULATIONS.clear()  # no compiled program carried over from the vmapped sweep
    t0 = time.perf_counter()
    seq = run_sweep(base, space, args.out / "sequential", overwrite=True, progress=True, vmapped=False)
    seq_records = json.loads((args.out / "sequential" / "progress.json").read_text())["trials"]
    result["sequential_measured"] = {"wall_s": seq["wall_s"], "measured_wall_s": time.perf_counter() - t0,
                                     "same_survivors": [r["stopped_at"] for r in seq_records] == [r["stopped_at"] for r in records],
                                     "metrics": [r["metrics"] for r in seq_records]}

    runs = {}
    best_cfg = ExperimentConfig.from_dict(load_yaml(sweep_dir / "best.yaml"), "best.yaml")
    default_cfg = ExperimentConfig.from_dict(base)
    default_cfg = dataclasses.replace(default_cfg, train=dataclasses.replace(default_cfg.train, chunks=space.max_chunks))
    for name, cfg in (("default", default_cfg), ("best", best_cfg)):
        run_dir = args.out / f"run_{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        s = run_training(cfg, run_dir, progress=False, evaluate=True)
        ev = s["evaluation"]
        rows = [r for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
        walls = [float(r.split(",")[-1]) for r in rows]
        per_chunk = (walls[-1] - walls[0]) / max(len(walls) - 1, 1)
        runs[name] = {"train_wall_s": s["train_wall_s"], "first_chunk_s_incl_compile": s["first_chunk_s_incl_compile"],
                      "seconds_per_chunk": per_chunk, "test_distance_mm": ev["stats"]["distance_mm"],
                      "eval_s": ev["eval_s"], "table": ev["table"]}
        print(f"\n{name} config, held-out test subjects:\n{ev['table']}")
    result["runs"] = runs
    per_chunk = sum(r["seconds_per_chunk"] for r in runs.values()) / len(runs)
    compile_s = sum(r["first_chunk_s_incl_compile"] - r["seconds_per_chunk"] for r in runs.values()) / len(runs)
    evals = sum(len(r["metrics"]) for r in records)
    result["sequential_extrapolated"] = {
        "note": "extrapolated from the two single-trial runs above: every trial-chunk of the sweep at the measured "
                "single-trial seconds per chunk, plus one compilation per trial (a process per trial); validation "
                "rollouts not counted",
        "seconds_per_chunk": per_chunk, "compile_s_per_trial": compile_s, "trial_chunks": trial_chunks,
        "validation_rollouts": evals, "wall_s": trial_chunks * per_chunk + len(records) * compile_s}
    result["speedup_vmapped_vs_sequential"] = result["sequential_measured"]["wall_s"] / result["sweep"]["wall_s"]
    result["speedup_vmapped_vs_process_per_trial_extrapolated"] = result["sequential_extrapolated"]["wall_s"] / result["sweep"]["wall_s"]
    (args.out / "sweep_afids.json").write_text(json.dumps(result, indent=1, default=str))
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    s, seq, runs = result["sweep"], result["sequential_extrapolated"], result["runs"]
    lines = ["| | value |", "|---|---|",
             f"| trials (vmapped, one group) | {s['trials']} |",
             f"| trial-chunks trained | {s['trial_chunks']} |",
             f"| sweep wall time (vmapped, incl. compile + validation) | {s['wall_s']:.0f} s |",
             f"| same trials one after another in one process (measured, compiled once) | {result['sequential_measured']['wall_s']:.0f} s |",
             f"| speed-up of the vmapped sweep | {result['speedup_vmapped_vs_sequential']:.2f}x |",
             f"| one process per trial, training only (extrapolated, see note) | {seq['wall_s']:.0f} s |",
             f"| best trial | {s.get('best_trial')} {s.get('best_values')} |",
             f"| val distance, best / default (mm) | {s.get('best_metric')} / {s.get('default_metric')} |"]
    for name, r in runs.items():
        lines.append(f"| held-out test distance, {name} config (mm) | {_fmt_stats(r['test_distance_mm'])} |")
    return "\n".join(lines)


def _fmt_stats(stats: dict) -> str:
    """``AC 3.1 ± 1.2, PC ...`` (mean ± std over episodes per landmark, mm)."""
    return ", ".join(f"{lab} {st['mean']:.2f} ± {st['std']:.2f}" for lab, st in stats.items())


if __name__ == "__main__":
    sys.exit(main())
