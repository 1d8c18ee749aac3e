"""Architecture search on the AFIDs AC + PC task: RL controller vs random search vs successive halving.

The three methods search the same space (``configs/sweeps/afids_nas_controller.yaml``: patch size,
width, activation of the patch trunk; Q or dueling head and its depth) around
``configs/afids_dqn_cpu.yaml`` (the main job: 64 envs x 100 steps = 6 400 env steps per chunk) with
its exploration and target schedules scaled to a child's budget (``OVERRIDES``: epsilon decays over
4 chunks, target copies every 100 updates), at the same total number of training chunks:

* ``controller``: ``jaxmed sweep --method controller`` (REINFORCE, moving-average baseline), the
  space file's ``controller:`` section (rounds x batch children of ``chunks`` chunks), or
  ``--rounds`` / ``--batch`` / ``--chunks``;
* ``random``: the same schedule, architectures drawn uniformly (``--method random``);
* ``halving``: successive halving of the space file (``trials`` at ``min_chunks``, eta 2, up to
  ``max_chunks``; or ``--trials`` / ``--min-chunks`` / ``--max-chunks``), architectures drawn
  uniformly; every evaluation at any rung counts.

Metric: mean distance (mm) of greedy episodes on validation subjects (the space's ``metric``).
Curves: best validation error seen so far against total training env steps; written to
``nas_afids.png``, with ``nas_afids.json`` and a Markdown table. A child of 8 chunks (51 200 env
steps, 1/8 of the main job's 60 chunks) is trained: the main architecture at that budget and with
these schedules reaches 3.2 / 2.0 mm (AC / PC) on the held-out subjects.

Usage::

    python benchmarks/nas_afids.py [--out benchmarks/results/nas_afids] [--rounds R --batch B --chunks C]
                                   [--trials T --min-chunks M --max-chunks X] [--methods ...] [--keep OLD.json ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

#: configs/afids_dqn_cpu.yaml with the schedules of a child's budget (a few chunks instead of 60): epsilon
#: decays over 400 vector steps (4 chunks) instead of 3 000, the target network is copied every 100 updates
#: instead of 500; no Colin27 evaluation.
OVERRIDES = ["dqn.eps_decay_steps=400", "dqn.target_update_period=100", "train.checkpoint_every=100",
             "eval.extra_sets=[]"]


def halving_curve(out: Path, steps_per_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Best metric so far against cumulative env steps, from a halving sweep's progress.json (rung by rung)."""
    prog = json.loads((out / "progress.json").read_text())
    events = []
    for r in prog["trials"]:
        done = 0
        for budget, v in sorted((int(b), v) for b, v in r["metrics"].items()):
            events.append((budget, r["id"], (budget - done) * steps_per_chunk, np.nan if v is None else v))
            done = budget
    events.sort()
    steps = np.cumsum([e[2] for e in events]).astype(np.float64)
    best = np.fmin.accumulate(np.array([e[3] for e in events], np.float64))
    return steps, best


def main(argv=None) -> int:
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.sweep import Space, run_sweep
    from jaxmed.sweep.controller import plot_best_so_far, run_controller_sweep, split_space

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/nas_afids")
    ap.add_argument("--config", default=str(ROOT / "configs/afids_dqn_cpu.yaml"))
    ap.add_argument("--space", default=str(ROOT / "configs/sweeps/afids_nas_controller.yaml"))
    ap.add_argument("--methods", nargs="*", default=["controller", "random", "halving"])
    ap.add_argument("--keep", nargs="*", type=Path, default=[], metavar="JSON",
                    help="nas_afids.json files of earlier invocations: their methods not run now join the table and figure")
    for name in ("rounds", "batch", "chunks"):
        ap.add_argument(f"--{name}", type=int, help=f"controller / random: {name} (default: the space file's)")
    for name in ("trials", "min-chunks", "max-chunks"):
        ap.add_argument(f"--{name}", type=int, help=f"halving: {name} (default: the space file's)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    base = apply_overrides(load_yaml(args.config), OVERRIDES)
    space_data, settings = split_space(load_yaml(args.space), args.space)
    settings = dataclasses.replace(settings, **{k: getattr(args, k) for k in ("rounds", "batch", "chunks")
                                                if getattr(args, k) is not None})
    space_data.update({k: getattr(args, k) for k in ("trials", "min_chunks", "max_chunks") if getattr(args, k) is not None})
    space = Space.from_dict(space_data, args.space)
    steps_per_chunk = int(base["dqn"]["n_envs"]) * int(base["dqn"]["chunk_steps"])
    result = {"config": str(Path(args.config).relative_to(ROOT)), "overrides": OVERRIDES, "space": space.to_dict(),
              "argv": sys.argv[1:] if argv is None else list(argv), "env_steps_per_chunk": steps_per_chunk,
              "controller": dataclasses.asdict(settings), "methods": {}}
    curves = {}
    for path in args.keep:  # methods measured by earlier invocations (e.g. run as separate processes)
        earlier = json.loads(Path(path).read_text())
        for method, r in earlier["methods"].items():
            if method not in args.methods and method not in result["methods"]:
                result["methods"][method] = {**r, "argv": earlier.get("argv")}
                curves[method] = (np.asarray(r["curve"]["env_steps"]), np.asarray(r["curve"]["best"], np.float64))
    for method in args.methods:
        t0 = time.perf_counter()
        out = args.out / method
        if method == "halving":
            summary = run_sweep(base, space, out, overwrite=True, progress=False)
            steps, best = halving_curve(out, steps_per_chunk)
            best_values, best_metric = summary.get("best_values"), summary.get("best_metric")
        else:
            s = settings if method == "controller" else dataclasses.replace(settings, policy="random")
            summary = run_controller_sweep(base, space, s, out, overwrite=True, progress=False)
            steps, best = np.asarray(summary["curve"]["env_steps"]), np.asarray(summary["curve"]["best"], np.float64)
            best_values, best_metric = summary.get("best_values"), summary.get("best_metric")
        curves[method] = (steps, best)
        result["methods"][method] = {"env_steps": float(steps[-1]), "best_val_mm": float(np.nanmin(best)),
                                     "best_values": best_values, "reported_best_metric": best_metric,
                                     "curve": {"env_steps": steps.tolist(), "best": best.tolist()},
                                     "wall_s": time.perf_counter() - t0, "load_avg_1min": os.getloadavg()[0]}
        (args.out / "nas_afids.json").write_text(json.dumps(result, indent=1, default=str))
        print(method, result["methods"][method]["best_val_mm"], f"{result['methods'][method]['wall_s']:.0f} s", flush=True)
    order = ["controller", "random", "halving"]
    result["methods"] = dict(sorted(result["methods"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9))
    curves = {m: curves[m] for m in result["methods"]}
    plot_best_so_far(curves, space.metric.name, "min", args.out / "nas_afids.png",
                     title=f"AFIDs AC+PC architecture search, equal compute ({settings.chunks}-chunk children)")
    lines = ["| method | total env steps | best val distance (mm) | best architecture | wall (s) |", "|---|---|---|---|---|"]
    for m, r in result["methods"].items():
        arch = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in (r["best_values"] or {}).items() if k != "network.trunk.group")
        lines.append(f"| {m} | {r['env_steps']:,.0f} | {r['best_val_mm']:.2f} | {arch} | {r['wall_s']:.0f} |")
    result["table"] = "\n".join(lines)
    (args.out / "nas_afids.json").write_text(json.dumps(result, indent=1, default=str))
    (args.out / "nas_afids.md").write_text(result["table"] + "\n")
    print(result["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
