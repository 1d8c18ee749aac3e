"""Evaluation statistics: per-label error metrics (mm, degrees, IoU), success rates, tables, seeds.

A metric's name says its unit and direction: ``*_mm`` and ``*_deg`` are errors (lower is better,
success = at most a threshold), ``iou`` is an overlap (higher is better, success = at least a
threshold).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmed.envs.metrics import THRESHOLDS_DEG, THRESHOLDS_IOU, THRESHOLDS_MM, metric_stats  # noqa: F401  (re-exported)
from jaxmed.envs.metrics import success_key as _success_key
from jaxmed.envs.metrics import success_thresholds as _success_thresholds
from jaxmed.inference import read_uncertainty


def landmark_stats(errors_mm: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """:func:`metric_stats` of landmark distances (mm)."""
    return metric_stats(errors_mm, labels, "distance_mm")


def format_table(stats: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]] | None = None,
                 metric: str = "distance_mm", baseline_name: str = "template prior") -> str:
    """A Markdown table of one metric's :func:`metric_stats`, optionally beside a baseline's means."""
    _, thresholds, higher = _success_thresholds(metric)
    unit = " (mm)" if metric.endswith("_mm") else " (°)" if metric.endswith("_deg") else ""
    succ = [(f"≥{t:g}" if higher else f"≤{t:g}{' mm' if unit == ' (mm)' else '°' if unit else ''}") for t in thresholds]
    head = f"| {metric} | n | mean ± std{unit} | median | p90 |" + "".join(f" {s} |" for s in succ)
    if baseline:
        head += f" {baseline_name} mean{unit} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, r in stats.items():
        line = f"| {label} | {r['n']} | {r['mean']:.2f} ± {r['std']:.2f} | {r['median']:.2f} | {r['p90']:.2f} |"
        line += "".join(f" {100 * r[_success_key(metric, t)]:.0f} % |" for t in thresholds)
        if baseline:
            line += f" {baseline[label]['mean']:.2f} |" if label in baseline else " — |"
        lines.append(line)
    return "\n".join(lines)


def format_metric_tables(stats: dict[str, dict[str, dict[str, float]]],
                         baselines: dict[str, dict[str, dict[str, dict[str, float]]]] | None = None) -> str:
    """One Markdown table per metric of ``{metric: metric_stats(...)}``; ``baselines`` is
    ``{baseline name: {metric: metric_stats(...)}}`` (its mean is shown beside the metric it has)."""
    tables = []
    for metric, st in stats.items():
        base_name, base = None, None
        for name, b in (baselines or {}).items():
            if metric in b:
                base_name, base = name, b[metric]
        tables.append(format_table(st, base, metric, base_name or ""))
    return "\n\n".join(tables)


def seed_summary(per_seed: list[dict[str, dict[str, dict[str, float]]]]) -> dict:
    """Across seeds: ``{metric: {label: {"mean": mean of the seeds' means, "std": their std}}}``
    and a Markdown ``table``."""
    out: dict = {}
    lines = [f"| metric | label | mean over {len(per_seed)} seeds ± std across seeds |", "|---|---|---|"]
    for metric, labels in per_seed[0].items():
        out[metric] = {}
        for label in labels:
            means = np.array([s[metric][label]["mean"] for s in per_seed])
            out[metric][label] = {"mean": float(means.mean()), "std": float(means.std()), "per_seed": means.tolist()}
            lines.append(f"| {metric} | {label} | {means.mean():.2f} ± {means.std():.2f} |")
    out["table"] = "\n".join(lines)
    return out


# ------------------------------------------------------------------ a checkpoint on a labelled set

FAILURE_MM = 10.0

#: Columns of the per-subject CSV written by :meth:`LandmarkSetResult.write`.
CSV_FIELDS = ("subject", "label", "agent_error_mm", "prior_error_mm", "registration_error_mm", "agent_seconds",
              "registration_seconds", "agent_x", "agent_y", "agent_z", "true_x", "true_y", "true_z")


def error_stats(errors_mm: np.ndarray) -> dict[str, float]:
    """Statistics of landmark errors ``(n,)`` mm: ``n, mean, std, median, p90, max``, the fractions
    ``success_2mm / 4mm / 8mm`` and ``failures`` (count above :data:`FAILURE_MM`)."""
    e = np.asarray(errors_mm, np.float64).ravel()
    row = metric_stats(e[:, None], ["all"], "distance_mm")["all"]
    row["failures"] = int((e > FAILURE_MM).sum())
    return row


@dataclasses.dataclass
class LandmarkSetResult:
    """A landmark checkpoint evaluated on a labelled set, beside two baselines on the same subjects.

    Attributes:
      name: the set (``colin27``, a folder name, ``test``).
      labels: ``K`` landmark labels. subjects: ``S`` subject names.
      truth, agent: ``(S, K, 3)`` world RAS mm: the annotation and the agents' answer (the
        aggregate of every agent and start of a landmark, as ``jaxmed detect`` answers).
      prior: ``(S, K, 3)`` or ``None``: the template's coordinates (the template-prior baseline).
      registration: ``(S, K, 3)`` or ``None``: template landmarks carried over by the affine
        registration baseline (:func:`jaxmed.registration_baseline.transfer_landmarks`).
      agent_seconds: seconds per subject of all agents (compiled program, compilation excluded);
        compile_seconds: the one compilation.
      registration_seconds: ``(S,)`` per subject (compilation excluded) or ``None``.
      uncertainty: ``(S, K)`` mm, the agents' own uncertainty per answer (median distance of the end
        points from it, :mod:`jaxmed.inference`), or ``None``.
    """

    name: str
    labels: tuple[str, ...]
    subjects: tuple[str, ...]
    truth: np.ndarray
    agent: np.ndarray
    prior: np.ndarray | None
    registration: np.ndarray | None
    agent_seconds: float
    compile_seconds: float
    registration_seconds: np.ndarray | None
    uncertainty: np.ndarray | None = None

    def errors(self, method: str) -> np.ndarray | None:
        """``(S, K)`` mm of ``agent`` / ``prior`` / ``registration`` (``None`` if not measured)."""
        points = getattr(self, method)
        return None if points is None else np.linalg.norm(points - self.truth, axis=-1)

    def methods(self) -> list[str]:
        return [m for m in ("agent", "prior", "registration") if getattr(self, m) is not None]

    def offsets(self, method: str = "agent") -> np.ndarray | None:
        """``(K, 3)`` mm: the mean over subjects of answer minus annotation per landmark (world RAS:
        +x right, +y anterior, +z superior). Unlike the error it keeps the sign, so a difference of
        annotation habit or a bias of the model shows as an offset that the subjects share."""
        points = getattr(self, method)
        return None if points is None else (points - self.truth).mean(axis=0)

    def stats(self) -> dict[str, dict[str, dict[str, float]]]:
        """``{method: {label or "all": error_stats}}``."""
        out = {}
        for m in self.methods():
            err = self.errors(m)
            out[m] = {label: error_stats(err[:, k]) for k, label in enumerate(self.labels)}
            out[m]["all"] = error_stats(err)
        return out

    def seconds(self, method: str) -> float | None:
        if method == "agent":
            return self.agent_seconds
        if method == "registration" and self.registration_seconds is not None:
            return float(np.mean(self.registration_seconds))
        return 0.0 if method == "prior" else None

    def summary_row(self) -> dict:
        """One line per set: mean error of every method over all subjects and landmarks, seconds."""
        row = {"set": self.name, "subjects": len(self.subjects), "landmarks": len(self.labels)}
        for m in self.methods():
            row[f"{m}_mean_mm"] = float(self.errors(m).mean())
            row[f"{m}_seconds"] = self.seconds(m)
        return row

    def table(self) -> str:
        """Markdown: per landmark, the agent's statistics beside both baselines' mean ± std and failures."""
        stats = self.stats()
        names = {"agent": "agent", "prior": "template prior", "registration": "affine registration"}
        head = ("| landmark | n | agent mean ± std (mm) | median | p90 | max | ≤2 mm | ≤4 mm | ≤8 mm | >10 mm "
                "| agent mean offset x, y, z (mm) |")
        offsets = self.offsets("agent")
        for m in self.methods()[1:]:
            head += f" {names[m]} mean ± std | {names[m]} >10 mm |"
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for label in (*self.labels, "all"):
            r = stats["agent"][label]
            line = (f"| {'**all**' if label == 'all' else label} | {r['n']} | {r['mean']:.2f} ± {r['std']:.2f} | {r['median']:.2f} | "
                    f"{r['p90']:.2f} | {r['max']:.2f} | {100 * r['success_2mm']:.0f} % | {100 * r['success_4mm']:.0f} % | "
                    f"{100 * r['success_8mm']:.0f} % | {r['failures']} | "
                    + (", ".join(f"{v:+.2f}" for v in (offsets.mean(0) if label == "all" else offsets[self.labels.index(label)])))
                    + " |")
            for m in self.methods()[1:]:
                b = stats[m][label]
                line += f" {b['mean']:.2f} ± {b['std']:.2f} | {b['failures']} |"
            lines.append(line)
        secs = [f"agent {self.agent_seconds:.3f} s per subject (all landmarks, compiled once in {self.compile_seconds:.1f} s)"]
        note = ("Offset: mean over subjects of answer minus annotation, world RAS (+x right, +y anterior, +z "
                "superior); an offset near the mean error means the subjects share it: an annotation habit or a "
                "bias of the model, not scatter.")
        if self.registration_seconds is not None:
            secs.append(f"affine registration {np.mean(self.registration_seconds):.1f} s per subject")
        return (f"### {self.name}: {len(self.subjects)} subject(s), {len(self.labels)} landmark(s)\n\n" + "\n".join(lines)
                + "\n\n" + note + "\n\n" + "; ".join(secs) + "\n")

    def rows(self) -> list[dict]:
        """Per subject and landmark: the CSV rows (:data:`CSV_FIELDS`)."""
        errs = {m: self.errors(m) for m in ("agent", "prior", "registration")}
        out = []
        for s, subject in enumerate(self.subjects):
            for k, label in enumerate(self.labels):
                row = {"subject": subject, "label": label, "agent_seconds": f"{self.agent_seconds:.4f}",
                       "registration_seconds": "" if self.registration_seconds is None else f"{self.registration_seconds[s]:.3f}"}
                for m, e in errs.items():
                    row[f"{m}_error_mm"] = "" if e is None else f"{e[s, k]:.4f}"
                row.update({f"agent_{a}": f"{v:.4f}" for a, v in zip("xyz", self.agent[s, k])})
                row.update({f"true_{a}": f"{v:.4f}" for a, v in zip("xyz", self.truth[s, k])})
                out.append(row)
        return out

    def write(self, out_dir, *, overwrite: bool = False, stem: str | None = None) -> tuple:
        """Write ``eval_<name>.md`` (tables) and ``eval_<name>.csv`` (per subject) into ``out_dir``,
        each atomically; an existing file is an :class:`OverwriteError` unless ``overwrite`` (checked
        for both before either is written). Returns both paths."""
        import csv
        import io
        import re

        from jaxmed.data.fetch import write_atomic
        from jaxmed.errors import OverwriteError

        out_dir = Path(out_dir)
        stem = stem or "eval_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name).strip("_.")
        md, csv_path = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
        for p in (md, csv_path):
            if p.exists() and not overwrite:
                raise OverwriteError(f"{p}: already exists; pass --overwrite to replace it")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(self.rows())
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(csv_path, lambda f: f.write(buf.getvalue().encode()))
        write_atomic(md, lambda f: f.write(self.table().encode()))
        return md, csv_path


def summary_table(results: Sequence[LandmarkSetResult]) -> str:
    """Markdown, one row per evaluated set: mean error (mm, all subjects and landmarks) and seconds
    per subject of the agent and of both baselines."""
    lines = ["| set | subjects | landmarks | agent mean (mm) | template prior (mm) | affine registration (mm) | agent s / subject "
             "| registration s / subject |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        row = r.summary_row()
        f = lambda k, fmt="{:.2f}": fmt.format(row[k]) if row.get(k) is not None else "—"  # noqa: E731
        lines.append(f"| {r.name} | {row['subjects']} | {row['landmarks']} | {f('agent_mean_mm')} | {f('prior_mean_mm')} | "
                     f"{f('registration_mean_mm')} | {f('agent_seconds', '{:.3f}')} | {f('registration_seconds', '{:.1f}')} |")
    return "\n".join(lines)


def evaluate_landmark_set(detector, subjects, template=None, *, name: str, registration: bool = True,
                          registration_config=None, progress=None) -> LandmarkSetResult:
    """Evaluate a landmark checkpoint on labelled subjects, beside the template prior and the affine
    registration baseline on the same subjects.

    Args:
      detector: a :class:`jaxmed.detect.LandmarkDetector` (the run's agents, compiled once).
      subjects: labelled subjects (:class:`jaxmed.data.sources.LabelledSubject` or
        ``(volume, landmarks)`` pairs), volumes conformed at the run's ``data.spacing`` (as at
        training); each must carry the detector's labels.
      template: ``(volume, landmarks)`` of the run's atlas (conformed likewise), or ``None``: no
        baselines.
      name: the set's name (tables, file names).
      registration: also run the registration baseline
        (:func:`jaxmed.registration_baseline.transfer_landmarks`, 12-dof affine; its compilation is
        done on the first subject before timing, so its seconds exclude it).
      progress: ``progress(message)`` for long steps (``None``: silent).
    """
    from jaxmed.errors import LandmarkError

    if not subjects:
        raise LandmarkError(f"{name}: no subjects to evaluate")
    labels = detector.labels
    names, volumes, truth = [], [], []
    for i, s in enumerate(subjects):
        volume, landmarks = (s.volume, s.landmarks) if hasattr(s, "volume") else s
        sname = getattr(s, "name", None) or f"subject{i}"
        missing = [l for l in labels if l not in landmarks.labels]
        if missing:
            raise LandmarkError(f"{name}: subject {sname} has no {', '.join(missing)} (the run answers {', '.join(labels)})")
        names.append(sname)
        volumes.append(volume)
        truth.append(landmarks.select(labels).positions)
    truth = np.asarray(truth, np.float64)
    answers, seconds = detector.find(volumes, sources=[f"{name}/{n}" for n in names])
    agent = np.stack([a.positions for a in answers])
    uncertainty = np.array([[read_uncertainty(a).get(l, np.nan) for l in labels] for a in answers])
    prior = reg = reg_s = None
    if template is not None:
        tpl_volume, tpl_landmarks = (template.volume, template.landmarks) if hasattr(template, "volume") else template
        missing = [l for l in labels if l not in tpl_landmarks.labels]
        if missing:
            raise LandmarkError(f"{name}: the template has no {', '.join(missing)}")
        tpl_points = tpl_landmarks.select(labels).positions
        prior = np.broadcast_to(tpl_points, truth.shape).copy()
        if registration:
            from jaxmed.registration_baseline import AFFINE_LANDMARK, transfer_to_subjects

            if progress:
                progress(f"{name}: affine registration of the template to {len(volumes)} subject(s)")
            reg, reg_s = transfer_to_subjects(tpl_volume, tpl_points, volumes, registration_config or AFFINE_LANDMARK)
    return LandmarkSetResult(name=name, labels=tuple(labels), subjects=tuple(names), truth=truth, agent=agent, prior=prior,
                             registration=reg, agent_seconds=seconds / len(volumes), compile_seconds=detector.compile_seconds,
                             registration_seconds=reg_s, uncertainty=uncertainty)


def set_name(spec: str) -> str:
    """The name of an evaluation set given as ``--data SPEC``: a source name as is, a path's name
    without extensions (``~/scans/`` -> ``scans``, ``list.csv`` -> ``list``)."""
    p = Path(str(spec).rstrip("/"))
    name = p.name or str(spec)
    for ext in (".yaml", ".yml", ".csv", ".tsv"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name


def resolve_set(cfg, spec: str, labels: Sequence[str]) -> tuple[str, list, tuple | None]:
    """``(name, subjects, template)`` of an evaluation set for a run of ``cfg``.

    ``spec``: ``test`` (the run's own held-out synthetic subjects) or anything
    :func:`jaxmed.data.sources.from_spec` takes (``colin27``, ``mni-t2w``, a folder, a manifest, a
    data YAML); its ``test`` split is evaluated, conformed at the run's ``data.spacing``. The
    template (prior and registration baselines) is the run's own atlas (conformed likewise), or the
    set's template when the run has none.
    """
    from jaxmed.data import conform, run_data, sources

    name, template = set_name(spec), None
    reference = run_data.template(cfg.data)  # the run's atlas (None for a source without one)
    if reference is not None and all(l in reference[1].labels for l in labels):
        template = (conform(reference[0], cfg.data.spacing), reference[1].select(labels))
    if spec == "test":
        return name, sources.make(cfg.data).subjects("test", list(labels), n=cfg.data.n_test), template
    src = sources.from_spec(spec, cfg.data.spacing)
    subjects = src.subjects("test", list(labels))
    if template is None:
        t = src.template(list(labels))
        template = None if t is None else (t.volume, t.landmarks)
    return name, subjects, template


def evaluate_sets(detector, specs: Sequence[str], *, out_dir=None, overwrite: bool = False, registration: bool = True,
                  progress=None) -> list[LandmarkSetResult]:
    """:func:`evaluate_landmark_set` on each ``--data SPEC`` (:func:`resolve_set`) with the run's
    template; writes ``eval_<name>.md`` / ``.csv`` into ``out_dir`` when given (every target
    checked before anything is computed: an existing file is an :class:`OverwriteError` without
    ``overwrite``). Returns the results in order."""
    from jaxmed.errors import OverwriteError

    names = [set_name(s) for s in specs]
    if out_dir is not None and not overwrite:
        for n in names:
            for ext in (".md", ".csv"):
                p = Path(out_dir) / f"eval_{n}{ext}"
                if p.exists():
                    raise OverwriteError(f"{p}: already exists; pass --overwrite to replace it")
    results = []
    for spec in specs:
        name, subjects, template = resolve_set(detector.cfg, spec, detector.labels)
        if progress:
            progress(f"{name}: {len(subjects)} subject(s)")
        res = evaluate_landmark_set(detector, subjects, template, name=name, registration=registration, progress=progress)
        if out_dir is not None:
            res.write(out_dir, overwrite=True)
        results.append(res)
    return results


def pooled_table(rows: Sequence[dict], name: str) -> str:
    """Markdown: per landmark (and all), statistics of the errors pooled from per-subject CSV rows
    (:data:`CSV_FIELDS`, e.g. of several cross-validation folds) for the agent and each baseline
    that has values."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    methods = [m for m in ("agent", "prior", "registration") if any(r.get(f"{m}_error_mm") not in ("", None) for r in rows)]
    names = {"agent": "agent", "prior": "template prior", "registration": "affine registration"}
    head = "| landmark | method | n | mean ± std (mm) | median | p90 | max | ≤2 mm | ≤4 mm | ≤8 mm | >10 mm |"
    lines = [f"### {name}: {len({r['subject'] for r in rows})} subject(s) pooled", "", head, "|" + "---|" * (head.count("|") - 1)]
    for label in (*labels, "all"):
        for m in methods:
            e = np.array([float(r[f"{m}_error_mm"]) for r in rows if label in ("all", r["label"]) and r[f"{m}_error_mm"] != ""])
            if e.size == 0:
                continue
            s = error_stats(e)
            lines.append(f"| {'**all**' if label == 'all' else label} | {names[m]} | {s['n']} | {s['mean']:.2f} ± {s['std']:.2f} | "
                         f"{s['median']:.2f} | {s['p90']:.2f} | {s['max']:.2f} | {100 * s['success_2mm']:.0f} % | "
                         f"{100 * s['success_4mm']:.0f} % | {100 * s['success_8mm']:.0f} % | {s['failures']} |")
    return "\n".join(lines) + "\n"
