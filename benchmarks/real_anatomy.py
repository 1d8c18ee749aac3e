"""Landmark agents trained on the synthetic MNI-template population, evaluated on anatomy they never saw.

Sets (``--sets``; each beside the template prior and the affine registration baseline on the same
subjects, :func:`jaxmed.evaluation.evaluate_landmark_set`):

* ``colin27``: Colin27 (one real brain, MNI space) with skull and skull-stripped (``jaxmed data
  fetch colin27``), its 32 AFIDs placed by the AFIDs project;
* ``mni-t2w``: synthetic held-out subjects drawn from the T2-weighted MNI template (a contrast the
  T1-trained agents never saw; the source's default test split);
* ``afids``: synthetic held-out subjects of the T1 template with the default subject model, no
  domain randomisation (the source's default test split, whose first six are the README main job's
  test subjects: the "not worse" check).

Every seed of the run is evaluated (``jaxmed train CONFIG --seeds S`` trains S seeds in one
program); the table gives mean ± std over seeds of each landmark's error, the agents' own
uncertainty (median distance of the end points from the answer, :mod:`jaxmed.inference`) and the
detection seconds per subject after start-up (compiled program, compilation excluded).

    python benchmarks/real_anatomy.py --config configs/real/afids_acpc_real_cpu.yaml --seeds 3
    python benchmarks/real_anatomy.py --run runs/afids_acpc_real_cpu          # a trained run
    python benchmarks/real_anatomy.py --report benchmarks/results/real_anatomy.json

writes ``benchmarks/results/real_anatomy.json`` (``--out``) and its Markdown table
(``.md`` beside it: machine, date, commit and the command in its header).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SETS = ("colin27", "mni-t2w", "afids")


def evaluate(run_dir: Path, sets, registration: bool, aggregate: str, log, ensemble: bool = False, shape: bool = False,
             n_starts: int = 27, **options) -> dict:
    """Evaluate every seed of ``run_dir`` on ``sets`` (or, with ``ensemble``, one detector pooling
    every seed's end points); JSON-able results. ``shape``: also score the same answers after the
    affine shape check (:func:`jaxmed.shape_model.check_shape` against the template's landmarks, as
    ``jaxmed detect --shape affine`` answers). ``options``: the test-time detection options
    (:func:`jaxmed.commands.detection_options`: ``intensity_scales``, ``split_starts``,
    ``level_step_limit``, ``start_from``, ``start_radius_mm``; each as ``jaxmed detect`` takes it,
    defaulting to the run's ``eval`` section)."""
    from jaxmed.detect import LandmarkDetector
    from jaxmed.evaluation import evaluate_landmark_set, resolve_set
    from jaxmed.runs import load_run, seed_params
    from jaxmed.shape_model import check_shape

    exp, params = load_run(run_dir)
    cfg = exp.cfg
    members = [seed_params(cfg, params, s) for s in range(cfg.train.seeds)]
    detectors = [LandmarkDetector(cfg, exp.network, m, aggregate=aggregate, n_starts=n_starts, where=str(run_dir),
                                  experiment=exp, **options) for m in ([members] if ensemble else members)]
    d = detectors[0]
    out = {"run": str(run_dir), "config": cfg.to_dict(), "seeds": len(detectors), "aggregate": aggregate, "sets": {},
           "ensemble_of_seeds": cfg.train.seeds if ensemble else 1, "shape": "affine" if shape else "none",
           "starts": n_starts, "intensity_scales": list(d.intensity_scales),
           "split_starts": d.split_starts, "level_step_limit": d.level_step_limit,
           "start_from": d.start_from, "start_radius_mm": d.start_radius_mm if d.start_from == "registration" else None}
    labels = detectors[0].labels
    for spec in sets:
        log(f"{spec}: building the subjects")
        _, subjects, template = resolve_set(cfg, spec, labels)
        names = [s.name for s in subjects]
        per_seed, baselines = [], None
        for s, det in enumerate(detectors):
            log(f"{spec}: seed {s}")
            res = evaluate_landmark_set(det, subjects, template, name=spec, registration=registration and s == 0)
            seed_result = {"errors_mm": res.errors("agent").tolist(), "uncertainty_mm": res.uncertainty.tolist(),
                           "agent_seconds_per_subject": res.agent_seconds, "compile_seconds": res.compile_seconds}
            if shape:
                tpl = template[1].select(labels).positions
                checks = [check_shape(a, tpl, seed=det.seed) for a in res.agent]
                seed_result["shape_errors_mm"] = np.linalg.norm(np.stack([c.positions for c in checks]) - res.truth, axis=-1).tolist()
                seed_result["shape_outliers"] = np.stack([c.outliers for c in checks]).tolist()
            per_seed.append(seed_result)
            if s == 0:
                baselines = {m: res.errors(m).tolist() for m in ("prior", "registration") if res.errors(m) is not None}
                if res.registration_seconds is not None:
                    baselines["registration_seconds_per_subject"] = float(np.mean(res.registration_seconds))
        out["sets"][spec] = {"subjects": names, "labels": list(labels), "per_seed": per_seed, "baselines": baselines}
    return out


def _groups(result: dict):
    """Rows of the table: ``(row name, set, subject indices)`` (Colin27 per image)."""
    for spec, r in result["sets"].items():
        if spec == "colin27":
            for i, name in enumerate(r["subjects"]):
                yield name, spec, [i]
        else:
            yield f"{spec} ({len(r['subjects'])} synthetic held-out)", spec, list(range(len(r["subjects"])))


def summary(result: dict, labels=None) -> dict:
    """``{row: {label: {agent_mean, agent_std (over seeds), prior, registration, uncertainty}}, ...}``;
    ``label`` ``"all"`` averages every landmark (and counts answers over 10 mm). A result scored with
    the shape check (``shape_errors_mm``) gets a second row per set, ``<row> + shape check``, from the
    same answers after it (``outliers``: answers it replaced)."""
    out = {}
    for row, spec, idx in _groups(result):
        r = result["sets"][spec]
        labs = labels or r["labels"]
        cols = [r["labels"].index(l) for l in labs]
        keys = [("errors_mm", row)] + ([("shape_errors_mm", f"{row} + shape check")] if "shape_errors_mm" in r["per_seed"][0] else [])
        for field, name in keys:
            entry = {}
            for key, k in [(l, [c]) for l, c in zip(labs, cols)] + [("all", cols)]:
                errs = [np.asarray(p[field])[np.ix_(idx, k)] for p in r["per_seed"]]
                per_seed = np.array([np.mean(e) for e in errs])
                unc = np.array([np.mean(np.asarray(p["uncertainty_mm"])[np.ix_(idx, k)]) for p in r["per_seed"]])
                e = {"agent_mean": float(per_seed.mean()), "agent_std": float(per_seed.std()), "per_seed": per_seed.tolist(),
                     "uncertainty": float(unc.mean())}
                if key == "all":
                    e["agent_over_10mm"] = int(sum((x > 10).sum() for x in errs))
                    if field == "shape_errors_mm":
                        e["outliers"] = int(sum(np.asarray(p["shape_outliers"])[np.ix_(idx, k)].sum() for p in r["per_seed"]))
                for m in ("prior", "registration"):
                    if m in r["baselines"]:
                        e[m] = float(np.mean(np.asarray(r["baselines"][m])[np.ix_(idx, k)]))
                entry[key] = e
            entry["seconds"] = float(np.mean([p["agent_seconds_per_subject"] for p in r["per_seed"]]))
            out[name] = entry
    return out


def merge(parts: list[dict]) -> dict:
    """One result from several (each run's seeds appended in order); the sets, subjects and labels
    must agree. Baselines and machine are the first part's; ``runs`` lists every part's run."""
    first = parts[0]
    out = dict(first, runs=[p["run"] for p in parts], seeds=sum(p["seeds"] for p in parts), sets={})
    for spec, r in first["sets"].items():
        per_seed = []
        for p in parts:
            q = p["sets"].get(spec)
            if q is None or q["subjects"] != r["subjects"] or q["labels"] != r["labels"]:
                raise SystemExit(f"merge: {p['run']} has no matching set {spec!r} (same subjects and labels)")
            per_seed += q["per_seed"]
        out["sets"][spec] = dict(r, per_seed=per_seed)
    out["run"] = " + ".join(out["runs"])
    out["summary"] = summary(out)
    return out


def markdown(result: dict) -> str:
    rows = summary(result)
    first = next(iter(result["sets"].values()))
    labels = first["labels"]
    shown = labels if len(labels) <= 4 else [l for l in ("AC", "PC") if l in labels]
    head = "| set | " + " | ".join(f"{l} agent (mm) | {l} prior | {l} affine reg." for l in shown)
    head += " | all agent (mm) | all prior | all affine reg. | answers > 10 mm | uncertainty (mm) | s / subject |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    f = lambda e, k: f"{e[k]:.2f}" if k in e else "—"  # noqa: E731
    for row, e in rows.items():
        cells = [row]
        for l in shown:
            cells += [f"{e[l]['agent_mean']:.2f} ± {e[l]['agent_std']:.2f}", f(e[l], "prior"), f(e[l], "registration")]
        a = e["all"]
        over = str(a["agent_over_10mm"]) + (f" ({a['outliers']} replaced)" if "outliers" in a else "")
        cells += [f"{a['agent_mean']:.2f} ± {a['agent_std']:.2f}", f(a, "prior"), f(a, "registration"), over,
                  f"{a['uncertainty']:.2f}", f"{e['seconds']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    m = result.get("machine", {})
    header = (f"Run `{result.get('run')}` ({result['seeds']} seed(s), mean ± std over seeds; {len(labels)} landmark(s), "
              f"aggregate `{result['aggregate']}`, {result.get('starts', 27)} starts per agent"
              + (f", intensity scales {result['intensity_scales']}" if len(result.get('intensity_scales', [1.0])) > 1 else "")
              + (" sharing the starts" if result.get("split_starts") and len(result.get("intensity_scales", [1.0])) > 1 else "")
              + (f", at most {result['level_step_limit']} moves per search level" if result.get("level_step_limit") else "")
              + (f", starts within {result['start_radius_mm']:g} mm of the affine-registered template landmarks"
                 if result.get("start_from") == "registration" else "") + "); "
              f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {str(m.get('date', ''))[:16]}, "
              f"commit {m.get('git_commit', '?')}; training {result.get('train_seconds', float('nan')):.0f} s.\n"
              f"Command: `{result.get('command', '')}`\n")
    return header + "\n" + "\n".join(lines)


def main(argv=None) -> int:
    from jaxmed.commands import add_detection_options, detection_options

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", type=Path, help="a trained run directory (all its seeds are evaluated)")
    g.add_argument("--config", type=Path, help="train this config first (jaxmed train)")
    g.add_argument("--report", type=Path, help="only print the Markdown table of a saved result")
    g.add_argument("--merge", type=Path, nargs="+", help="combine the results of runs of one config trained with different "
                   "train.seed (same sets and subjects) into one result with a seed per run (written to --out)")
    p.add_argument("--seeds", type=int, default=3, help="with --config: seeds trained in one program")
    p.add_argument("--run-dir", type=Path, default=None, help="with --config: where the run goes")
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    p.add_argument("--aggregate", default="median", help="jaxmed.inference aggregate (median, mean, trimmed, geomedian)")
    p.add_argument("--no-registration", action="store_true", help="skip the affine registration baseline")
    p.add_argument("--ensemble", action="store_true", help="one detector pooling every seed's end points (several agents per landmark)")
    p.add_argument("--starts", type=int, default=27, help="start points per agent and subject (27: the 3x3x3 grid; default %(default)s)")
    add_detection_options(p)  # --intensity-scales, --split-starts, --level-step-limit, --start-from, as jaxmed detect takes them
    p.add_argument("--shape", action="store_true", help="also score the answers after the affine shape check (jaxmed detect "
                   "--shape affine; a model of >= 8 landmarks): one more row per set")
    p.add_argument("--out", type=Path, default=RESULTS / "real_anatomy.json")
    args = p.parse_args(argv)
    if args.report:
        print(markdown(json.loads(args.report.read_text())))
        return 0
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        merged = merge(parts)
        args.out.write_text(json.dumps(merged, indent=1))
        args.out.with_suffix(".md").write_text(markdown(merged) + "\n")
        print(markdown(merged))
        return 0

    from common import write_result

    from jaxmed.errors import check_writable

    check_writable(args.out, True)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    train_s = None
    run_dir = args.run
    if args.config:
        from jaxmed.cli import main as cli

        run_dir = args.run_dir or Path("runs") / args.config.stem
        t0 = time.perf_counter()
        rc = cli(["train", str(args.config), "--seeds", str(args.seeds), "--run-dir", str(run_dir)])
        if rc:
            return rc
        train_s = time.perf_counter() - t0
    else:  # the run's own record of its training time (cumulative over resumes)
        summary_file = Path(run_dir) / "summary.json"
        if summary_file.exists():
            train_s = json.loads(summary_file.read_text()).get("train_wall_s")
    result = evaluate(Path(run_dir), args.sets, not args.no_registration, args.aggregate, log, ensemble=args.ensemble,
                      shape=args.shape, n_starts=args.starts, **detection_options(args))
    result["train_seconds"] = train_s if train_s is not None else float("nan")
    result["summary"] = summary(result)
    write_result(args.out, result, markdown, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
