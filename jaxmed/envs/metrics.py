"""Per-label statistics of the per-agent metrics an env reports (mm, degrees, IoU) and success rates.

A metric's name says its unit and direction: ``*_mm`` and ``*_deg`` are errors (lower is better,
success = at most a threshold), ``iou`` is an overlap (higher is better, success = at least a
threshold). Pure NumPy on the host: the env's result-table rows (:meth:`Environment.metric_stats`)
and :mod:`jaxmed.evaluation` use it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

THRESHOLDS_MM = (2.0, 4.0, 8.0)
THRESHOLDS_DEG = (2.0, 5.0, 10.0)
THRESHOLDS_IOU = (0.5, 0.7)


def success_thresholds(metric: str) -> tuple[str, tuple[float, ...], bool]:
    """``(suffix, thresholds, higher_is_better)`` for a metric name."""
    if metric.endswith("_mm"):
        return "mm", THRESHOLDS_MM, False
    if metric.endswith("_deg"):
        return "deg", THRESHOLDS_DEG, False
    if metric.endswith("iou"):
        return "iou", THRESHOLDS_IOU, True
    return "", (), False


def success_key(metric: str, t: float) -> str:
    """The result-row key of the success rate at threshold ``t`` (e.g. ``success_2mm``, ``success_iou0.5``)."""
    suffix, _, higher = success_thresholds(metric)
    return f"success_{suffix}{t:g}" if higher else f"success_{t:g}{suffix}"


def metric_stats(values: np.ndarray, labels: Sequence[str], metric: str = "distance_mm") -> dict[str, dict[str, float]]:
    """Per-label statistics of a final metric.

    Args:
      values: ``(E, A)``, the metric of agent ``a`` at the end of episode ``e``.
      labels: ``A`` row labels (repeats allowed: agents sharing a label are pooled, e.g. several
        agents on one landmark).
      metric: its name (decides the success thresholds, see the module docstring).
    Returns:
      ``{label: {n, mean, std, median, p90, max, success_*}}``; for ``*_mm`` metrics the success keys
      are ``success_2mm``, ``success_4mm``, ``success_8mm`` (fractions).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[1] != len(labels):
        raise ValueError(f"metric_stats: values {values.shape} do not match {len(labels)} labels")
    _, thresholds, higher = success_thresholds(metric)
    out = {}
    for label in dict.fromkeys(labels):
        e = values[:, [i for i, l in enumerate(labels) if l == label]].ravel()
        row = {"n": int(e.size), "mean": float(e.mean()), "std": float(e.std()), "median": float(np.median(e)),
               "p90": float(np.percentile(e, 90)), "max": float(e.max())}
        for t in thresholds:
            row[success_key(metric, t)] = float((e >= t).mean() if higher else (e <= t).mean())
        out[label] = row
    return out
