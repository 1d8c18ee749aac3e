"""A real, bounded hyperparameter sweep on the AFIDs landmark task (AC + PC), vmapped vs sequential.

1. ``jaxmed sweep``: successive halving of ``configs/sweeps/afids_dqn.yaml`` around a shortened
   ``configs/afids_dqn_cpu.yaml`` (see ``OVERRIDES``), all trials in one program, metric:
   mean distance (mm) of greedy episodes on validation subjects.
2. Held-out comparison: the default config (trial 0) and the best config found, each trained by
   ``jaxmed train``'s loop (:func:`jaxmed.train.run_training`) to the sweep's full budget and
   evaluated on the held-out test subjects (27 starts per subject).
3. Sequential cost: the same sweep (same trials, same halving schedule) run with every trial as
   its own population of one, one after another in the same process (``run_sweep(vmapped=False)``).

The JSON is written after each phase (with the 1-minute load average), so a kill keeps what was
measured. ``--devices N`` shards the vmapped sweep's trials over N devices (fake CPU devices need
``XLA_FLAGS=--xla_force_host_platform_device_count=N``).

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

#: The training schedule of configs/afids_dqn_cpu.yaml shortened for a CPU sweep (its env, network and
#: hyperparameters are the "default config"; the sweep varies the hyperparameters of configs/sweeps/afids_dqn.yaml).
OVERRIDES = ["data.n_train=8", "data.n_test=4", "dqn.n_envs=16", "dqn.chunk_steps=100", "dqn.batch_size=64",
             "dqn.replay_capacity=20000", "dqn.learning_starts=500", "train.checkpoint_every=100"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/sweep_afids")
    p.add_argument("--config", default=str(ROOT / "configs/afids_dqn_cpu.yaml"))
    p.add_argument("--space", default=str(ROOT / "configs/sweeps/afids_dqn.yaml"))
    p.add_argument("--quick", action="store_true", help="a smoke run: 4 trials, budgets 1..2 chunks")
    p.add_argument("--trials", type=int, help="replace the space's number of trials")
    p.add_argument("--chunks", type=int, nargs=2, metavar=("MIN", "MAX"), help="replace the space's min_chunks / max_chunks")
    p.add_argument("--devices", type=int, default=1, help="devices the vmapped sweep shards its trials over")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides of the base config")
    p.add_argument("--no-sequential", action="store_true", help="skip the sequential (one trial after another) sweep")
    p.add_argument("--sweep-only", action="store_true", help="only the vmapped sweep (no held-out runs, no sequential sweep)")
    args = p.parse_args()

    from common import load_avg, machine_info

    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.experiment import ExperimentConfig
    from jaxmed.sweep import Space, run_sweep, runner
    from jaxmed.train import run_training

    overrides = OVERRIDES + list(args.set)
    base = apply_overrides(load_yaml(args.config), overrides)
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
    result = {"machine": machine_info(), "config": str(Path(args.config).relative_to(ROOT)), "overrides": overrides,
              "space": space.to_dict(), "devices": args.devices, "load_avg_1m": {}}
    json_path = args.out / "sweep_afids.json"

    def write(phase: str) -> None:  # after every phase: a kill keeps what was measured
        result["load_avg_1m"][phase] = load_avg()
        json_path.write_text(json.dumps(result, indent=1, default=str))

    write("start")
    # 1. the vmapped sweep
    t0 = time.perf_counter()
    summary = run_sweep(base, space, sweep_dir, overwrite=True, progress=True, devices=args.devices)
    result["sweep"] = dict(summary, measured_wall_s=time.perf_counter() - t0)
    records = json.loads((sweep_dir / "progress.json").read_text())["trials"]
    result["sweep"]["trial_chunks"] = sum(r["budget"] for r in records)
    result["sweep"]["results_md"] = (sweep_dir / "results.md").read_text()
    write("sweep")

    if args.sweep_only:
        shutil.rmtree(sweep_dir / "state", ignore_errors=True)
        print(markdown(result))
        return 0
    # 2. held-out test error of the default config and of the best config, each trained to the full budget
    runs = {}
    best_cfg = ExperimentConfig.from_dict(load_yaml(sweep_dir / "best.yaml"), "best.yaml")
    default_cfg = ExperimentConfig.from_dict(base)
    default_cfg = dataclasses.replace(default_cfg, train=dataclasses.replace(default_cfg.train, chunks=space.max_chunks))
    for name, cfg in (("default", default_cfg), ("best", best_cfg)):
        run_dir = args.out / f"run_{name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        s = run_training(cfg, run_dir, progress=False, evaluate=True)
        for heavy in ("checkpoints", "tb"):  # kept out of the results folder (network.msgpack too)
            shutil.rmtree(run_dir / heavy, ignore_errors=True)
        (run_dir / "network.msgpack").unlink(missing_ok=True)
        ev = s["evaluation"]
        walls = [float(r.split(",")[-1]) for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
        per_chunk = (walls[-1] - walls[0]) / max(len(walls) - 1, 1)
        runs[name] = {"hparams": {f: getattr(cfg.dqn, f) for f in ("learning_rate", "gamma", "eps_decay_steps", "target_update_period")},
                      "train_wall_s": s["train_wall_s"], "first_chunk_s_incl_compile": s["first_chunk_s_incl_compile"],
                      "seconds_per_chunk": per_chunk, "test_distance_mm": ev["stats"]["distance_mm"],
                      "baseline": ev.get("baseline"), "eval_s": ev["eval_s"], "table": ev["table"]}
        print(f"\n{name} config, held-out test subjects:\n{ev['table']}", flush=True)
        result["runs"] = runs
        write(f"run_{name}")

    # 3. the same trials one after another (populations of one, same schedule), measured
    if not args.no_sequential:
        runner._POPULATIONS.clear()  # no compiled program carried over from the vmapped sweep
        t0 = time.perf_counter()
        seq = run_sweep(base, space, args.out / "sequential", overwrite=True, progress=True, vmapped=False, devices=1)
        seq_records = json.loads((args.out / "sequential" / "progress.json").read_text())["trials"]
        result["sequential_measured"] = {"wall_s": seq["wall_s"], "measured_wall_s": time.perf_counter() - t0,
                                         "same_survivors": [r["stopped_at"] for r in seq_records] == [r["stopped_at"] for r in records],
                                         "metrics": [r["metrics"] for r in seq_records]}
        result["speedup_vmapped_vs_sequential"] = seq["wall_s"] / result["sweep"]["wall_s"]
        write("sequential")
    for d in (sweep_dir, args.out / "sequential"):
        shutil.rmtree(d / "state", ignore_errors=True)
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    s, runs = result["sweep"], result.get("runs", {})
    seq = result.get("sequential_measured")
    lines = ["| | value |", "|---|---|",
             f"| trials / compiled groups | {s['trials']} / {s['groups']} (one population program, {result['devices']} device(s)) |",
             f"| trial-chunks trained | {s['trial_chunks']} |",
             f"| sweep wall time (population programs, incl. data, compile + validation) | {s['wall_s']:.0f} s |"]
    if seq:
        lines += [f"| same trials one after another in one process (measured, compiled once) | {seq['wall_s']:.0f} s |",
                  f"| speed-up of the population sweep | {result['speedup_vmapped_vs_sequential']:.2f}x |"]
    lines += [f"| best trial | {s.get('best_trial')} {s.get('best_values')} |",
              f"| validation distance at the full budget, best / default (mm) "
              f"| {_num(s.get('best_metric'))} / {_num(s.get('default_metric'))} |"]
    for name, r in runs.items():
        lines.append(f"| held-out test distance, {name} config (mm) | {_fmt_stats(r['test_distance_mm'])} |")
    return "\n".join(lines)


def _num(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def _fmt_stats(stats: dict) -> str:
    """``AC 3.1 ± 1.2, PC ...`` (mean ± std over episodes per landmark, mm)."""
    return ", ".join(f"{lab} {st['mean']:.2f} ± {st['std']:.2f}" for lab, st in stats.items())


if __name__ == "__main__":
    sys.exit(main())
