"""Per-label statistics of the per-agent metrics an env reports (mm, degrees, IoU) and success rates.

A metric's name says its unit and direction: ``*_mm`` and ``*_deg`` are errors (lower is better,
success = at most a threshold), ``iou`` is an overlap (higher is better, success = at least a
threshold). Pure NumPy on the host: the env's result-table rows (:meth:`Environment.metric_stats`)
and :mod:`jaxmed.evaluation` use it; :func:`episode_rows` lists an evaluation episode by episode.
"""

from __future__ import annotations

import csv
import io
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
    for label, idx in label_columns(labels).items():
        e = values[:, idx].ravel()
        row = {"n": int(e.size), "mean": float(e.mean()), "std": float(e.std()), "median": float(np.median(e)),
               "p90": float(np.percentile(e, 90)), "max": float(e.max())}
        for t in thresholds:
            row[success_key(metric, t)] = float((e >= t).mean() if higher else (e <= t).mean())
        out[label] = row
    return out


def label_columns(labels: Sequence[str]) -> dict[str, list[int]]:
    """``{label: [agent indices]}`` in first-appearance order: which columns (agents) of an ``(E, A)``
    metric carry each distinct label (several agents may hunt one landmark)."""
    return {label: [i for i, l in enumerate(labels) if l == label] for label in dict.fromkeys(labels)}


def episode_rows(env, states, seed_metrics) -> list[dict]:
    """One row per evaluation episode and seed: ``seed``, ``episode`` (its index in ``states``),
    ``subject`` (the bank volume it ran on, i.e. the held-out subject's index, for states that carry
    one) and ``"<metric> <label>"`` for every metric of the rollout and every distinct
    :attr:`~jaxmed.envs.base.Environment.metric_labels` entry (agents sharing a label, e.g. several
    agents per landmark, are averaged). ``seed_metrics``: per seed, ``{metric: (E, A) array}``."""
    labels = tuple(env.metric_labels)
    columns = label_columns(labels)
    volume = getattr(states, "volume", None)
    subject = None if volume is None else np.asarray(volume).reshape(-1)
    rows = []
    for seed, metrics in enumerate(seed_metrics):
        values = {m: np.asarray(v, np.float64).reshape(np.shape(v)[0], -1) for m, v in metrics.items()}
        n_episodes = len(next(iter(values.values())))
        for e in range(n_episodes):
            row = {"seed": seed, "episode": e}
            if subject is not None and len(subject) == n_episodes:
                row["subject"] = int(subject[e])
            for m, v in values.items():
                if v.shape[1] == len(labels):
                    row.update({f"{m} {label}": float(v[e, idx].mean()) for label, idx in columns.items()})
                else:  # a metric that is not per agent
                    row.update({f"{m} {j}" if v.shape[1] > 1 else m: float(v[e, j]) for j in range(v.shape[1])})
            rows.append(row)
    return rows


def episode_csv(rows: list[dict]) -> str:
    """:func:`episode_rows` as CSV text (header: the first row's keys)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["seed", "episode"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
