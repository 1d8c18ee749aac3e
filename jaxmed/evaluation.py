"""Evaluation statistics: per-label error metrics (mm, degrees, IoU), success rates, tables, seeds.

A metric's name says its unit and direction: ``*_mm`` and ``*_deg`` are errors (lower is better,
success = at most a threshold), ``iou`` is an overlap (higher is better, success = at least a
threshold).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxmed.envs.metrics import THRESHOLDS_DEG, THRESHOLDS_IOU, THRESHOLDS_MM, metric_stats  # noqa: F401  (re-exported)
from jaxmed.envs.metrics import success_key as _success_key
from jaxmed.envs.metrics import success_thresholds as _success_thresholds


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
