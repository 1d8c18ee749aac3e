"""Bounding-box targets of real anatomical structures on the AFIDs template, as carried points.

The box environments read their targets from the :class:`~jaxmed.data.bank.VolumeBank`, which holds
named landmarks only, and synthetic subjects carry landmarks exactly through their random affine +
elastic warp (:mod:`jaxmed.data.synth`). So each structure is represented by a fixed set of points on
its surface in the template, stored as pseudo-landmarks ``"<structure>#<i>"`` (``brain#000``, ...):
they travel with the landmarks into every subject, and the target box of a subject is the
axis-aligned (subject world RAS) bounding box of that structure's carried points
(:func:`box_from_points`; computed inside the env).

Which points: the structure is a voxel mask of the template (below); an affine map sends the convex
hull of a point set to the convex hull of the mapped points, so the extreme points of the mapped
mask in every direction are images of hull vertices. The points are therefore ``n_points`` vertices
of the convex hull of the mask's voxel centres (world mm): the six axis-extreme voxels first (so the
template box is exact), then farthest-point sampling among the hull vertices (deterministic). The
elastic part of the warp (peak 3 mm over 25 mm) moves the true extreme only slightly off a vertex;
``tests/test_anatomy.py`` checks that the box of the carried points matches the box of the warped
mask within about a voxel. Points lie inside the head, so they are always inside every subject's
field of view.

Structures (:data:`STRUCTURES`; intensities are the template's normalised values, 0.5-99.5 percentile
-> [0, 1], as :func:`jaxmed.data.afids.load` returns them; distances in mm, converted to voxels with
the template's spacing; "component" = 6-connected component):

``brain``
    Cerebrum, cerebellum and brainstem above the axial plane 45 mm below the PMJ landmark (the
    medulla is cut there; the template's neck tissue is continuous with it). White matter: voxels
    > 0.85 above the plane, the component containing the AC voxel (scalp and marrow stay below 0.85,
    so it never leaks). Brain: that white matter grown by geodesic dilation through tissue > 0.35
    (above the plane) for 8 mm, which covers the cortex and stops at the dark CSF / skull; holes
    filled (ventricles). On the 1 mm template its box is x -72..72, y -107..74, z -66..86 mm.
``lateral_ventricles``
    CSF (voxels < 0.4) inside the ``brain`` mask; from each of the four AFIDs landmarks ``R/L LV at
    AC``, ``R/L LV at PC`` (which sit on the ventricle wall) the darkest CSF voxel within 5 mm is a
    seed; the structure is the union of the CSF components containing the seeds: frontal horns,
    bodies, atria and occipital horns (the temporal horns are too thin in the averaged template to
    connect at this threshold and are not part of it).
``fourth_ventricle``
    AFIDs has no fourth-ventricle landmark; the seed is the deepest CSF voxel (largest distance to
    tissue > 0.35) in the search box ``x = x_ICS ± 2 mm``, ``y in [y_ICS - 20, y_ICS]``, ``z in
    [z_ICS - 30, z_ICS - 9]`` below and behind the ``infracollicular sulcus`` landmark (ICS), i.e.
    between pons and cerebellum. CSF (< 0.35) is opened by 1.5 mm (voxels farther than 1.5 mm from
    tissue, the component containing the seed, grown back by 2 mm within the CSF): the opening cuts
    the ventricle from the cisterns at its thin outlets (aqueduct, foramina of Magendie and
    Luschka), so the structure is the ventricle's body.
``corpus_callosum``
    White matter (> 0.85) in the mid-sagittal slab ±3 mm around the mean x of the ``genu of CC`` and
    ``splenium of CC`` landmarks; the components containing the brightest such voxel within 3 mm of
    each of the two landmarks: the mid-sagittal callosum, including the fornix where it joins the
    callosum in the template (so the box reaches down to the fornix columns).
``midbrain``
    No mask: the points are the AFIDs midbrain landmarks themselves (PMJ, superior interpeduncular
    fossa, infracollicular sulcus, R/L superior and inferior lateral mesencephalic sulcus); the box
    is their bounding box, exact in every subject.

:func:`structure_landmarks` computes the points once per (template, landmarks, structures) and caches
them as JSON under ``<jaxmed data cache>/anatomy`` (:func:`jaxmed.data.afids.data_root`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from jaxmed.data.landmarks import Landmarks
from jaxmed.data.volume import Volume
from jaxmed.errors import ConfigError, LandmarkError

#: Bump when a definition changes: cached point sets of older versions are ignored.
VERSION = 1

# thresholds of the normalised template (module docstring)
WHITE_MATTER = 0.85
TISSUE = 0.35
CSF_VENTRICLES = 0.4
CSF_FOURTH = 0.35
BRAIN_CUT_BELOW_PMJ_MM = 45.0
CORTEX_GROWTH_MM = 8.0
MIDBRAIN_LABELS = ("PMJ", "superior interpeduncular fossa", "infracollicular sulcus", "R superior LMS",
                   "L superior LMS", "R inferior LMS", "L inferior LMS")


@dataclasses.dataclass(frozen=True)
class Structure:
    """A target structure: ``definition`` (one line; the module docstring has the details),
    ``n_points`` surface points, and ``mask(volume, landmarks)`` -> ``(X, Y, Z)`` bool, or ``None`` for a
    structure whose points are landmarks (``landmark_labels``)."""

    name: str
    definition: str
    n_points: int
    mask: Callable[[Volume, Landmarks], np.ndarray] | None = None
    landmark_labels: tuple[str, ...] = ()


# ------------------------------------------------------------------ masks


def _vox(volume: Volume, landmarks: Landmarks, label: str) -> np.ndarray:
    return volume.world_to_voxel(landmarks[label][None])[0]


def _mm_to_vox(volume: Volume, mm: float) -> float:
    return float(mm / np.min(volume.spacing))


def _component(mask: np.ndarray, seeds) -> np.ndarray:
    """Union of the 6-connected components of ``mask`` containing the integer voxels ``seeds``."""
    lab, _ = ndimage.label(mask)
    ids = {int(lab[tuple(s)]) for s in seeds} - {0}
    if not ids:
        raise LandmarkError("anatomy: no seed lies inside the thresholded region; is the template normalised to [0, 1]?")
    return np.isin(lab, sorted(ids))


def _world_axis(volume: Volume, axis: int) -> np.ndarray:
    """``(X, Y, Z)`` float64: world coordinate ``axis`` (0: x, 1: y, 2: z; mm) of every voxel centre."""
    i, j, k = np.ogrid[: volume.shape[0], : volume.shape[1], : volume.shape[2]]
    a = np.asarray(volume.affine, np.float64)[axis]
    return a[0] * i + a[1] * j + a[2] * k + a[3]


def _above_cut(volume: Volume, landmarks: Landmarks) -> np.ndarray:
    """Voxels above the axial plane ``BRAIN_CUT_BELOW_PMJ_MM`` below the PMJ (world z)."""
    return _world_axis(volume, 2) >= landmarks["PMJ"][2] - BRAIN_CUT_BELOW_PMJ_MM


_LAST_BRAIN: list = []  # (volume, landmarks, mask) of the last call: the ventricles reuse it


def brain_mask(volume: Volume, landmarks: Landmarks) -> np.ndarray:
    """``brain`` (module docstring): ``(X, Y, Z)`` bool."""
    if _LAST_BRAIN and _LAST_BRAIN[0] is volume and _LAST_BRAIN[1] is landmarks:
        return _LAST_BRAIN[2].copy()
    mask = _brain_mask(volume, landmarks)
    _LAST_BRAIN[:] = [volume, landmarks, mask]
    return mask.copy()


def _brain_mask(volume: Volume, landmarks: Landmarks) -> np.ndarray:
    data = np.asarray(volume.data)
    keep = _above_cut(volume, landmarks)
    ac = np.round(_vox(volume, landmarks, "AC")).astype(int)
    wm = _component((data > WHITE_MATTER) & keep, [ac])
    steps = max(1, int(round(_mm_to_vox(volume, CORTEX_GROWTH_MM))))
    brain = ndimage.binary_dilation(wm, iterations=steps, mask=(data > TISSUE) & keep)
    return ndimage.binary_fill_holes(brain)


def _extreme_voxel(score: np.ndarray, allowed: np.ndarray, centre: np.ndarray, radius_vox: float, largest: bool):
    """The voxel of ``allowed`` within ``radius_vox`` of ``centre`` with the largest / smallest ``score``."""
    lo = np.maximum(np.floor(centre - radius_vox).astype(int), 0)
    hi = np.minimum(np.ceil(centre + radius_vox).astype(int) + 1, score.shape)
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
    ok = allowed[sl] & (np.linalg.norm(grid - centre, axis=-1) <= radius_vox)
    if not ok.any():
        return None
    values = np.where(ok, score[sl], -np.inf if largest else np.inf)
    i = np.unravel_index(np.argmax(values) if largest else np.argmin(values), values.shape)
    return lo + np.asarray(i)


def lateral_ventricles_mask(volume: Volume, landmarks: Landmarks) -> np.ndarray:
    """``lateral_ventricles`` (module docstring): ``(X, Y, Z)`` bool."""
    data = np.asarray(volume.data)
    csf = (data < CSF_VENTRICLES) & brain_mask(volume, landmarks)
    seeds = []
    for label in ("R LV at AC", "L LV at AC", "R LV at PC", "L LV at PC"):
        seed = _extreme_voxel(data, csf, _vox(volume, landmarks, label), _mm_to_vox(volume, 5.0), largest=False)
        if seed is None:
            raise LandmarkError(f"anatomy: no CSF voxel within 5 mm of the landmark {label!r}")
        seeds.append(seed)
    return _component(csf, seeds)


def fourth_ventricle_mask(volume: Volume, landmarks: Landmarks) -> np.ndarray:
    """``fourth_ventricle`` (module docstring): ``(X, Y, Z)`` bool. Computed in a block of ± 50 mm
    around the infracollicular sulcus (the ventricle is ~2 cm across)."""
    ics = landmarks["infracollicular sulcus"]
    centre = _vox(volume, landmarks, "infracollicular sulcus")
    half = _mm_to_vox(volume, 50.0)
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, volume.shape)
    block = tuple(slice(a, b) for a, b in zip(lo, hi))
    data = np.asarray(volume.data)[block]
    csf = data < CSF_FOURTH
    depth = ndimage.distance_transform_edt(csf, sampling=volume.spacing)  # mm to the nearest tissue voxel
    dx, dy, dz = (np.broadcast_to(_world_axis(volume, a), volume.shape)[block] - ics[a] for a in range(3))
    search = (np.abs(dx) <= 2.0) & (dy >= -20.0) & (dy <= 0.0) & (dz >= -30.0) & (dz <= -9.0) & csf
    if not search.any():
        raise LandmarkError("anatomy: no CSF below and behind the infracollicular sulcus (fourth-ventricle seed)")
    seed = np.unravel_index(np.argmax(np.where(search, depth, -1.0)), depth.shape)
    core = _component(depth > 1.5, [seed])
    grown = ndimage.distance_transform_edt(~core, sampling=volume.spacing) <= 2.0
    mask = np.zeros(volume.shape, bool)
    mask[block] = _component(grown & csf, [seed])
    return mask


def corpus_callosum_mask(volume: Volume, landmarks: Landmarks) -> np.ndarray:
    """``corpus_callosum`` (module docstring): ``(X, Y, Z)`` bool."""
    data = np.asarray(volume.data)
    genu, splenium = landmarks["genu of CC"], landmarks["splenium of CC"]
    x_mid = 0.5 * (genu[0] + splenium[0])
    wm = (data > WHITE_MATTER) & (np.abs(_world_axis(volume, 0) - x_mid) <= 3.0)
    seeds = []
    for label in ("genu of CC", "splenium of CC"):
        seed = _extreme_voxel(data, wm, _vox(volume, landmarks, label), _mm_to_vox(volume, 3.0), largest=True)
        if seed is None:
            raise LandmarkError(f"anatomy: no white-matter voxel within 3 mm of the landmark {label!r}")
        seeds.append(seed)
    return _component(wm, seeds)


STRUCTURES: dict[str, Structure] = {
    s.name: s
    for s in (
        Structure("brain", "cerebrum + cerebellum + brainstem above 45 mm below PMJ: white matter (> 0.85, component "
                  "of AC) grown 8 mm through tissue (> 0.35), holes filled", 256, brain_mask),
        Structure("lateral_ventricles", "CSF (< 0.4) inside the brain, components seeded at the darkest voxel within 5 mm "
                  "of R/L LV at AC and R/L LV at PC", 128, lateral_ventricles_mask),
        Structure("fourth_ventricle", "CSF (< 0.35) opened by 1.5 mm, component of the deepest CSF voxel below and behind "
                  "the infracollicular sulcus", 64, fourth_ventricle_mask),
        Structure("corpus_callosum", "white matter (> 0.85) in the mid-sagittal slab ± 3 mm, components seeded at the genu "
                  "and splenium landmarks", 128, corpus_callosum_mask),
        Structure("midbrain", "the AFIDs midbrain landmarks (PMJ, superior interpeduncular fossa, infracollicular sulcus, "
                  "R/L superior and inferior LMS)", len(MIDBRAIN_LABELS), None, MIDBRAIN_LABELS),
    )
}


# ------------------------------------------------------------------ points


def hull_points(points: np.ndarray, n: int) -> np.ndarray:
    """``(n, 3)`` of ``points`` ``(P, 3)``, convex-hull vertices first: the six axis-extreme points
    (lowest index on ties), then farthest-point sampling among the hull vertices; when there are
    fewer than ``n`` vertices, farthest-point sampling continues among the other points (they cannot
    change the bounding box under an affine map, but keep the count fixed). Deterministic.
    :class:`LandmarkError` if ``points`` has fewer than ``n`` distinct points."""
    from scipy.spatial import ConvexHull, QhullError

    points = np.unique(np.asarray(points, np.float64), axis=0)  # sorted: the order is reproducible
    if len(points) < n:
        raise LandmarkError(f"a structure with {len(points)} boundary voxels cannot give {n} distinct points")
    try:
        on_hull = np.zeros(len(points), bool)
        on_hull[ConvexHull(points).vertices] = True
    except (QhullError, ValueError):  # flat or tiny sets: every point is a candidate
        on_hull = np.ones(len(points), bool)
    chosen = list(dict.fromkeys(int(i) for a in range(3) for i in (np.argmin(points[:, a]), np.argmax(points[:, a]))))
    dist = np.min(np.linalg.norm(points[:, None] - points[chosen][None], axis=-1), axis=1)
    while len(chosen) < n:
        hull_left = on_hull & (dist > 0)
        i = int(np.argmax(np.where(hull_left, dist, -1.0))) if hull_left.any() else int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(points - points[i], axis=-1))
    return points[chosen[:n]]


def mask_points(volume: Volume, mask: np.ndarray, n: int) -> np.ndarray:
    """``(n, 3)`` world mm: :func:`hull_points` of the voxel centres of ``mask``'s boundary voxels."""
    if not mask.any():
        raise LandmarkError(f"{volume.source}: empty structure mask")
    boundary = mask & ~ndimage.binary_erosion(mask)
    return hull_points(volume.voxel_to_world(np.argwhere(boundary)), n)


def box_from_points(points) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounding box ``(box_min (3,), box_max (3,))`` of points ``(P, 3)`` (world mm)."""
    points = np.asarray(points, np.float64).reshape(-1, 3)
    if len(points) == 0:
        raise ValueError("box_from_points: no points")
    return points.min(0), points.max(0)


def structure_mask(volume: Volume, landmarks: Landmarks, name: str) -> np.ndarray:
    """The template mask of a mask-defined structure (``(X, Y, Z)`` bool)."""
    s = _structure(name)
    if s.mask is None:
        raise ConfigError(f"structure {name!r} is defined by landmarks ({', '.join(s.landmark_labels)}), not by a mask")
    return s.mask(volume, landmarks)


def _structure(name: str) -> Structure:
    if name not in STRUCTURES:
        raise ConfigError(f"unknown structure {name!r}; available: {', '.join(STRUCTURES)}")
    return STRUCTURES[name]


def point_labels(name: str, n: int) -> tuple[str, ...]:
    """``("<name>#000", ..., )``: the labels of a structure's ``n`` points."""
    return tuple(f"{name}#{i:03d}" for i in range(n))


def _compute(volume: Volume, landmarks: Landmarks, name: str) -> np.ndarray:
    s = _structure(name)
    if s.mask is None:
        return np.asarray(landmarks.select(s.landmark_labels).positions, np.float64)
    return mask_points(volume, s.mask(volume, landmarks), s.n_points)


def _cache_key(volume: Volume, landmarks: Landmarks, names: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(f"anatomy-v{VERSION}".encode())
    h.update(np.ascontiguousarray(volume.data, np.float32).tobytes())
    h.update(np.asarray(volume.affine, np.float64).tobytes())
    h.update(json.dumps([landmarks.labels, np.round(landmarks.positions, 6).tolist()]).encode())
    h.update(json.dumps([(n, STRUCTURES[n].n_points, STRUCTURES[n].definition) for n in names]).encode())
    return h.hexdigest()[:20]


def cache_dir() -> Path:
    """Where computed point sets are cached: ``<jaxmed data cache>/anatomy``."""
    from jaxmed.data.afids import data_root

    return data_root() / "anatomy"


def structure_landmarks(volume: Volume, landmarks: Landmarks, structures: Sequence[str], *, cache: bool = True) -> Landmarks:
    """Surface points of ``structures`` on a template, as landmarks ``"<structure>#<i>"`` (world mm).

    Args:
      volume: the template (normalised to [0, 1], e.g. :func:`jaxmed.data.afids.load`).
      landmarks: its AFIDs landmarks (seeds and cut planes of the definitions).
      structures: names from :data:`STRUCTURES`.
      cache: read / write the result under :func:`cache_dir` (keyed by a hash of the template, its
        landmarks, the definitions and :data:`VERSION`); computing ``brain`` takes seconds.

    Returns:
      :class:`Landmarks` with, per structure in order, ``n_points`` labels ``"<name>#000"``, ... whose
      bounding box is the structure's box (module docstring). Append them to the template landmarks
      before synthesising subjects so they are carried through each subject's transform.
    """
    if isinstance(structures, str):
        structures = (structures,)
    names = tuple(dict.fromkeys(structures))
    for name in names:
        _structure(name)
    if not names:
        return Landmarks((), np.zeros((0, 3)), source="structure_landmarks()")
    path = cache_dir() / f"structures-{_cache_key(volume, landmarks, names)}.json"
    if cache and path.exists():
        try:
            stored = json.loads(path.read_text())
            return Landmarks(tuple(stored["labels"]), np.asarray(stored["positions"]), source=str(path))
        except (OSError, ValueError, KeyError):
            pass  # a corrupt cache entry is recomputed and replaced
    labels, positions = [], []
    for name in names:
        points = _compute(volume, landmarks, name)
        labels += point_labels(name, len(points))
        positions.append(points)
    result = Landmarks(tuple(labels), np.concatenate(positions), source=f"structure_landmarks({', '.join(names)}) of {volume.source}")
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".part", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": VERSION, "structures": list(names), "labels": list(result.labels),
                       "positions": result.positions.tolist()}, f)
        Path(tmp).replace(path)
    return result
