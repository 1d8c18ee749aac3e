"""A box checkpoint (``box-v0``, ``corner-pair-v0``) on a labelled set, beside box baselines.

``jaxmed evaluate RUN --data SPEC`` for a box run: the set's subjects must carry the run's structure
as surface points (``colin27`` carries its own AAL labels' points for ``aal:<name>`` structures,
:mod:`jaxmed.data.aal_targets`; ``test`` is the run's held-out synthetic subjects). On every subject,
with the target box = the bounding box of the subject's structure points (world RAS mm):

* **agent**: the greedy policy from the env's fixed evaluation starts (``env.eval_starts`` per
  subject: the centred box, then seeded random boxes); every episode's final box is scored, and the
  subject's *aggregate* box (the per-coordinate median of its episodes' final corners) is scored too;
* **start boxes**: the evaluation starts themselves (no agent);
* **template prior**: the run's template box (the bounding box of the template's structure points)
  answered in the subject's world coordinates;
* **affine registration**: the template's structure points carried to the subject by
  :func:`jaxmed.registration_baseline.transfer_landmarks` (12-dof affine, mutual information) and
  their box.

Metrics: ``iou`` (box IoU), ``centre_error_mm`` (distance between box centres) and
``wall_distance_mm`` (mean absolute distance of the six faces, Navarro 2020).
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from jaxmed.errors import ConfigError, LandmarkError

#: Envs whose runs ``jaxmed evaluate --data`` evaluates here.
BOX_ENVS = ("box-v0", "corner-pair-v0")
METRICS = ("iou", "centre_error_mm", "wall_distance_mm")
METHODS = ("agent", "agent_aggregate", "start", "prior", "registration")
NAMES = {"agent": "agent (every start)", "agent_aggregate": "agent (median of starts)", "start": "start boxes (no agent)",
         "prior": "template prior", "registration": "affine registration"}


def is_box_run(run_dir) -> bool:
    """Whether a run directory's config trains one of :data:`BOX_ENVS`."""
    from jaxmed.runs import run_env_name

    return run_env_name(run_dir) in BOX_ENVS


def box_metrics(lo, hi, t_lo, t_hi) -> dict[str, np.ndarray]:
    """NumPy ``iou``, ``centre_error_mm``, ``wall_distance_mm`` of boxes ``(..., 3)`` against targets."""
    lo, hi, t_lo, t_hi = (np.asarray(a, np.float64) for a in (lo, hi, t_lo, t_hi))
    inter = np.prod(np.clip(np.minimum(hi, t_hi) - np.maximum(lo, t_lo), 0, None), axis=-1)
    union = np.prod(hi - lo, axis=-1) + np.prod(t_hi - t_lo, axis=-1) - inter
    return {"iou": inter / np.maximum(union, 1e-12),
            "centre_error_mm": np.linalg.norm(0.5 * (lo + hi) - 0.5 * (t_lo + t_hi), axis=-1),
            "wall_distance_mm": 0.5 * (np.abs(lo - t_lo).mean(-1) + np.abs(hi - t_hi).mean(-1))}


def _boxes(env, states, bank) -> np.ndarray:
    """``(E, 2, 3)`` world ``(min, max)`` of a batch of states (either box env)."""
    f = env.boxes_world
    one = (lambda s: f(s)) if len(inspect.signature(f).parameters) == 1 else (lambda s: f(s, bank))
    boxes = np.asarray(jax.vmap(one)(states), np.float64)
    return boxes.reshape(boxes.shape[0], 2, 3)


def _points(landmarks, structure: str, where: str) -> np.ndarray:
    labels = [l for l in landmarks.labels if l.startswith(f"{structure}#")]
    if len(labels) < 2:
        raise LandmarkError(f"{where}: no points of structure {structure!r}")
    return landmarks.select(labels).positions


def set_subjects(cfg, spec: str, labels: Sequence[str]):
    """``(name, subjects)`` of ``--data SPEC`` for a box run: ``test`` = the run's held-out subjects;
    otherwise the spec's source with the run's structure carried (``structures`` option)."""
    from jaxmed.data import sources
    from jaxmed.evaluation import set_name

    if spec == "test":
        return "test", sources.make(cfg.data).subjects("test", list(labels), n=cfg.data.n_test)
    structure = cfg.env["structure"]
    try:
        src = sources.from_spec(spec, cfg.data.spacing, structures=[structure])
    except ConfigError:
        src = sources.from_spec(spec, cfg.data.spacing)  # a source whose subjects carry the points themselves
    return set_name(spec), src.subjects("test", list(labels))


def evaluate_box_set(cfg, network, params, spec: str, *, registration: bool = True, progress=None) -> dict:
    """Evaluate a box run's ``params`` on ``--data SPEC`` (module docstring). Returns a JSON-able dict:
    ``set``, ``structure``, ``subjects``, per method ``{metric: {"mean", "std", "per_subject"}}``,
    per subject rows, seconds."""
    from jaxmed import experiment as ex
    from jaxmed.agents.learners import policy_rollout
    from jaxmed.data import build_bank, conform, run_data

    env, _, eval_params = ex.make_env(cfg)
    if not hasattr(env, "target_box"):
        raise ConfigError(f"{cfg.env_name}: not a box env (box-v0, corner-pair-v0)")
    structure = cfg.env["structure"]
    labels = env.required_labels
    name, subjects = set_subjects(cfg, spec, labels)
    if progress:
        progress(f"{name}: {len(subjects)} subject(s), structure {structure}")
    bank = build_bank([s.pair() for s in subjects], labels, factors=cfg.data.factors, max_crop=env.max_crop,
                      dtype=cfg.data.dtype, packed=env.wants_packed_bank, full_scale=cfg.data.intensity_ceiling)
    env.check_bank(bank)
    n_starts = cfg.eval_starts
    states = env.eval_states(eval_params, bank, n_starts, seed=cfg.train.seed)
    rollout = policy_rollout(cfg.train.learner, network, env, eval_params)
    t0 = time.perf_counter()
    compiled = rollout.lower(params, bank, states).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(params, bank, states))
    agent_s = (time.perf_counter() - t0) / len(subjects)

    S = len(subjects)
    truth = np.stack([np.stack([p.min(0), p.max(0)]) for p in
                      (_points(s.landmarks, structure, f"{name}/{s.name}") for s in subjects)])  # (S, 2, 3)
    vols = np.asarray(states.volume).reshape(-1)
    final = _boxes(env, out["final_state"], bank)  # (E, 2, 3)
    start = _boxes(env, states, bank)
    answers = {"agent": final, "start": start}
    agg = np.stack([np.median(final[vols == s], axis=0) for s in range(S)])
    answers["agent_aggregate"] = agg
    # the env's own metrics of the final boxes agree with the NumPy ones (same target, same boxes)
    env_iou = np.asarray(out["metrics"]["iou"]).reshape(len(vols), -1)[:, 0]
    check = box_metrics(final[:, 0], final[:, 1], truth[vols, 0], truth[vols, 1])["iou"]
    if not np.allclose(env_iou, check, atol=1e-3):
        raise AssertionError(f"box evaluation: env IoU and NumPy IoU differ by {np.abs(env_iou - check).max():.2e}")

    reference = run_data.template(cfg.data)
    reg_s = None
    if reference is not None:
        tpl_volume, tpl_landmarks = reference
        tpl_points = _points(tpl_landmarks, structure, f"the template of {cfg.data.source}")
        answers["prior"] = np.broadcast_to(np.stack([tpl_points.min(0), tpl_points.max(0)]), truth.shape).copy()
        if registration:
            from jaxmed.registration_baseline import transfer_to_subjects

            if progress:
                progress(f"{name}: affine registration of the template to {S} subject(s)")
            pts, reg_s = transfer_to_subjects(conform(tpl_volume, cfg.data.spacing), tpl_points, [s.volume for s in subjects])
            answers["registration"] = np.stack([pts.min(1), pts.max(1)], axis=1)  # (S, 2, 3) box corners

    result = {"set": name, "structure": structure, "env": cfg.env_name, "learner": cfg.train.learner,
              "subjects": [s.name for s in subjects], "starts_per_subject": n_starts, "methods": {}, "rows": [],
              "agent_seconds_per_subject": agent_s, "compile_seconds": compile_s,
              "registration_seconds_per_subject": None if reg_s is None else float(np.mean(reg_s))}
    for method in METHODS:
        if method not in answers:
            continue
        boxes = answers[method]
        per_episode = method in ("agent", "start")
        t = truth[vols] if per_episode else truth
        m = box_metrics(boxes[:, 0], boxes[:, 1], t[:, 0], t[:, 1])
        sub = {k: ([float(v[vols == s].mean()) for s in range(S)] if per_episode else [float(x) for x in v]) for k, v in m.items()}
        result["methods"][method] = {k: {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size),
                                         "per_subject": sub[k]} for k, v in m.items()}
    for s, subject in enumerate(subjects):
        row = {"subject": subject.name, "truth_min": truth[s, 0].tolist(), "truth_max": truth[s, 1].tolist()}
        for method, r in result["methods"].items():
            for k in METRICS:
                row[f"{method}_{k}"] = r[k]["per_subject"][s]
        row["agent_aggregate_box"] = agg[s].tolist()
        result["rows"].append(row)
    result["table"] = table(result)
    return result


def table(result: dict) -> str:
    """Markdown: one row per method, mean ± std of each metric (episodes for the agent's every start and
    the start boxes, subjects otherwise), then per subject IoU."""
    lines = [f"### {result['set']}: {len(result['subjects'])} subject(s), structure {result['structure']} "
             f"({result['env']}, {result['learner']})", "",
             "| method | n | IoU | centre error (mm) | wall distance (mm) |", "|---|---|---|---|---|"]
    for method, r in result["methods"].items():
        lines.append(f"| {NAMES[method]} | {r['iou']['n']} | {r['iou']['mean']:.3f} ± {r['iou']['std']:.3f} | "
                     f"{r['centre_error_mm']['mean']:.2f} ± {r['centre_error_mm']['std']:.2f} | "
                     f"{r['wall_distance_mm']['mean']:.2f} ± {r['wall_distance_mm']['std']:.2f} |")
    methods = list(result["methods"])
    lines += ["", "| subject | " + " | ".join(f"{NAMES[m]} IoU / centre (mm)" for m in methods) + " |",
              "|---|" + "---|" * len(methods)]
    for row in result["rows"]:
        lines.append(f"| {row['subject']} | " + " | ".join(f"{row[f'{m}_iou']:.3f} / {row[f'{m}_centre_error_mm']:.2f}"
                                                           for m in methods) + " |")
    secs = f"agent {result['agent_seconds_per_subject']:.3f} s per subject (compiled in {result['compile_seconds']:.1f} s)"
    if result["registration_seconds_per_subject"] is not None:
        secs += f"; affine registration {result['registration_seconds_per_subject']:.1f} s per subject"
    return "\n".join(lines) + "\n\n" + secs + "\n"


def evaluate_box_sets(run_dir, specs: Sequence[str], *, out_dir=None, overwrite: bool = False, registration: bool = True,
                      seeds: bool = False, progress=None) -> list[dict]:
    """:func:`evaluate_box_set` of a run directory on each spec; writes ``eval_<set>.md`` and
    ``eval_<set>.json`` into ``out_dir`` (default the run directory; ``seed<k>/`` per seed with
    ``seeds``). Existing files are an :class:`OverwriteError` without ``overwrite``."""
    from jaxmed.errors import OverwriteError
    from jaxmed.evaluation import set_name
    from jaxmed.runs import load_params, seed_params

    cfg, network, params = load_params(run_dir)
    out = Path(out_dir) if out_dir else Path(run_dir)
    members = range(cfg.train.seeds) if seeds else [0]
    targets = {m: (out / f"seed{m}" if seeds and cfg.train.seeds > 1 else out) for m in members}
    if not overwrite:
        for target in targets.values():
            for spec in specs:
                for ext in (".md", ".json"):
                    p = target / f"eval_{set_name(spec)}{ext}"
                    if p.exists():
                        raise OverwriteError(f"{p}: already exists; pass --overwrite to replace it")
    results = []
    for m in members:
        for spec in specs:
            res = evaluate_box_set(cfg, network, seed_params(cfg, params, m), spec, registration=registration, progress=progress)
            res["seed_member"] = m
            targets[m].mkdir(parents=True, exist_ok=True)
            stem = targets[m] / f"eval_{res['set']}"
            Path(f"{stem}.json").write_text(json.dumps(res, indent=2))
            Path(f"{stem}.md").write_text(res["table"])
            results.append(res)
    return results
