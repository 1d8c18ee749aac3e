"""How much do a landmark run's answers on Colin27 depend on the image's intensity scale?

Colin27 comes with skull (``ch2``) and skull-stripped (``ch2bet``, the same voxels inside a brain
mask, zero outside). Percentile normalisation maps each image's 99.5th percentile to 1: bright scalp
fat in ``ch2``, white matter in ``ch2bet``, so the same brain is stored brighter in the stripped image.
This script measures, per seed of a trained AC / PC (or any landmark) run:

* ``range swap``: each raw image normalised with its own 0.5-99.5 percentile range and with the
  other image's range (what the stripped brain gives when stored like the skull image, and back);
* ``scan``: each normalised image with its intensities multiplied by every ``--factors`` value
  (clipped to the image's maximum), detected alone per factor, every bank stored on the scale of the
  unscaled image (:meth:`jaxmed.detect.LandmarkDetector.end_points` with one intensity scale);
* ``pooled``: the end points of several factors pooled into one answer (test-time intensity
  augmentation, ``jaxmed detect --intensity-scales``), for every set in ``--pools``.

Errors are distances (mm) to the AFIDs project's Colin27 annotations. The run's own
``data.intensity_ceiling`` (if set) fixes the uint8 storage scale of every bank.

    python benchmarks/intensity_sensitivity.py --run runs/afids_acpc_real_cpu

writes ``benchmarks/results/intensity_sensitivity.json`` (``--out``) and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
IMAGES = {"colin27": "ch2", "colin27-bet": "ch2bet"}


def _normalised(raw, lo: float, hi: float):
    """``raw`` (a Colin27 volume, raw intensities) clipped to ``[lo, hi]`` and scaled to [0, 1]."""
    data = (np.clip(np.asarray(raw.data, np.float64), lo, hi) - lo) / (hi - lo)
    return raw.replace(data=data.astype(np.float32))


def measure(run_dir: Path, factors, pools, log) -> dict:
    """Per seed: the range-swap errors, the per-factor errors and the pooled errors (JSON-able)."""
    from jaxmed import inference
    from jaxmed.data import colin27, conform
    from jaxmed.detect import LandmarkDetector
    from jaxmed.runs import load_params, seed_params

    cfg, network, params = load_params(run_dir)
    raw = {name: colin27.load(key, normalise=False)[0] for name, key in IMAGES.items()}
    truth_all = colin27.landmarks()
    ranges = {name: tuple(float(x) for x in np.percentile(v.data, [0.5, 99.5])) for name, v in raw.items()}
    # every image as the normaliser leaves it, and normalised with the other image's range
    swap_keys = [(name, rng) for name in raw for rng in raw]
    swapped = [conform(_normalised(raw[name], *ranges[rng]), cfg.data.spacing) for name, rng in swap_keys]
    plain = {name: swapped[swap_keys.index((name, name))] for name in raw}
    out = {"run": str(run_dir), "factors": list(factors), "pools": [list(p) for p in pools], "ranges": ranges,
           "intensity_ceiling": cfg.data.intensity_ceiling, "seeds": []}
    for s in range(cfg.train.seeds):
        log(f"seed {s}")
        det = LandmarkDetector(cfg, network, seed_params(cfg, params, s), where=str(run_dir))
        labels = det.labels
        truth = truth_all.select(labels).positions

        def errors(points):
            ans = inference.estimate_landmarks(points, det.targets, labels, det.aggregate)
            return np.round(np.linalg.norm(ans.positions - truth, axis=1), 3).tolist()

        answers, _ = det.find(swapped)
        row = {"range_swap": {f"{name} normalised with the {rng} range": dict(zip(labels, np.round(
            np.linalg.norm(a.positions - truth, axis=1), 3).tolist())) for (name, rng), a in zip(swap_keys, answers)},
            "scan": {}, "pooled": {}}
        for name, volume in plain.items():
            per_factor = {}
            for f in factors:
                world, _, _ = det.end_points([volume], intensity_scales=[f])
                per_factor[f] = world
                row["scan"].setdefault(name, {})[str(f)] = dict(zip(labels, errors(world)))
            for pool in pools:
                pts = np.concatenate([per_factor[f] for f in pool])
                row["pooled"].setdefault(name, {})[" ".join(str(f) for f in pool)] = dict(zip(labels, errors(pts)))
        out["seeds"].append(row)
    return out


def markdown(result: dict) -> str:
    """Per image: mean over seeds of each landmark's error per factor, per pool, and the range swap."""
    seeds = result["seeds"]
    labels = list(next(iter(seeds[0]["scan"].values()))[str(result["factors"][0])])
    lines = [f"Run `{result['run']}` ({len(seeds)} seed(s); data.intensity_ceiling {result['intensity_ceiling']}); "
             f"errors on Colin27, mean over seeds (per seed in brackets), mm. Percentile ranges (0.5, 99.5): "
             + ", ".join(f"{k} {tuple(round(x, 1) for x in v)}" for k, v in result["ranges"].items()) + ".", ""]
    lines += ["| image | intensities | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]

    def cells(values):
        out = []
        for l in labels:
            v = [x[l] for x in values]
            out.append(f"{np.mean(v):.2f} ({', '.join(f'{e:.2f}' for e in v)})")
        return out

    for name in seeds[0]["scan"]:
        for f in result["factors"]:
            lines.append(f"| {name} | × {f} | " + " | ".join(cells([s["scan"][name][str(f)] for s in seeds])) + " |")
        for pool in seeds[0]["pooled"][name]:
            lines.append(f"| {name} | pooled {pool} | " + " | ".join(cells([s["pooled"][name][pool] for s in seeds])) + " |")
    for key in seeds[0]["range_swap"]:
        lines.append(f"| {key.split(' ')[0]} | {key.split(' ', 1)[1]} | " + " | ".join(cells([s["range_swap"][key] for s in seeds])) + " |")
    m = result.get("machine", {})
    lines += ["", f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {str(m.get('date', ''))[:16]}, commit "
              f"{m.get('git_commit', '?')}. Command: `{result.get('command', '')}`"]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", type=Path, help="a trained landmark run directory (every seed is measured)")
    g.add_argument("--report", type=Path, help="only print the Markdown table of a saved result")
    p.add_argument("--factors", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3])
    p.add_argument("--pools", nargs="+", default=["0.7,1.0,1.3", "0.7,0.8,1.0,1.15,1.3"],
                   help="factor sets whose end points are pooled (comma-separated, each a subset of --factors)")
    p.add_argument("--out", type=Path, default=RESULTS / "intensity_sensitivity.json")
    args = p.parse_args(argv)
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return 0
    pools = [tuple(float(x) for x in spec.split(",")) for spec in args.pools]
    missing = sorted({f for pool in pools for f in pool} - set(args.factors))
    if missing:
        p.error(f"--pools uses factors not in --factors: {missing}")

    from common import write_result

    from jaxmed.errors import check_writable

    check_writable(args.out, True)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    write_result(args.out, measure(args.run, args.factors, pools, log), markdown, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
