"""View-plane agents on a real brain they never saw: the ACPC axial and mid-sagittal planes of Colin27.

The plane agents (``configs/afids_plane_dqn_cpu.yaml``, Alansary et al. 2018) train on synthetic
warps of the MNI152NLin2009cAsym template. Here each seed of a trained plane run answers Colin27
(with skull and skull-stripped, ``jaxmed data fetch colin27``) exactly as ``jaxmed plane`` does (no
ground truth: starts around the template's plane placed about the image centre, robust mean of the
end planes, :func:`jaxmed.commands.plane.find_plane`); optionally also the oblique Colin27 of
``benchmarks/real_scan_variants.py`` (turned 15 degrees, moved ~14 mm), where the template's plane is
far from the head's. The true plane is fitted to Colin27's own AFIDs (:mod:`jaxmed.data.planes`).
Beside the agent:

* **template plane (no model)**: the template's plane in world coordinates;
* **affine registration**: the template's AFIDs carried to the image by the 12-dof affine baseline
  (:func:`jaxmed.registration_baseline.transfer_landmarks`), the plane fitted to them.

Errors: ``angle_deg`` between the normals and ``landmark_distance_mm``, the mean distance of the
plane's reference landmarks (AC and PC; the 10 midline AFIDs) to the found plane, the metric of
Alansary et al. 2018 (1.98 mm ACPC, 1.53 mm mid-sagittal on real brain MRI).

    python benchmarks/plane_real.py --run runs/plane_acpc_2seeds runs/plane_msp_2seeds --oblique

writes ``benchmarks/results/plane_real.json`` and ``.md`` (``--out``).
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


def plane_metrics(definition, points, normal, offset) -> dict:
    """``{angle_deg, landmark_distance_mm}`` of the plane ``(normal, offset)`` against the true plane
    of ``points`` ``(K, 3)`` (world RAS mm, ordered as ``definition.labels``)."""
    from jaxmed.data.planes import plane_errors

    tn, td = definition.plane(points)
    angle, _ = plane_errors(np.asarray(normal, np.float32), np.float32(offset), tn, td, definition.reference_point(points, tn, td))
    return {"angle_deg": float(angle), "landmark_distance_mm": float(definition.landmark_distance(points, normal, offset))}


def images(oblique: bool, root: Path) -> list[tuple[str, Path, np.ndarray | None]]:
    """``(name, image file, world move (4, 4) or None)``: Colin27 with and without skull, and with
    ``oblique`` their oblique versions (written under ``root``)."""
    import nibabel as nib
    from real_scan_variants import variant

    from jaxmed.data import colin27

    files = colin27.fetch(quiet=True)
    out = [("colin27", files["ch2"], None), ("colin27-bet", files["ch2bet"], None)]
    if oblique:
        for name, key in (("colin27 oblique", "ch2"), ("colin27-bet oblique", "ch2bet")):
            img = nib.load(str(files[key]))
            data, affine, _ = variant("oblique", np.asarray(img.dataobj), img.affine, np.zeros((0, 3)))
            path = root / f"{key}_oblique.nii.gz"
            nib.save(nib.Nifti1Image(data, affine), str(path))
            out.append((name, path, affine @ np.linalg.inv(img.affine)))
    return out


def evaluate_run(run_dir: Path, subjects, registration: bool, n_starts: int, log) -> dict:
    """Every seed of the plane run ``run_dir`` and both baselines on each of ``subjects``."""
    from jaxmed import experiment as ex
    from jaxmed.agents import learners
    from jaxmed.commands.plane import PlaneSearch, template_prior
    from jaxmed.data import colin27, conform, load_image, run_data
    from jaxmed.registration_baseline import transfer_landmarks
    from jaxmed.runs import load_params, seed_params

    cfg, network, params = load_params(run_dir)
    env, _, eval_params = ex.make_env(cfg)
    definition = env.definition
    labels = list(definition.labels)
    tpl_volume, tpl_landmarks = run_data.template(cfg.data)
    tpl_points = tpl_landmarks.select(labels).positions
    tpl_n, tpl_d = definition.from_landmarks(tpl_landmarks)
    tpl_conformed = conform(tpl_volume, cfg.data.spacing)
    truth = colin27.landmarks().select(labels).positions
    out = {"run": str(run_dir), "plane": definition.name, "seeds": cfg.train.seeds, "starts": n_starts, "subjects": {}}
    members = [seed_params(cfg, params, s) for s in range(cfg.train.seeds)]
    search = dict(factors=tuple(cfg.data.factors), dtype=cfg.data.dtype, n_starts=n_starts,
                  prior=template_prior(cfg.data, env), full_scale=cfg.data.intensity_ceiling)
    searcher = PlaneSearch(env, eval_params, lambda p, obs: learners.policy_action(cfg.train.learner, network, p, obs))
    for name, path, move in subjects:
        points = truth if move is None else truth @ move[:3, :3].T + move[:3, 3]
        volume = conform(load_image(path), cfg.data.spacing)
        row = {"agent": [], "agent_seconds": []}
        searcher.find(volume, members[0], **search)  # compiles for this image's shape (untimed)
        for p in members:
            t0 = time.perf_counter()
            res = searcher.find(volume, p, **search)
            row["agent_seconds"].append(time.perf_counter() - t0)
            row["agent"].append(plane_metrics(definition, points, res["normal"], res["offset"]))
        row["template plane (no model)"] = plane_metrics(definition, points, tpl_n, tpl_d)
        if registration:
            carried, reg = transfer_landmarks(tpl_conformed, tpl_points, volume)
            n, d = definition.plane(carried)
            row["affine registration"] = plane_metrics(definition, points, np.asarray(n), float(d))
            row["registration_seconds"] = float(reg.seconds)
        out["subjects"][name] = row
        log(f"{definition.name} / {name}: agent {[round(a['landmark_distance_mm'], 2) for a in row['agent']]} mm, "
            f"template {row['template plane (no model)']['landmark_distance_mm']:.2f} mm")
    return out


def markdown(result: dict) -> str:
    lines = ["| plane | image | agent angle (°) | agent landmark distance (mm) | template plane: angle / distance | "
             "affine registration: angle / distance | agent s / image (after compilation) |", "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        for name, row in r["subjects"].items():
            a = np.array([[x["angle_deg"], x["landmark_distance_mm"]] for x in row["agent"]])
            t = row["template plane (no model)"]
            g = row.get("affine registration")
            lines.append(f"| {r['plane']} | {name} | {a[:, 0].mean():.2f} ± {a[:, 0].std():.2f} | "
                         f"{a[:, 1].mean():.2f} ± {a[:, 1].std():.2f} | "
                         f"{t['angle_deg']:.2f} / {t['landmark_distance_mm']:.2f} | "
                         + (f"{g['angle_deg']:.2f} / {g['landmark_distance_mm']:.2f}" if g else "—")
                         + f" | {np.mean(row['agent_seconds']):.2f} |")
    m = result["machine"]
    runs = ", ".join("`" + r["run"] + "`" for r in result["runs"])
    return (f"Runs {runs} (mean ± std over each run's seeds; "
            f"{result['runs'][0]['starts']} starts around the template plane per image); {m.get('cpu', '?')}, "
            f"{m.get('cores', '?')} cores, {str(m.get('date', ''))[:16]}, commit {m.get('git_commit', '?')}.\n"
            f"Command: `{result['command']}`\n\n" + "\n".join(lines))


def main(argv=None) -> int:
    from common import write_result

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, nargs="+", required=True, help="trained plane-v0 runs (every seed is evaluated)")
    p.add_argument("--oblique", action="store_true", help="also the oblique Colin27 of benchmarks/real_scan_variants.py")
    p.add_argument("--starts", type=int, default=9, help="start planes around the template plane (jaxmed plane's default)")
    p.add_argument("--no-registration", action="store_true", help="skip the affine registration baseline")
    p.add_argument("--out", type=Path, default=RESULTS / "plane_real.json")
    args = p.parse_args(argv)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        subjects = images(args.oblique, Path(tmp))
        runs = [evaluate_run(r, subjects, not args.no_registration, args.starts, log) for r in args.run]
    result = {"runs": runs}
    write_result(args.out, result, markdown, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
