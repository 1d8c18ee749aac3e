"""Accuracy on AFIDs held-out subjects: train a config, evaluate from fixed start points, compare.

Trains ``configs/afids_dqn_cpu.yaml`` (or ``--config``) on synthetic subjects made from the
MNI152NLin2009cAsym template, evaluates on held-out test subjects (disjoint seeds; different pose,
voxel size, orientation and intensity), and records the per-landmark error in mm beside the
template prior (answering the template's coordinate) and the published figures, with training wall
time and environment steps. Writes ``benchmarks/results/accuracy_afids.json``.

    python benchmarks/accuracy_afids.py [--config CONFIG] [overrides ...]
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
PUBLISHED_MM = {"AC": "1.04 ± 0.58 (multi-agent)", "PC": "1.13 ± 0.66 (multi-agent)"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/afids_dqn_cpu.yaml")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--run-dir", default="runs/accuracy_afids")
    p.add_argument("--out", default="benchmarks/results/accuracy_afids.json")
    args = p.parse_args(argv)
    cfg = ExperimentConfig.from_dict(apply_overrides(load_yaml(args.config), args.overrides), args.config)
    summary = run_training(cfg, args.run_dir, overwrite=True, progress=True)
    ev = summary["evaluation"]
    rows = ["| landmark | jaxmed mean ± std (mm) | median | ≤2 mm | ≤4 mm | template prior (mm) | published (mm) |", "|---|---|---|---|---|---|---|"]
    for label, s in ev["stats"].items():
        prior = ev["template_prior"][label]
        rows.append(f"| {label} | {s['mean']:.2f} ± {s['std']:.2f} | {s['median']:.2f} | {100 * s['success_2mm']:.0f} % | "
                    f"{100 * s['success_4mm']:.0f} % | {prior['mean']:.2f} ± {prior['std']:.2f} | {PUBLISHED_MM.get(label, '—')} |")
    table = "\n".join(rows)
    result = {"machine": machine_info(), "config": args.config, "overrides": args.overrides, "summary": summary, "table": table}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    shutil.copy(Path(args.run_dir) / "trajectories.png", out.with_name(out.stem + "_trajectories.png"))
    print(table)
    print(f"\ntraining: {summary['env_steps']:,} env steps in {summary['train_wall_s']:.0f} s "
          f"(data preparation {summary['data_prep_s']:.0f} s); evaluation {ev['seconds_per_subject']:.2f} s per subject, all agents, "
          f"{ev['episodes']} episodes")
    return result


if __name__ == "__main__":
    main()
