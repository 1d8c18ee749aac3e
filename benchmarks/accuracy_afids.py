"""Accuracy on AFIDs held-out subjects: train one or several configs, evaluate from fixed start points, compare.

Trains each config (default ``configs/afids_dqn_cpu.yaml``) on synthetic subjects made from the
MNI152NLin2009cAsym template, evaluates on the same held-out test subjects (disjoint seeds;
different pose, voxel size, orientation and intensity), and records per-landmark errors in mm beside
the template prior (answering the template's coordinate) and the published figures, with training
wall time and environment steps. Several configs (e.g. independent vs Collab-DQN vs communicating
agents, or DQN vs PPO) are compared side by side with the same data and budget.

    python benchmarks/accuracy_afids.py [--configs A.yaml B.yaml ...] [--name NAME] [--set section.key=value ...]

Writes ``benchmarks/results/<name>.json`` (and the first run's trajectories PNG).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info  # noqa: E402

from jaxmed.config import apply_overrides, load_yaml  # noqa: E402
from jaxmed.experiment import ExperimentConfig  # noqa: E402
from jaxmed.train import run_training  # noqa: E402

# Published brain-MRI figures (mean ± std, mm): Vlontzos et al. 2019 / C-MARL multi-agent agents.
PUBLISHED_MM = {"AC": "1.04 ± 0.58 (C-MARL)", "PC": "1.13 ± 0.66 (C-MARL)"}


def _stats(ev: dict) -> dict:
    """Per-landmark distance statistics of an evaluation (the first metric when not a landmark env)."""
    return ev["stats"].get("distance_mm") or next(iter(ev["stats"].values()))


def comparison_table(runs: dict[str, dict]) -> str:
    """Markdown: one row per landmark, one column per run (mean ± std mm, ≤2 mm rate), the template prior
    and the published figure; then one row of training wall time and env steps per run."""
    names = list(runs)
    first = runs[names[0]]["evaluation"]
    head = "| landmark | " + " | ".join(f"{n} mean ± std (mm), ≤2 mm" for n in names) + " | template prior (mm) | published (mm) |"
    rows = [head, "|" + "---|" * (len(names) + 3)]
    for label in _stats(first):
        cells = []
        for n in names:
            s = _stats(runs[n]["evaluation"]).get(label)
            succ = f", {100 * s['success_2mm']:.0f} %" if s and "success_2mm" in s else ""
            cells.append(f"{s['mean']:.2f} ± {s['std']:.2f}{succ}" if s else "—")
        prior = first.get("template_prior", {}).get(label)
        prior_cell = f"{prior['mean']:.2f} ± {prior['std']:.2f}" if prior else "—"
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {prior_cell} | {PUBLISHED_MM.get(label, '—')} |")
    means = [sum(s["mean"] for s in _stats(runs[n]["evaluation"]).values()) / len(_stats(runs[n]["evaluation"])) for n in names]
    rows.append("| **mean over landmarks** | " + " | ".join(f"**{m:.2f}**" for m in means) + " | | |")
    rows.append("| training wall time (s) / env steps | " + " | ".join(
        f"{runs[n]['train_wall_s']:.0f} / {runs[n]['env_steps']:,}" for n in names) + " | | |")
    return "\n".join(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["configs/afids_dqn_cpu.yaml"])
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="section.key=value overrides applied to every config (e.g. train.seeds=4)")
    p.add_argument("--name", default="accuracy_afids", help="result name (JSON under benchmarks/results/)")
    p.add_argument("--run-root", default="runs/accuracy")
    p.add_argument("--results", default="benchmarks/results")
    args = p.parse_args(argv)
    runs = {}
    for path in args.configs:
        cfg = ExperimentConfig.from_dict(apply_overrides(load_yaml(path), args.overrides), path)
        label = Path(path).stem
        summary = run_training(cfg, Path(args.run_root) / label, overwrite=True, progress=True)
        runs[label] = summary
        print(f"\n{label}: {summary['env_steps']:,} env steps in {summary['train_wall_s']:.0f} s")
        print(summary["evaluation"]["table"])
    table = comparison_table(runs)
    result = {"machine": machine_info(), "configs": args.configs, "overrides": args.overrides, "runs": runs, "table": table}
    out = Path(args.results) / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    traj = Path(args.run_root) / Path(args.configs[0]).stem / "trajectories.png"
    if traj.exists():
        shutil.copy(traj, out.with_name(out.stem + "_trajectories.png"))
    print("\n" + table)
    return result


if __name__ == "__main__":
    main()
