"""Rigid registration of a real brain to the atlas: registration agents and the optax baselines on Colin27.

The registration agents of ``configs/afids_registration_dqn_cpu.yaml`` learn on synthetic subjects of
the AFIDs MNI152NLin2009cAsym T1 template, each registered to a rigidly moved copy of itself. Here
the pairs are what a user registers: the fixed image is the template (the atlas, ``jaxmed data fetch
afids``) and the moving image is another person's brain, Colin27 (``jaxmed data fetch colin27``,
with skull and skull-stripped), placed in the scanner under a known rigid pose ``G``: uniform in
``±20 mm`` per axis and ``±20°`` per Euler angle about the atlas grid centre, as in training. The
moved image is written as NIfTI (voxels unchanged, affine ``G A``) and read back with
:func:`jaxmed.data.load_image` at the run's voxel size, as ``jaxmed register`` reads a user's files.

Ground truth is anatomical: the 32 AFIDs of the template ``L_t`` and of Colin27 ``L_c`` (moved:
``G L_c``). Two brains do not match under any rigid transform, so every method is scored two ways:

* **TRE (mm)**: mean over the 32 AFIDs of ``|T L_t - G L_c|``, the distance between where the answer
  ``T`` (fixed world -> moving world) carries each atlas landmark and where that landmark is on the
  moved Colin27. Its floor is the best rigid fit ``T* = G R*`` (``R*``: least-squares rigid map of the
  32 template AFIDs onto Colin27's), the anatomical difference no rigid transform removes;
* **error to the best rigid fit (mm)**: mean over the 32 template AFIDs of ``|T L_t - T* L_t|`` (how
  far the answer is from the best rigid alignment; 0 for ``T*``), with the rotation angle (degrees)
  of ``T*^-1 T`` and success = error < 2 mm;
* **error to the pose (mm)**: mean over the 32 template AFIDs of ``|T L_t - G L_t|``: how far the
  answer is from undoing the pose alone. Colin27 and the template both lie in MNI space (each was
  brought there by an intensity-based registration), so ``G`` is the alignment an intensity method
  aims at; it differs from ``T*`` by a fixed amount (printed with the table).

Methods: identity (``before``), each seed of every ``--run`` (greedy episode from the identity about
the atlas grid centre, :class:`jaxmed.registration_agent.RegistrationAgent`; with ``--lookahead K`` the
look-ahead search too; with ``--intensity-scales S ...`` / ``--starts N`` also the episodes of every
intensity copy and start pooled, :func:`jaxmed.registration_agent.pool_rigid`; with ``--scaled S ...``
also every agent on the moving image with its intensities times ``S``), the optax baselines
(:func:`jaxmed.registration_baseline.register_volumes`, NCC and mutual information, the ``jaxmed
register --method optax`` defaults). Seconds per pair (the
median over pairs) exclude compilation for the agents (each pair is run twice, the first untimed:
every pose's conformed grid may have a new shape) and include it for the optax baselines where a
shape is new.

    python benchmarks/registration_real.py --run runs/registration_2seeds [--poses 8] [--lookahead 3]
        [--intensity-scales 0.7 1 1.3 --starts 3]

writes ``benchmarks/results/registration_real.json`` and ``.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jaxmed.data.geometry import apply_affine  # noqa: E402
from jaxmed.registration_evaluation import (  # noqa: E402
    SUCCESS_MM,
    best_rigid,
    draw_poses,
    pair_scores,
    pose_matrix,
    register_pair,
    summarise,
)

RESULTS = Path(__file__).resolve().parent / "results"
IMAGES = (("colin27", "ch2"), ("colin27-bet", "ch2bet"))


def moved_images(root: Path, images: dict, poses: np.ndarray, centre: np.ndarray) -> list[dict]:
    """Every image of ``images`` (``{name: NIfTI path}``) under every pose (``(n, 6)`` rigid parameters
    about ``centre``, world mm), written to ``root`` as NIfTI with the voxels unchanged and the affine
    ``G A``: ``[{image, pose, params, G (4, 4), path}]``. The anatomy at world point ``y`` of an image
    is at ``G y`` in its moved copy."""
    import nibabel as nib

    out = []
    for name, file in images.items():
        img = nib.load(str(file))
        data = np.asarray(img.dataobj)
        for i, pose in enumerate(poses):
            g = pose_matrix(pose, centre)
            path = root / f"{name}_pose{i}.nii.gz"
            nib.save(nib.Nifti1Image(data, g @ img.affine), str(path))
            out.append({"image": name, "pose": i, "params": [float(v) for v in pose], "G": g, "path": path})
    return out


def run(args, log=print) -> dict:
    from jaxmed.data import afids, colin27, load_image
    from jaxmed.registration_agent import RegistrationAgent
    from jaxmed.registration_baseline import grid_centre
    from jaxmed.runs import load_params

    runs = [(Path(r), load_params(r)) for r in args.run]
    spacings = {float(cfg.data.spacing) for _, (cfg, _, _) in runs}
    if len(spacings) > 1:
        raise SystemExit(f"runs with different voxel sizes {sorted(spacings)}: give runs of one spacing")
    spacing = spacings.pop() if spacings else float(args.spacing)
    tpl_path = afids.fetch(quiet=True)["template"]
    fixed = load_image(tpl_path, spacing=spacing)
    _, tpl_lm = afids.load()
    labels = list(tpl_lm.labels)
    truth = colin27.landmarks().select(labels).positions
    tpl_points = tpl_lm.positions
    r_star = best_rigid(tpl_points, truth)
    floor = float(np.linalg.norm(apply_affine(r_star, tpl_points) - truth, axis=1).mean())
    pose_to_best = float(np.linalg.norm(apply_affine(r_star, tpl_points) - tpl_points, axis=1).mean())
    centre = grid_centre(fixed)
    poses = draw_poses(args.poses, args.seed)
    methods: dict[str, list[dict]] = {}
    seconds: dict[str, list[float]] = {}
    agents = []
    for run_dir, run_tuple in runs:
        for s in range(run_tuple[0].train.seeds):
            agents.append((f"agent {run_dir.name} seed {s}", RegistrationAgent(run_tuple, seed=s)))
            for scale in args.scaled:
                agents.append((f"agent {run_dir.name} seed {s}, moving x {scale:g}",
                               RegistrationAgent(run_tuple, seed=s, intensity_scales=(scale,))))
            if args.intensity_scales or args.starts > 1:
                pooled = RegistrationAgent(run_tuple, seed=s, intensity_scales=args.intensity_scales, starts=args.starts)
                agents.append((f"agent {run_dir.name} seed {s} pooled ({len(pooled.intensity_scales)} copies x {args.starts} starts)",
                               pooled))
            if args.lookahead > 1:
                agents.append((f"agent {run_dir.name} seed {s} + look-ahead {args.lookahead}",
                               RegistrationAgent(run_tuple, seed=s, lookahead=args.lookahead, depth=args.depth)))
    with tempfile.TemporaryDirectory() as tmp:
        files = colin27.fetch(quiet=True)
        pairs = moved_images(Path(tmp), {name: files[key] for name, key in IMAGES}, poses, centre)
        for pair in pairs:
            moving = load_image(pair["path"], spacing=spacing)
            g = pair["G"]
            best, moved_truth = g @ r_star, apply_affine(g, truth)
            for name, matrix, sec in register_pair(fixed, moving, agents):
                methods.setdefault(name, []).append({"image": pair["image"], "pose": pair["pose"],
                                                     **pair_scores(matrix, best, tpl_points, moved_truth, g)})
                if sec is not None:
                    seconds.setdefault(name, []).append(sec)
            log(f"{pair['image']} pose {pair['pose']}: " + ", ".join(f"{n} {m[-1]['to_best_mm']:.2f}" for n, m in methods.items()))
    summary = {name: {**summarise(rows), **({"seconds_per_pair": float(np.median(seconds[name]))} if name in seconds else {})}
               for name, rows in methods.items()}
    by_image = {img: {name: summarise([r for r in rows if r["image"] == img]) for name, rows in methods.items()}
                for img, _ in IMAGES}
    return {"runs": [str(r) for r, _ in runs], "spacing_mm": spacing, "poses": poses.tolist(),
            "pose_seed": args.seed, "landmarks": len(labels), "best_rigid_tre_mm": floor, "pose_to_best_mm": pose_to_best,
            "summary": summary,
            "by_image": by_image, "pairs": methods}


def markdown(result: dict) -> str:
    lines = [f"Atlas (AFIDs MNI T1 template) <- Colin27 under {len(result['poses'])} rigid poses per image (with skull and "
             f"skull-stripped), {result['spacing_mm']} mm; 32 AFIDs. Best rigid fit TRE (the floor): "
             f"{result['best_rigid_tre_mm']:.2f} mm; the pose G alone is {result['pose_to_best_mm']:.2f} mm from the best rigid fit.", "",
             "| method | TRE mean / median (mm) | error to best rigid fit mean / median / p90 (mm) | error to pose G (mm) | "
             f"rotation error (deg) | success < {SUCCESS_MM:g} mm | with skull: error to best fit | "
             "skull-stripped: error to best fit | s / pair |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        per = [result["by_image"][img][name]["to_best_mm"]["mean"] for img, _ in IMAGES]
        sec = f"{s['seconds_per_pair']:.3f}" if "seconds_per_pair" in s else "—"
        t, b = s["tre_mm"], s["to_best_mm"]
        lines.append(f"| {name} | {t['mean']:.2f} / {t['median']:.2f} | {b['mean']:.2f} / {b['median']:.2f} / {b['p90']:.2f} | "
                     f"{s['to_pose_mm']['mean']:.2f} | {s['rotation_deg']['mean']:.2f} | {100 * s['success']:.0f} % | "
                     f"{per[0]:.2f} | {per[1]:.2f} | {sec} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from common import write_result

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", nargs="+", default=[], help="registration-v0 run directories (every seed of each is evaluated)")
    ap.add_argument("--poses", type=int, default=8, help="rigid poses per Colin27 image")
    ap.add_argument("--seed", type=int, default=0, help="seed of the poses")
    ap.add_argument("--lookahead", type=int, default=1, help="also run the agents with look-ahead over this many actions (> 1)")
    ap.add_argument("--depth", type=int, default=2, help="look-ahead depth")
    ap.add_argument("--intensity-scales", type=float, nargs="+", metavar="S",
                    help="also run every agent pooled over copies of the moving image with its intensities times each factor")
    ap.add_argument("--starts", type=int, default=1, help="also run every agent pooled over this many starts per copy")
    ap.add_argument("--scaled", type=float, nargs="+", default=[], metavar="S",
                    help="also run every agent on the moving image with its intensities times each factor alone "
                         "(how sensitive the agents are to the intensity scale)")
    ap.add_argument("--spacing", type=float, default=2.0, help="voxel size (mm) without --run")
    ap.add_argument("--out", type=Path, default=RESULTS / "registration_real.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - t0
    write_result(args.out, result, markdown, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
