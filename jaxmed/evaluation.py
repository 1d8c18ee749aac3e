"""Accuracy statistics of landmark agents: per-landmark errors in mm, success rates, tables."""

from __future__ import annotations

from typing import Sequence

import numpy as np

THRESHOLDS_MM = (2.0, 4.0, 8.0)


def landmark_stats(errors_mm: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-label statistics of final errors.

    Args:
      errors_mm: ``(E, A)`` final distance of agent ``a`` to its target in episode ``e`` (mm).
      labels: ``A`` target labels (repeats allowed: several agents on one landmark are pooled).
    Returns:
      ``{label: {n, mean, std, median, p90, max, success_2mm, success_4mm, success_8mm}}`` (mm / fractions).
    """
    errors_mm = np.asarray(errors_mm, dtype=np.float64)
    out = {}
    for label in dict.fromkeys(labels):
        e = errors_mm[:, [i for i, l in enumerate(labels) if l == label]].ravel()
        row = {"n": int(e.size), "mean": float(e.mean()), "std": float(e.std()), "median": float(np.median(e)),
               "p90": float(np.percentile(e, 90)), "max": float(e.max())}
        for t in THRESHOLDS_MM:
            row[f"success_{t:g}mm"] = float((e <= t).mean())
        out[label] = row
    return out


def format_table(stats: dict[str, dict[str, float]], extra: dict[str, dict[str, float]] | None = None) -> str:
    """A Markdown table of :func:`landmark_stats` (optionally with a baseline column set, e.g. the template prior)."""
    head = "| landmark | n | mean ± std (mm) | median | p90 | ≤2 mm | ≤4 mm | ≤8 mm |"
    if extra:
        head += " template prior mean (mm) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for label, r in stats.items():
        line = (f"| {label} | {r['n']} | {r['mean']:.2f} ± {r['std']:.2f} | {r['median']:.2f} | {r['p90']:.2f} | "
                f"{100 * r['success_2mm']:.0f} % | {100 * r['success_4mm']:.0f} % | {100 * r['success_8mm']:.0f} % |")
        if extra:
            line += f" {extra[label]['mean']:.2f} |"
        lines.append(line)
    return "\n".join(lines)
