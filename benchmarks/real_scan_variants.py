"""One real brain acquired differently: a landmark run on Colin27 as other scanners would store it.

Clinical scans differ from the clean Colin27 volumes in ways that need no new anatomy: an oblique
acquisition grid, thick slices, a field of view that cuts the head, another voxel order, a bias
field and noise. This script writes such versions of Colin27 (with skull and skull-stripped, from
``jaxmed data fetch colin27``) as NIfTI files with their AC / PC in a ``.fcsv`` (world RAS mm, moved
with the head where the variant moves it), one folder of subject folders per variant, then
evaluates every seed of one or more runs on each folder exactly as ``jaxmed evaluate RUN --data
FOLDER`` reads a user's scans (:mod:`jaxmed.data.sources.files`: read, reoriented, resampled to
the run's spacing, normalised), beside the template prior and the affine registration baseline
(:func:`benchmarks.real_anatomy.evaluate`). Variants:

* ``as-is``: the two files unchanged (the reference row);
* ``lps-storage``: the voxel array stored in LPS order (first two axes reversed, affine to match):
  the same image, another storage; the answers should not move;
* ``oblique``: the grid turned by 15 degrees about an oblique axis and shifted by (8, -6, 10) mm in
  the world (voxels unchanged, the affine rotated: the head lies tilted in scanner space, as in an
  oblique acquisition);
* ``thick-axial``: 4 mm axial slices (each the mean of 4 consecutive 1 mm slices);
* ``cropped``: the field of view cut 35 mm above the lowest and 20 mm below the highest slice and
  15 mm from each side;
* ``bias-noise``: a smooth multiplicative bias field (0.75 to 1.25 across the head) and Rician
  noise of 3 % of the 99th intensity percentile.

    python benchmarks/real_scan_variants.py --run runs/acpc_avg120_2seeds runs/acpc_avg120_seed2

writes ``benchmarks/results/real_scan_variants.json`` and ``.md`` (``--out``); the images go to
``--data-dir`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"
IMAGES = ("ch2", "ch2bet")
LABELS = ("AC", "PC")
VARIANTS = ("as-is", "lps-storage", "oblique", "thick-axial", "cropped", "bias-noise")


def rotation(axis, degrees: float) -> np.ndarray:
    """``(3, 3)`` rotation by ``degrees`` about ``axis``."""
    from scipy.spatial.transform import Rotation

    k = np.asarray(axis, np.float64)
    return Rotation.from_rotvec(np.radians(degrees) * k / np.linalg.norm(k)).as_matrix()


def variant(name: str, data: np.ndarray, affine: np.ndarray, points: np.ndarray, seed: int = 0):
    """``(data, affine, points)`` of one variant of an image ``data`` ``(X, Y, Z)`` (RAS voxel
    order) with voxel-to-world ``affine`` ``(4, 4)`` and landmarks ``points`` ``(n, 3)`` world RAS mm."""
    data = np.asarray(data)
    if name == "as-is":
        return data, affine, points
    if name == "lps-storage":
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = np.array(data.shape[:2]) - 1
        return np.ascontiguousarray(data[::-1, ::-1]), affine @ flip, points
    if name == "oblique":
        move = np.eye(4)
        move[:3, :3] = rotation((0.6, 1.0, 0.3), 15.0)
        move[:3, 3] = (8.0, -6.0, 10.0)
        return data, move @ affine, points @ move[:3, :3].T + move[:3, 3]
    if name == "thick-axial":
        k = 4
        n = data.shape[2] // k
        thick = data[:, :, : n * k].astype(np.float32).reshape(data.shape[0], data.shape[1], n, k).mean(-1)
        scale = np.diag([1.0, 1.0, float(k), 1.0])
        scale[2, 3] = (k - 1) / 2  # slice centre: the middle of its k thin slices
        return thick, affine @ scale, points
    if name == "cropped":
        lo, hi = np.array([15, 15, 35]), np.array(data.shape) - np.array([15, 15, 20])
        shift = np.eye(4)
        shift[:3, 3] = lo
        return np.ascontiguousarray(data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]), affine @ shift, points
    if name == "bias-noise":
        rng = np.random.default_rng(seed)
        grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in data.shape], indexing="ij")
        c = rng.normal(size=(3, 2))
        field = sum(c[i, 0] * g + c[i, 1] * (g**2 - 1 / 3) for i, g in enumerate(grids))
        field = 1.0 + 0.25 * field / np.abs(field).max()
        x = data.astype(np.float32) * field
        sigma = 0.03 * float(np.percentile(data, 99))
        noisy = np.sqrt((x + rng.normal(0, sigma, x.shape)) ** 2 + rng.normal(0, sigma, x.shape) ** 2)
        return noisy.astype(np.float32), affine, points
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def write_variants(root: Path, variants=VARIANTS) -> dict[str, Path]:
    """Write every variant of both Colin27 images under ``root/<variant>/<image>/`` (``<image>.nii.gz``
    + ``<image>.fcsv`` with AC and PC); ``{variant: folder}``."""
    import nibabel as nib

    from jaxmed.data import Landmarks, colin27
    from jaxmed.data.landmark_files import write_landmarks

    files = colin27.fetch(quiet=True)
    truth = colin27.landmarks().select(list(LABELS))
    loaded = {image: nib.load(str(files[image])) for image in IMAGES}
    arrays = {image: np.asarray(img.dataobj) for image, img in loaded.items()}
    folders = {}
    for v in variants:
        for image in IMAGES:
            data, affine, points = variant(v, arrays[image], loaded[image].affine, truth.positions)
            sub = root / v / image
            sub.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine), str(sub / f"{image}.nii.gz"))
            write_landmarks(Landmarks(LABELS, points, source=f"colin27 {v}"), sub / f"{image}.fcsv", overwrite=True)
        folders[v] = root / v
    return folders


def table(result: dict) -> str:
    """Markdown: one row per variant and image, AC / PC agent mean ± std over seeds beside the prior
    and the affine registration."""
    lines = ["| variant | image | AC agent (mm) | AC prior | AC affine reg. | PC agent (mm) | PC prior | PC affine reg. | s / subject |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v, r in result["variants"].items():
        for i, image in enumerate(r["subjects"]):
            cells = [v, image]
            for j, _ in enumerate(r["labels"]):
                errs = np.array([np.asarray(p["errors_mm"])[i, j] for p in r["per_seed"]])
                cells.append(f"{errs.mean():.2f} ± {errs.std():.2f}")
                for m in ("prior", "registration"):
                    b = r["baselines"].get(m)
                    cells.append(f"{np.asarray(b)[i, j]:.2f}" if b is not None else "—")
            cells.append(f"{np.mean([p['agent_seconds_per_subject'] for p in r['per_seed']]):.3f}")
            lines.append("| " + " | ".join(cells) + " |")
    m = result["machine"]
    head = (f"Runs {', '.join(f'`{r}`' for r in result['runs'])} ({result['seeds']} seeds, mean ± std over seeds); "
            f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {str(m.get('date', ''))[:16]}, commit {m.get('git_commit', '?')}.\n"
            f"Command: `{result['command']}`\n\n")
    return head + "\n".join(lines)


def main(argv=None) -> int:
    from common import write_result
    from real_anatomy import evaluate

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, nargs="+", required=True, help="trained AC / PC runs (every seed of each is evaluated)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--no-registration", action="store_true", help="skip the affine registration baseline")
    p.add_argument("--data-dir", type=Path, help="where the variant images are written (default: a temporary folder)")
    p.add_argument("--out", type=Path, default=RESULTS / "real_scan_variants.json")
    args = p.parse_args(argv)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or Path(tmp)
        folders = write_variants(root, args.variants)
        specs = [str(folders[v]) for v in args.variants]
        parts = [evaluate(run, specs, not args.no_registration and k == 0, "median", log) for k, run in enumerate(args.run)]
    result = {"runs": [str(r) for r in args.run], "seeds": sum(q["seeds"] for q in parts), "variants": {}}
    for v, spec in zip(args.variants, specs):
        sets = [q["sets"][spec] for q in parts]
        first = sets[0]
        result["variants"][v] = {"subjects": first["subjects"], "labels": first["labels"], "baselines": first["baselines"],
                                 "per_seed": [s for q in sets for s in q["per_seed"]]}
    write_result(args.out, result, table, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
