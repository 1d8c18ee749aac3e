"""A registration checkpoint (``registration-v0``) on a labelled set: the atlas registered to real subjects.

``jaxmed evaluate RUN --data SPEC`` for a registration run. The run's template (the atlas its
training subjects were made from, conformed to the run's voxel size) is the fixed image; each
subject of the set, placed under ``n_poses`` known rigid poses ``G`` (seeded, uniform in the run's
``±max_translation_mm`` / ``±max_rotation_deg`` about the template's grid centre), is the moving
image. The posed subject is what a scanner would store and ``jaxmed register`` read: the subject's
voxels with the affine ``G A``, conformed again to the run's voxel size (a second trilinear
interpolation) and percentile-normalised again (:func:`jaxmed.data.load_image`'s steps; the agents
are sensitive to that normalisation, which a larger, partly empty field of view shifts). Two brains do not match
under any rigid transform, so an answer ``T`` (fixed world -> moving world) is scored on the
landmarks the template and the subject share (``L_t``, ``L_s``; world RAS mm):

* ``tre_mm``: mean of ``|T L_t - G L_s|``, where the answer carries each template landmark against
  where it lies on the posed subject; its floor is the best rigid fit;
* ``to_best_mm``: mean of ``|T L_t - T* L_t|`` with ``T* = G R*`` and ``R*`` the least-squares rigid
  map of ``L_t`` onto ``L_s`` (:func:`jaxmed.data.geometry.best_rigid`), with ``rotation_deg`` the angle of ``T*^-1 T``
  and ``success`` = ``to_best_mm < 2``;
* ``to_pose_mm``: mean of ``|T L_t - G L_t|``, how far the answer is from undoing the pose alone (for
  subjects already in the template's space, e.g. MNI-registered scans, what an intensity method aims at).

Methods on the same pairs: ``before`` (the identity), the agent (every seed with ``seeds``: greedy
episode from the identity about the template's grid centre, :class:`RegistrationAgent`) and, with
``baselines``, the optax registrations (:func:`jaxmed.registration_baseline.register_volumes`, NCC and
mutual information). Written as ``eval_<set>.md`` and ``eval_<set>.json`` (every pair's scores).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmed.data.geometry import apply_affine, best_rigid
from jaxmed.errors import ConfigError
from jaxmed.registration_agent import ENV_NAME, draw_poses

SUCCESS_MM = 2.0
BASELINES = ("ncc", "mi")


def is_registration_run(run_dir) -> bool:
    """Whether a run directory's config trains ``registration-v0``."""
    from jaxmed.runs import run_env_name

    return run_env_name(run_dir) == ENV_NAME


def pair_scores(matrix, best, tpl_points, truth_points, pose=None) -> dict:
    """Scores of one answer ``matrix`` (fixed world -> moving world) against the best rigid fit
    ``best`` and the posed subject's landmarks ``truth_points`` (module docstring); with ``pose``
    (``G``) also ``to_pose_mm``."""
    carried = apply_affine(matrix, tpl_points)
    residual = np.linalg.inv(best) @ matrix
    cos = np.clip((np.trace(residual[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)
    err = float(np.linalg.norm(carried - apply_affine(best, tpl_points), axis=1).mean())
    out = {"tre_mm": float(np.linalg.norm(carried - truth_points, axis=1).mean()), "to_best_mm": err,
           "rotation_deg": float(np.degrees(np.arccos(cos))), "success": bool(err < SUCCESS_MM)}
    if pose is not None:
        out["to_pose_mm"] = float(np.linalg.norm(carried - apply_affine(pose, tpl_points), axis=1).mean())
    return out


def pose_matrix(params, centre) -> np.ndarray:
    """``(4, 4)`` float64 rigid matrix of ``params`` ``(6,)`` about ``centre`` (:func:`jaxmed.ops.rigid.rigid_matrix`)."""
    from jaxmed.ops.rigid import rigid_matrix

    return np.asarray(rigid_matrix(np.asarray(params, np.float32), np.asarray(centre, np.float32)), np.float64)


def summarise(rows: Sequence[dict]) -> dict:
    """Mean / median / p90 of the scores of ``rows`` (one dict per pair) and the success rate."""
    out = {"n": len(rows)}
    for key in ("tre_mm", "to_best_mm", "to_pose_mm", "rotation_deg"):
        v = np.array([r[key] for r in rows if key in r], np.float64)
        if v.size:
            out[key] = {"mean": float(v.mean()), "median": float(np.median(v)), "p90": float(np.percentile(v, 90))}
    out["success"] = float(np.mean([r["success"] for r in rows]))
    return out


def register_pair(fixed, moving, agents, baselines: Sequence[str] = BASELINES) -> list[tuple[str, np.ndarray, float | None]]:
    """Every method's answer for one pair (conformed :class:`~jaxmed.data.Volume` s): ``[(method,
    matrix (4, 4) fixed world -> moving world, seconds or None)]`` for the identity (``"before
    (identity)"``), each ``(name, RegistrationAgent)`` of ``agents`` (its episode run once untimed, so
    that a new shape compiles outside the timing, then timed) and each optax loss of ``baselines``
    (``"optax <loss>"``; its seconds include compilation where a shape is new)."""
    from jaxmed.registration_baseline import BaselineConfig, register_volumes

    answers = [("before (identity)", np.eye(4), None)]
    for name, agent in agents:
        agent.register(fixed, moving)
        ans = agent.register(fixed, moving)
        answers.append((name, ans.matrix, ans.seconds))
    for b in baselines:
        res = register_volumes(fixed, moving, BaselineConfig(loss=b))
        answers.append((f"optax {b}", res.matrix, float(res.seconds)))
    return answers


def evaluate_registration_set(run, spec: str, *, n_poses: int = 4, seed: int = 0, baselines: Sequence[str] = BASELINES,
                              seeds: bool = False, intensity_scales=None, starts: int = 1, progress=None) -> dict:
    """Score a registration run ``run = (cfg, network, params)`` (:func:`jaxmed.runs.load_params`) on
    the labelled set ``spec`` (``test``, ``colin27``, a folder, ...; :func:`jaxmed.evaluation.resolve_set`)
    as the module docstring says; ``intensity_scales`` / ``starts``: the agents' robust inference
    (:class:`~jaxmed.registration_agent.RegistrationAgent`). Returns ``{"set", "subjects", "labels", "poses", "methods":
    {name: summary}, "pairs": {name: [row]}, "table", ...}``."""
    from jaxmed import experiment as ex
    from jaxmed.data import Volume, conform, normalise_intensity, run_data, sources
    from jaxmed.evaluation import resolve_set
    from jaxmed.registration_agent import RegistrationAgent
    from jaxmed.registration_baseline import grid_centre

    cfg = run[0]
    if cfg.env_name != ENV_NAME:
        raise ConfigError(f"this run trained {cfg.env_name!r}, not {ENV_NAME!r}")
    for b in baselines:
        if b not in BASELINES:
            raise ConfigError(f"unknown registration baseline {b!r}; available: {', '.join(BASELINES)}")
    reference = run_data.template(cfg.data)
    if reference is None:
        raise ConfigError(f"data.source {cfg.data.source} has no template: registration evaluation registers the run's "
                          f"template to each subject (files source: set data.template)")
    labels = list(reference[1].labels)
    if spec != "test":
        have = set(sources.from_spec(spec, cfg.data.spacing).labels())
        labels = [lb for lb in labels if lb in have]
        if len(labels) < 3:
            raise ConfigError(f"--data {spec}: its subjects share {len(labels)} landmark(s) with the run's template "
                              f"({', '.join(labels) or 'none'}); scoring a rigid registration needs at least 3")
    name, subjects, template = resolve_set(cfg, spec, labels)
    fixed, tpl_landmarks = template
    tpl_points = tpl_landmarks.select(labels).positions
    env_params = ex.make_env(cfg)[1]
    poses = draw_poses(n_poses, seed, float(env_params.max_translation_mm), float(env_params.max_rotation_deg))
    centre = grid_centre(fixed)
    members = range(cfg.train.seeds) if seeds else [0]
    agents = [(f"agent seed {s}" if seeds and cfg.train.seeds > 1 else "agent",
               RegistrationAgent(run, seed=s, intensity_scales=intensity_scales, starts=starts)) for s in members]
    methods = ["before (identity)", *[n for n, _ in agents], *[f"optax {b}" for b in baselines]]
    pairs: dict[str, list] = {m: [] for m in methods}
    seconds: dict[str, list] = {m: [] for m in methods[1:]}
    for subject in subjects:
        volume, truth = subject.volume, subject.landmarks.select(labels).positions
        r_star = best_rigid(tpl_points, truth)
        for k, params in enumerate(poses):
            g = pose_matrix(params, centre)
            moving = normalise_intensity(conform(Volume(volume.data, g @ volume.affine, source=f"{volume.source} (pose {k})"),
                                                 cfg.data.spacing))
            best, moved_truth = g @ r_star, apply_affine(g, truth)
            tag = {"subject": subject.name, "pose": k}
            for method, matrix, sec in register_pair(fixed, moving, agents, baselines):
                pairs[method].append({**tag, **pair_scores(matrix, best, tpl_points, moved_truth, g)})
                if sec is not None:
                    seconds[method].append(sec)
        if progress is not None:
            progress(f"{name} / {subject.name}: " + ", ".join(
                f"{m} {np.mean([r['to_best_mm'] for r in pairs[m] if r['subject'] == subject.name]):.2f} mm" for m in methods))
    summary = {m: {**summarise(rows), **({"seconds_per_pair": float(np.median(seconds[m]))} if seconds.get(m) else {})}
               for m, rows in pairs.items()}
    result = {"set": name, "run_env": cfg.env_name, "subjects": [s.name for s in subjects], "labels": labels,
              "agent_episodes": {"intensity_scales": list(agents[0][1].intensity_scales), "starts": int(starts)},
              "poses": poses.tolist(), "pose_seed": int(seed), "methods": summary, "pairs": pairs}
    result["table"] = registration_table(result)
    return result


def _episodes_note(episodes) -> str:
    """``"; agents: ..."`` when the agents pooled several episodes per pair, else ``""``."""
    if not episodes or (len(episodes["intensity_scales"]) == 1 and episodes["starts"] == 1):
        return ""
    scales = ", ".join(f"{v:g}" for v in episodes["intensity_scales"])
    return f"; agents: intensity copies x {scales}, {episodes['starts']} start(s) each, answers pooled"


def registration_table(result: dict) -> str:
    """Markdown table of :func:`evaluate_registration_set`'s result."""
    lines = [f"**{result['set']}**: the run's template registered to {len(result['subjects'])} subject(s) x "
             f"{len(result['poses'])} rigid poses, scored on {len(result['labels'])} shared landmarks (mm)"
             + _episodes_note(result.get("agent_episodes")), "",
             "| method | TRE mean / median | error to best rigid fit mean / median / p90 | error to pose | rotation error (deg) | "
             f"< {SUCCESS_MM:g} mm | s / pair |", "|---|---|---|---|---|---|---|"]
    for m, s in result["methods"].items():
        sec = f"{s['seconds_per_pair']:.3f}" if "seconds_per_pair" in s else "—"
        t, b, p = s["tre_mm"], s["to_best_mm"], s["to_pose_mm"]
        lines.append(f"| {m} | {t['mean']:.2f} / {t['median']:.2f} | {b['mean']:.2f} / {b['median']:.2f} / {b['p90']:.2f} | "
                     f"{p['mean']:.2f} | {s['rotation_deg']['mean']:.2f} | {100 * s['success']:.0f} % | {sec} |")
    return "\n".join(lines)


def evaluate_registration_sets(run_dir, specs: Sequence[str], *, out_dir=None, overwrite: bool = False, n_poses: int = 4,
                               seed: int = 0, registration: bool = True, seeds: bool = False, intensity_scales=None,
                               starts: int = 1, progress=None) -> list[dict]:
    """:func:`evaluate_registration_set` of the run in ``run_dir`` on each spec, written to
    ``eval_<set>.md`` / ``.json`` in ``out_dir`` (default: the run directory; every target checked
    before anything is computed). ``registration=False`` leaves the optax baselines out."""
    from jaxmed.errors import OverwriteError
    from jaxmed.evaluation import set_name
    from jaxmed.runs import load_params

    out = Path(out_dir) if out_dir else Path(run_dir)
    if not overwrite:
        for spec in specs:
            for ext in (".md", ".json"):
                p = out / f"eval_{set_name(spec)}{ext}"
                if p.exists():
                    raise OverwriteError(f"{p}: already exists; pass --overwrite to replace it")
    run = load_params(run_dir)
    results = []
    for spec in specs:
        t0 = time.perf_counter()
        res = evaluate_registration_set(run, spec, n_poses=n_poses, seed=seed, baselines=BASELINES if registration else (),
                                        seeds=seeds, intensity_scales=intensity_scales, starts=starts, progress=progress)
        res["wall_s"] = time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        (out / f"eval_{res['set']}.json").write_text(json.dumps(res, indent=1))
        (out / f"eval_{res['set']}.md").write_text(res["table"] + "\n")
        results.append(res)
    return results
