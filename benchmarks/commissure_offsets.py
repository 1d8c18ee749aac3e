"""Where do the AC and PC annotations sit on the commissures they mark, in the template and in Colin27?

The anterior and posterior commissures are bundles of white matter a few millimetres thick, bright in
T1. A rater clicks somewhere inside each bundle; two annotation sets may click different parts of it.
This script measures that, with no model involved: for each image and landmark it samples the T1
intensity on a line through the annotation across the bundle, along y (anterior) and z (superior)
(0.25 mm steps, ±``--reach`` mm, each sample the mean over a ``--disk`` mm disk across the line;
the bundles run left to right, so x says nothing), and reports the offset of the bundle's centre
from the annotation (mm): the intensity-weighted centroid of the run of samples around the
brightest sample within ``--near`` mm of the annotation that stay above half way between the line's
minimum and that peak. A landmark detector trained on the
template's annotations learns the template's habit; on Colin27 its error includes the difference
between the two habits. ``--run`` adds a trained run's answers on Colin27 for comparison, and
``--figure`` writes a sagittal view of both images with the annotations (and answers).

``--registration`` asks the same question of template matching, with no learned model: the template is
registered to each Colin27 image by intensity (optax, mutual information, :mod:`jaxmed.registration_baseline`)
globally (rigid, 12-dof affine) and then locally (a rigid refinement of the global rigid answer on a
cube of ``--local-mm`` mm around the carried AC-PC midpoint, 1 mm voxels), and the template's AC and
PC are carried over. If those land as far from Colin27's annotation as a detector's answers do, the
detector's Colin27 error is what matching this template to this brain gives, not a failure of the
search. For the global registrations the residuals (carried minus annotation) of the 28 other AFIDs
are summarised too (the two ventral occipital horns, 17-22 mm apart in the two annotations, left out).

    python benchmarks/commissure_offsets.py --run runs/afids_acpc_real_cpu --figure benchmarks/results/commissure_offsets.png

writes ``benchmarks/results/commissure_offsets.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates

RESULTS = Path(__file__).resolve().parent / "results"
LABELS = ("AC", "PC")


def line_profile(volume, point, axis: int, reach: float = 4.0, disk: float = 1.0, step: float = 0.25):
    """``(offsets (n,), intensities (n,))``: trilinear samples of ``volume`` on the line through
    ``point`` (world mm) along world ``axis``, each averaged over a disk of radius ``disk`` mm
    across the line (7 x 7 grid clipped to the disk)."""
    offsets = np.arange(-reach, reach + step / 2, step)
    others = [a for a in range(3) if a != axis]
    g = np.linspace(-disk, disk, 7)
    du, dv = np.meshgrid(g, g, indexing="ij")
    keep = du**2 + dv**2 <= disk**2 + 1e-9
    du, dv = du[keep], dv[keep]
    pts = np.repeat(np.asarray(point, np.float64)[None, None], len(offsets), 0).repeat(len(du), 1)  # (n, m, 3)
    pts[..., axis] += offsets[:, None]
    pts[..., others[0]] += du[None]
    pts[..., others[1]] += dv[None]
    inv = np.linalg.inv(volume.affine)
    vox = pts.reshape(-1, 3) @ inv[:3, :3].T + inv[:3, 3]
    vals = map_coordinates(np.asarray(volume.data, np.float32), vox.T, order=1).reshape(pts.shape[:2])
    return offsets, vals.mean(1)


def bundle_centre(offsets, values, near: float = 2.0) -> float:
    """Intensity-weighted centroid (mm) of the connected run of samples around the brightest sample
    within ``near`` mm of 0 that stay above half way between the line's minimum and that peak."""
    close = np.abs(offsets) <= near
    peak = int(np.flatnonzero(close)[np.argmax(values[close])])
    lo, hi = float(values.min()), float(values[peak])
    above = values >= lo + 0.5 * (hi - lo)
    a = peak
    while a > 0 and above[a - 1]:
        a -= 1
    b = peak
    while b < len(values) - 1 and above[b + 1]:
        b += 1
    w = values[a : b + 1] - lo
    return float(np.sum(w * offsets[a : b + 1]) / np.sum(w))


def offsets_of(volume, landmarks, reach: float, disk: float, near: float) -> dict:
    """``{label: [dy, dz]}`` mm: bundle centre minus annotation along world y and z."""
    out = {}
    for label in LABELS:
        p = landmarks.select([label]).positions[0]
        out[label] = [round(bundle_centre(*line_profile(volume, p, ax, reach, disk), near=near), 2) for ax in (1, 2)]
    return out


def run_answers(run_dir: str) -> dict:
    """``{image: {label: [x, y, z]}}``: seed 0 of a trained landmark run on Colin27 with and without skull."""
    from jaxmed.detect import LandmarkDetector
    from jaxmed.evaluation import resolve_set

    det = LandmarkDetector.from_run(run_dir, labels=LABELS)
    _, subjects, _ = resolve_set(det.cfg, "colin27", LABELS)
    answers, _ = det.find([s.volume for s in subjects])
    return {s.name: {l: np.round(a.select([l]).positions[0], 2).tolist() for l in LABELS} for s, a in zip(subjects, answers)}


def registration_offsets(template, images: dict, local_mm: int, *, affine=None, local=None) -> dict:
    """``{image: {method: {"AC": [dx, dy, dz], "PC": [...], "others_median": [...], "others_mean": [...]}}}``
    mm: template landmarks carried to each image by intensity registration, minus its annotation.

    ``affine``: the global registration's :class:`~jaxmed.registration_baseline.BaselineConfig`
    (default ``AFFINE_LANDMARK``; the rigid one is the same with ``transform="rigid"``); ``local``:
    the local refinement's (default: mutual information, 2 then 1 mm voxels)."""
    import dataclasses

    from jaxmed.data.geometry import apply_affine
    from jaxmed.data.structures import crop_volume
    from jaxmed.data.volume import Volume
    from jaxmed.registration_baseline import AFFINE_LANDMARK, BaselineConfig, register_volumes

    tv, tl = template
    labels = list(tl.labels)
    others = [i for i, l in enumerate(labels) if l not in LABELS and "occipital horn" not in l]
    tp = tl.positions
    affine = affine or AFFINE_LANDMARK
    rigid = dataclasses.replace(affine, transform="rigid", rigid_levels=0)
    local = local or BaselineConfig(loss="mi", factors=(2, 1), iterations=(100, 100), learning_rate=(0.3, 0.1),
                                    transform="rigid")

    def carry(matrix, pts):  # matrix: image world -> template (or moved template) world
        return apply_affine(np.linalg.inv(matrix), pts)

    out = {}
    for name, (volume, lm) in images.items():
        truth = lm.select(labels).positions
        global_rigid = register_volumes(volume, tv, rigid).matrix
        carried = {"rigid": carry(global_rigid, tp), "affine": carry(register_volumes(volume, tv, affine).matrix, tp)}
        # local: the template placed by the global rigid answer, refined on a cube around the AC-PC midpoint
        g = carried["rigid"]
        centre = g[[labels.index(l) for l in LABELS]].mean(0)
        placed = Volume(np.asarray(tv.data), np.linalg.inv(global_rigid) @ tv.affine, source="template")
        cube = crop_volume(volume, centre, int(local_mm), 1.0)
        carried[f"local rigid {local_mm} mm"] = carry(register_volumes(cube, placed, local, centre=centre).matrix, g)
        res = {}
        for m, pts in carried.items():
            r = pts - truth
            res[m] = {l: np.round(r[labels.index(l)], 2).tolist() for l in LABELS}
            if m.startswith("local"):  # fitted to the cube only: says nothing of the other landmarks
                continue
            res[m].update(others_median=np.round(np.median(r[others], 0), 2).tolist(),
                          others_mean=np.round(r[others].mean(0), 2).tolist(), others_n=len(others),
                          others={labels[i]: np.round(r[i], 2).tolist() for i in others})
        out[name] = res
    return out


def figure(path: Path, images: dict, answers: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(6 * len(images), 5))
    for ax, (name, (volume, lm)) in zip(np.atleast_1d(axes), images.items()):
        pts = lm.select(list(LABELS)).positions
        x = float(pts[:, 0].mean())
        ys, zs = np.arange(-40, 20, 0.25), np.arange(-25, 20, 0.25)
        Y, Z = np.meshgrid(ys, zs, indexing="xy")
        world = np.stack([np.full_like(Y, x), Y, Z], -1).reshape(-1, 3)
        inv = np.linalg.inv(volume.affine)
        img = map_coordinates(np.asarray(volume.data, np.float32), (world @ inv[:3, :3].T + inv[:3, 3]).T, order=1)
        ax.imshow(img.reshape(Y.shape), origin="lower", extent=(ys[0], ys[-1], zs[0], zs[-1]), cmap="gray")
        ax.plot(pts[:, 1], pts[:, 2], "+", color="lime", ms=14, mew=2, label="annotation")
        if answers and name in answers:
            a = np.array([answers[name][l] for l in LABELS])
            ax.plot(a[:, 1], a[:, 2], "x", color="red", ms=11, mew=2, label="agents' answer")
        ax.set_title(f"{name}, sagittal at x = {x:.1f} mm")
        ax.set_xlabel("y (mm, anterior +)")
        ax.set_ylabel("z (mm, superior +)")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained AC/PC landmark run: add its answers on Colin27")
    ap.add_argument("--reach", type=float, default=4.0, help="half length of each line, mm")
    ap.add_argument("--disk", type=float, default=1.0, help="radius of the disk averaged across the line, mm")
    ap.add_argument("--near", type=float, default=2.0, help="the bundle's peak is looked for within this many mm, mm")
    ap.add_argument("--out", default=str(RESULTS / "commissure_offsets.json"))
    ap.add_argument("--figure", help="write a sagittal PNG here")
    ap.add_argument("--registration", action="store_true",
                    help="also carry the template's landmarks to Colin27 by intensity registration (global and local)")
    ap.add_argument("--local-mm", type=int, default=48, help="side of the cube of the local registration, mm")
    args = ap.parse_args(argv)

    from jaxmed.data import afids, colin27

    images = {"template (MNI152NLin2009cAsym)": afids.load(), "colin27": colin27.load("ch2"),
              "colin27-bet": colin27.load("ch2bet")}
    result = {"date": time.strftime("%Y-%m-%dT%H:%M"), "reach_mm": args.reach, "disk_mm": args.disk, "near_mm": args.near,
              "offsets_mm": {name: offsets_of(v, lm, args.reach, args.disk, args.near) for name, (v, lm) in images.items()},
              "meaning": "bundle centre minus annotation, [dy, dz] mm, world RAS; answers minus annotation [dx, dy, dz] mm"}
    answers = None
    if args.run:
        answers = run_answers(args.run)
        truth = images["colin27"][1]
        result["run"] = args.run
        result["answer_minus_annotation_mm"] = {
            name: {l: np.round(np.asarray(a[l]) - truth.select([l]).positions[0], 2).tolist() for l in LABELS}
            for name, a in answers.items()}
    if args.registration:
        colin = {k: v for k, v in images.items() if k.startswith("colin27")}
        result["registration_minus_annotation_mm"] = registration_offsets(images["template (MNI152NLin2009cAsym)"], colin,
                                                                          args.local_mm)
        for name, methods in result["registration_minus_annotation_mm"].items():
            for m, r in methods.items():
                others = f", median of {r['others_n']} others {r['others_median']}" if "others_n" in r else ""
                print(f"{name}, {m} registration: AC {r['AC']}, PC {r['PC']}{others} mm")
    for name, off in result["offsets_mm"].items():
        print(f"{name}: " + "; ".join(f"{l} centre - annotation {o} mm" for l, o in off.items()))
    for name, off in result.get("answer_minus_annotation_mm", {}).items():
        print(f"{name} answers: " + "; ".join(f"{l} answer - annotation {o} mm" for l, o in off.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    if args.figure:
        figure(Path(args.figure), {"template": images["template (MNI152NLin2009cAsym)"], "colin27": images["colin27"]},
               answers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
