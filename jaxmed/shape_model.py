"""The landmarks of one image as a whole: a robust affine shape model that finds and mends lost answers.

Every agent hunts its landmark on its own, so an agent that locks onto the wrong structure (a
neighbouring horn, the other hemisphere's copy, a sulcus one fold away) ends far from where the rest
of the configuration puts it, and nothing in its own end points says so when its starts agree. The
multi-landmark detectors of the literature close this gap with a shape model over all landmarks
(a robust statistical shape model in the multi-scale RL detector of Ghesu et al., TPAMI 2019; RANSAC
over landmark subsets in the random-forest detectors before it). This module does the same with the
template's own configuration:

1. :func:`robust_affine` fits the 12-dof affine map from the template's landmarks to the agents'
   answers by least trimmed squares (FAST-LTS: random 5-point starts refined by concentration steps
   on the ``keep`` fraction of landmarks with the smallest residuals), so a minority of lost answers
   cannot pull the fit;
2. :func:`check_shape` measures each answer's residual (mm) from the fitted configuration; an
   answer farther than ``max(min_mm, k x`` the median residual ``)`` is an outlier, the map is refitted
   on the inliers, and each outlier is replaced by the template landmark mapped through it (the
   "where the other landmarks say it is" answer). The report keeps the agents' own answer, the
   residual and the verdict per landmark.

The affine map absorbs the subject's position, size and shear (any scanner frame, not only MNI
space); what remains is anatomy that an affine map does not explain (a few mm in adult brains) plus
the agents' errors. All positions are world RAS mm.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxmed.errors import ConfigError, LandmarkError

#: The fewest landmarks a shape check works with: 12 affine unknowns, and enough left over to tell
#: an outlier from the fit.
MIN_LANDMARKS = 8


def _homogeneous(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points, np.ones((len(points), 1))], axis=1)


def fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares affine map ``(4, 4)`` taking ``src`` ``(n, 3)`` onto ``dst`` ``(n, 3)`` (mm);
    ``n >= 4`` points not all in one plane (else :class:`LandmarkError`)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    h = _homogeneous(src)
    if len(src) < 4 or np.linalg.matrix_rank(h, tol=1e-6 * max(1.0, float(np.abs(src).max()))) < 4:
        raise LandmarkError(f"fit_affine: {len(src)} points do not span 3-D space (need 4 not in one plane)")
    m, *_ = np.linalg.lstsq(h, dst, rcond=None)  # (4, 3)
    out = np.eye(4)
    out[:3, :] = m.T
    return out


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` ``(n, 3)`` mapped through ``matrix`` ``(4, 4)``."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


@dataclasses.dataclass(frozen=True)
class AffineFit:
    """A robust fit of the template's landmarks onto the answers.

    Attributes:
      matrix: ``(4, 4)`` affine map, template world mm -> image world mm.
      residuals_mm: ``(K,)`` distance of each answer from its mapped template landmark.
      support: ``(K,)`` bool, the landmarks the final fit used.
    """

    matrix: np.ndarray
    residuals_mm: np.ndarray
    support: np.ndarray


def robust_affine(src: np.ndarray, dst: np.ndarray, *, keep: float = 0.75, n_starts: int = 64, steps: int = 30,
                  seed: int = 0) -> AffineFit:
    """The affine map ``src`` -> ``dst`` (``(K, 3)`` mm each) minimising the sum of the smallest
    ``ceil(keep * K)`` squared residuals (least trimmed squares, FAST-LTS): the plain least-squares fit
    and ``n_starts`` random 5-landmark fits, each refined by concentration steps (refit on the
    ``ceil(keep * K)`` landmarks closest to the current fit) until its support stops changing; the
    best trimmed cost wins. Deterministic for a ``seed``."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    k = len(src)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise LandmarkError(f"robust_affine: need two (K, 3) arrays of the same shape, got {src.shape} and {dst.shape}")
    if k < MIN_LANDMARKS:
        raise ConfigError(f"a shape check needs at least {MIN_LANDMARKS} landmarks, got {k}")
    if not 0.5 <= keep <= 1.0:
        raise ConfigError(f"keep must be in [0.5, 1], got {keep!r}")
    h = max(6, math.ceil(keep * k))
    rng = np.random.default_rng(seed)
    starts = [np.arange(k)] + [rng.choice(k, 5, replace=False) for _ in range(n_starts)]
    best_cost, best_support = np.inf, None
    for idx in starts:
        try:
            matrix = fit_affine(src[idx], dst[idx])
        except LandmarkError:  # a degenerate (flat) start
            continue
        support = np.zeros(k, bool)
        for _ in range(steps):
            r = np.linalg.norm(apply_affine(matrix, src) - dst, axis=1)
            new = np.zeros(k, bool)
            new[np.argsort(r, kind="stable")[:h]] = True
            if np.array_equal(new, support):
                break
            support = new
            matrix = fit_affine(src[support], dst[support])
        r = np.linalg.norm(apply_affine(matrix, src) - dst, axis=1)
        cost = float(np.sum(np.sort(r)[:h] ** 2))
        if cost < best_cost - 1e-9:
            best_cost, best_support = cost, support
    if best_support is None:
        raise LandmarkError("robust_affine: the landmarks do not span 3-D space")
    matrix = fit_affine(src[best_support], dst[best_support])
    return AffineFit(matrix, np.linalg.norm(apply_affine(matrix, src) - dst, axis=1), best_support)


@dataclasses.dataclass(frozen=True)
class ShapeCheck:
    """What :func:`check_shape` found in one image.

    Attributes:
      positions: ``(K, 3)`` the checked answers (world mm): the agents' answer for an inlier, the
        template landmark mapped through the inlier fit for an outlier.
      agent_positions: ``(K, 3)`` the agents' answers as given.
      residuals_mm: ``(K,)`` distance of each agent answer from the inlier fit's prediction.
      outliers: ``(K,)`` bool, the replaced answers.
      threshold_mm: the residual beyond which an answer was an outlier.
      matrix: ``(4, 4)`` the inlier fit, template world mm -> image world mm.
    """

    positions: np.ndarray
    agent_positions: np.ndarray
    residuals_mm: np.ndarray
    outliers: np.ndarray
    threshold_mm: float
    matrix: np.ndarray


def check_shape(answers: np.ndarray, template: np.ndarray, *, k: float = 3.0, min_mm: float = 5.0,
                keep: float = 0.75, seed: int = 0) -> ShapeCheck:
    """Find and replace answers that disagree with the template's landmark configuration.

    Args:
      answers: ``(K, 3)`` the agents' answers (world mm) of one image.
      template: ``(K, 3)`` the same landmarks on the template (world mm), in the same order.
      k, min_mm: an answer is an outlier when its residual from the robust fit exceeds
        ``max(min_mm, k * median residual)``.
      keep: fraction of landmarks the trimmed fit rests on (:func:`robust_affine`).
    """
    answers, template = np.asarray(answers, np.float64), np.asarray(template, np.float64)
    if k <= 0 or min_mm < 0:
        raise ConfigError(f"shape check: k must be > 0 and min_mm >= 0, got k={k!r}, min_mm={min_mm!r}")
    if not np.all(np.isfinite(answers)) or not np.all(np.isfinite(template)):
        raise LandmarkError("shape check: answers or template landmarks contain NaN or Inf")
    fit = robust_affine(template, answers, keep=keep, seed=seed)
    threshold = max(float(min_mm), float(k) * float(np.median(fit.residuals_mm)))
    inliers = fit.residuals_mm <= threshold
    matrix = fit_affine(template[inliers], answers[inliers]) if inliers.sum() >= MIN_LANDMARKS else fit.matrix
    predicted = apply_affine(matrix, template)
    residuals = np.linalg.norm(answers - predicted, axis=1)
    outliers = ~inliers
    positions = np.where(outliers[:, None], predicted, answers)
    return ShapeCheck(positions, answers, residuals, outliers, threshold, matrix)


#: Description tags :func:`check_landmarks` writes (every landmark file format keeps descriptions).
RESIDUAL_TAG = "shape_residual_mm"
OUTLIER_TAG = "shape_outlier"


def check_landmarks(answers, template, *, k: float = 3.0, min_mm: float = 5.0, keep: float = 0.75, seed: int = 0):
    """:func:`check_shape` on :class:`jaxmed.data.Landmarks`: ``answers`` (one image's detected
    landmarks, world mm) against the same labels on ``template``. Returns ``(Landmarks, ShapeCheck)``:
    every description gains ``shape_residual_mm=<mm>``; a replaced answer also ``shape_outlier`` and
    an uncertainty (:mod:`jaxmed.inference`) equal to its residual (its agents' end points lie about
    that far from the new answer). :class:`LandmarkError` naming the labels the template lacks."""
    from jaxmed.data import Landmarks
    from jaxmed.inference import read_uncertainty, uncertainty_description

    missing = [l for l in answers.labels if l not in template.labels]
    if missing:
        raise LandmarkError(f"{answers.source}: the shape check's template ({template.source}) has no {', '.join(missing)}")
    check = check_shape(answers.positions, template.select(answers.labels).positions, k=k, min_mm=min_mm, keep=keep, seed=seed)
    old = read_uncertainty(answers)
    descriptions = []
    for i, (label, desc) in enumerate(zip(answers.labels, answers.descriptions)):
        tags = [t for t in (desc or "").split(";") if t.strip() and not t.strip().startswith((RESIDUAL_TAG, OUTLIER_TAG))]
        text = "; ".join(t.strip() for t in tags)
        if check.outliers[i]:
            text = uncertainty_description(float(check.residuals_mm[i]), text)
        elif label in old:
            text = uncertainty_description(old[label], text)
        text = f"{text}; {RESIDUAL_TAG}={check.residuals_mm[i]:.2f}" if text else f"{RESIDUAL_TAG}={check.residuals_mm[i]:.2f}"
        descriptions.append(f"{text}; {OUTLIER_TAG}" if check.outliers[i] else text)
    return Landmarks(answers.labels, check.positions, tuple(descriptions), source=answers.source), check
