"""From agents' end points to one answer per landmark, finer than the voxel grid, with an uncertainty.

A landmark run ends with many end points per landmark: every agent that hunts it (``agents_per_target``)
from every start point. This module turns them into an answer:

* **Sub-voxel end points** (:func:`end_points`): an agent that stops by oscillating at the finest level
  swings between neighbouring voxels; the centre of that oscillation (the mean of its positions since
  it reached the finest level, at most ``osc_window`` of them, read from the state's ring of past
  positions) lies between voxels. ``mode="final"`` takes the last voxel instead.
* **Robust aggregation** (:func:`aggregate`): ``median`` (coordinate-wise), ``mean``, ``trimmed``
  (mean of the ``1 - trim`` fraction of points closest to the coordinate-wise median) or
  ``geomedian`` (the geometric median, Weiszfeld's algorithm: the point minimising the summed
  Euclidean distance; robust to up to half of the agents being lost).
* **Uncertainty** per landmark: the median distance (mm) of the end points from the answer: 0 when
  every agent agrees, large when they scatter. :func:`estimate_landmarks` writes it into each
  landmark's description (``uncertainty_mm=0.83``), which every landmark file format keeps (the
  ``.fcsv`` ``desc`` column, the CSV ``description`` column, ``.mrk.json`` / JSON descriptions);
  :func:`read_uncertainty` reads it back.

All positions are world RAS mm unless a name says voxels.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from jaxmed.errors import ConfigError, LandmarkError

AGGREGATES = ("median", "mean", "trimmed", "geomedian")
END_POINTS = ("oscillation", "final")
_UNCERTAINTY = re.compile(r"uncertainty_mm=([0-9.eE+-]+|nan|inf)")


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One landmark's answer.

    Attributes:
      position: ``(3,)`` float64, world RAS mm.
      uncertainty_mm: median distance of the end points from ``position``, mm.
      n_points: end points aggregated.
    """

    position: np.ndarray
    uncertainty_mm: float
    n_points: int


def geometric_median(points: np.ndarray, iters: int = 200, tol: float = 1e-7) -> np.ndarray:
    """The geometric median ``(3,)`` of ``points`` ``(n, 3)`` (Weiszfeld's algorithm from the
    coordinate-wise median; a point that coincides with an iterate is handled by the
    Vardi-Zhang rule, so exact duplicates and a majority at one point are fine)."""
    p = np.asarray(points, np.float64)
    y = np.median(p, axis=0)
    for _ in range(iters):
        d = np.linalg.norm(p - y, axis=1)
        at = d < 1e-12
        w = 1.0 / np.where(at, 1.0, d)
        w[at] = 0.0
        if w.sum() == 0:  # every point sits at y
            return y
        t = (w[:, None] * p).sum(0) / w.sum()
        n_at = int(at.sum())
        if n_at:
            r = np.linalg.norm((w[:, None] * (p - y)).sum(0))
            gamma = min(1.0, n_at / r) if r > 0 else 1.0
            t = (1 - gamma) * t + gamma * y
        if np.linalg.norm(t - y) < tol:
            return t
        y = t
    return y


def aggregate(points: np.ndarray, method: str = "median", trim: float = 0.2) -> Estimate:
    """One :class:`Estimate` from end points ``(n, 3)`` (world mm) by ``method`` (:data:`AGGREGATES`)."""
    if method not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {method!r}; choose one of {', '.join(AGGREGATES)}")
    if not 0.0 <= trim < 1.0:
        raise ConfigError(f"trim must be in [0, 1), got {trim!r}")
    p = np.asarray(points, np.float64).reshape(-1, 3)
    if len(p) == 0:
        raise LandmarkError("aggregate: no end points")
    if not np.all(np.isfinite(p)):
        raise LandmarkError("aggregate: end points contain NaN or Inf")
    if method == "median":
        pos = np.median(p, axis=0)
    elif method == "mean":
        pos = p.mean(axis=0)
    elif method == "trimmed":
        d = np.linalg.norm(p - np.median(p, axis=0), axis=1)
        pos = p[d <= np.quantile(d, 1.0 - trim)].mean(axis=0)
    else:
        pos = geometric_median(p)
    spread = float(np.median(np.linalg.norm(p - pos, axis=1)))
    return Estimate(pos, spread, len(p))


def end_points(final_state, osc_window: int, mode: str = "oscillation") -> np.ndarray:
    """Level-0 voxel end points ``(..., A, 3)`` float64 of a batch of final landmark-env states.

    ``mode="oscillation"``: the mean of each agent's newest ``min(osc_window, since_switch + 1)``
    positions (its ring ``history`` ``(..., A, H, 3)``, newest first): the centre of the oscillation
    it stopped in, at the finest level when it got there. ``mode="final"``: ``pos``.
    """
    if mode not in END_POINTS:
        raise ConfigError(f"unknown end-point mode {mode!r}; choose one of {', '.join(END_POINTS)}")
    pos = np.asarray(final_state.pos, np.float64)
    if mode == "final":
        return pos
    hist = np.asarray(final_state.history, np.float64)  # (..., A, H, 3)
    n = np.minimum(np.asarray(final_state.since_switch) + 1, min(int(osc_window), hist.shape[-2]))  # (..., A)
    keep = np.arange(hist.shape[-2]) < n[..., None]  # (..., A, H)
    return (hist * keep[..., None]).sum(-2) / keep.sum(-1)[..., None]


def uncertainty_description(uncertainty_mm: float, description: str = "") -> str:
    """``description`` with ``uncertainty_mm=<value>`` (2 decimals) set in it (replacing an old value)."""
    tag = f"uncertainty_mm={uncertainty_mm:.2f}"
    old = _UNCERTAINTY.sub("", description).strip(" ;")
    return f"{old}; {tag}" if old else tag


def read_uncertainty(landmarks) -> dict[str, float]:
    """``{label: uncertainty mm}`` of the landmarks whose description carries ``uncertainty_mm=...``."""
    out = {}
    for label, desc in zip(landmarks.labels, landmarks.descriptions):
        m = _UNCERTAINTY.search(desc or "")
        if m:
            out[label] = float(m.group(1))
    return out


def estimate_landmarks(points_world: np.ndarray, targets: Sequence[str], labels: Sequence[str], method: str = "median",
                       trim: float = 0.2, source: str = "<estimate>"):
    """One answer per label from end points ``(E, A, 3)`` world mm (``E`` starts, agent ``a`` hunting
    ``targets[a]``; several agents may share a target). Returns :class:`jaxmed.data.Landmarks` whose
    descriptions carry each answer's uncertainty (:func:`uncertainty_description`)."""
    from jaxmed.data import Landmarks

    pts = np.asarray(points_world, np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (len(targets), 3):
        raise LandmarkError(f"{source}: end points {pts.shape} do not match {len(targets)} agents (E, A, 3)")
    estimates = []
    for label in labels:
        agents = [i for i, t in enumerate(targets) if t == label]
        if not agents:
            raise LandmarkError(f"{source}: no agent hunts {label!r}; agents hunt {', '.join(dict.fromkeys(targets))}")
        estimates.append(aggregate(pts[:, agents].reshape(-1, 3), method, trim))
    return Landmarks(tuple(labels), np.array([e.position for e in estimates]).reshape(-1, 3),
                     tuple(uncertainty_description(e.uncertainty_mm) for e in estimates), source=source)
