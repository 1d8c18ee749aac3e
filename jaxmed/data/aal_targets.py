"""AAL atlas structures as box targets: ``data.structures: [aal:caudate_l, ...]``.

The box and corner-pair envs read a structure as the surface points ``"<structure>#<i>"`` carried
with each subject's landmarks (:mod:`jaxmed.data.anatomy`). A structure named ``aal:<name>``
(``<name>`` from :data:`jaxmed.data.structures.AAL_STRUCTURES`: left / right caudate 71 / 72,
putamen 73 / 74, thalamus 77 / 78, hippocampus 37 / 38) is the AAL label of that name, whose only
labelled brain is Colin27 (the AAL atlas is drawn on it; :func:`jaxmed.data.colin27.load_aal`).

* **On Colin27** (``data.source: colin27``, an evaluation set) the points are
  :func:`jaxmed.data.structures.structure_points` of the label on the native 1 mm grid: the six
  axis-extreme boundary voxels first, so the target box is exactly the box of the label's voxel
  centres in world mm (:func:`label_box` is that box, computed directly).
* **On the MNI template** (``data.source: afids``; training and held-out synthetic subjects) there is
  no AAL label of its own. The Colin27 points are carried to it by the least-squares affine between
  the 32 AFIDs of Colin27 and the 32 AFIDs of the template (:func:`afids_affine`; an affine maps the
  box-defining hull vertices to hull vertices of the mapped label, so the carried points still span
  the carried label's box) and then through every synthetic subject's warp like any landmark.
  Training therefore never sees a Colin27 image, but the template's target boxes are Colin27's
  structures moved by a 12-parameter affine: a figure on Colin27 of any method that reads the
  template's boxes (the template prior, the registration baseline, a trained agent) measures how well
  it undoes that affine plus the image's own evidence, not the anatomical variability between two
  brains. Figures on held-out synthetic subjects are unaffected by this.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from jaxmed.data.landmarks import Landmarks
from jaxmed.errors import ConfigError

#: Prefix of an AAL structure name in ``data.structures`` and ``env.structure``.
PREFIX = "aal:"
#: Surface points per AAL structure (the configs set ``env.n_points`` to it).
N_POINTS = 64


def is_aal(structure: str) -> bool:
    return isinstance(structure, str) and structure.startswith(PREFIX)


def aal_name(structure: str) -> str:
    """``"aal:caudate_l"`` -> ``"caudate_l"``; :class:`ConfigError` for an unknown AAL structure."""
    from jaxmed.data.structures import AAL_STRUCTURES

    name = structure[len(PREFIX):] if is_aal(structure) else structure
    if name not in AAL_STRUCTURES:
        raise ConfigError(f"unknown AAL structure {structure!r}; available: {', '.join(PREFIX + n for n in AAL_STRUCTURES)}")
    return name


def check_structures(structures: Sequence[str], where: str) -> None:
    """:class:`ConfigError` (naming ``where``) for an ``aal:`` name that is not an AAL structure."""
    for s in structures:
        if is_aal(s):
            try:
                aal_name(s)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None


@functools.lru_cache(maxsize=4)
def _colin27_labels():
    from jaxmed.data import colin27

    volume, _ = colin27.load_aal(spacing=None)
    return volume


def label_mask(structure: str) -> tuple:
    """``(AAL label volume on the native 1 mm Colin27 grid, bool mask of structure)``."""
    from jaxmed.data.structures import AAL_STRUCTURES
    from jaxmed.data.structures import label_mask as _label_mask

    labels = _colin27_labels()
    return labels, _label_mask(labels, AAL_STRUCTURES[aal_name(structure)])


def label_box(structure: str) -> tuple[np.ndarray, np.ndarray]:
    """``(min (3,), max (3,))`` world mm: the box of the structure's AAL voxel centres on Colin27."""
    labels, mask = label_mask(structure)
    world = labels.voxel_to_world(np.argwhere(mask))
    return world.min(0), world.max(0)


@functools.lru_cache(maxsize=16)
def _colin27_points(structures: tuple[str, ...], n_points: int) -> Landmarks:
    from jaxmed.data.structures import structure_points

    labels, positions = [], []
    for s in structures:
        volume, mask = label_mask(s)
        lm = structure_points(volume, mask, s, n_points)
        labels += lm.labels
        positions.append(lm.positions)
    return Landmarks(tuple(labels), np.concatenate(positions), source=f"AAL {', '.join(structures)} of Colin27")


def colin27_points(structures: Sequence[str], n_points: int = N_POINTS) -> Landmarks:
    """Surface points ``"aal:<name>#000" ...`` of AAL ``structures`` on Colin27 (world RAS mm)."""
    names = tuple(dict.fromkeys(structures))
    for s in names:
        aal_name(s)
    return _colin27_points(names, int(n_points))


def afids_affine(source: Landmarks, target: Landmarks) -> np.ndarray:
    """``(4, 4)``: the least-squares affine sending ``source``'s AFIDs to ``target``'s (world mm; the
    labels both have, at least 4 not coplanar)."""
    common = [l for l in source.labels if l in target.labels]
    if len(common) < 4:
        raise ConfigError(f"afids_affine: {len(common)} common landmarks, need at least 4")
    x = source.select(common).positions
    y = target.select(common).positions
    xh = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    sol, _, rank, _ = np.linalg.lstsq(xh, y, rcond=None)
    if rank < 4:
        raise ConfigError("afids_affine: the common landmarks are coplanar")
    out = np.eye(4)
    out[:3] = sol.T
    return out


def template_points(template_landmarks: Landmarks, structures: Sequence[str], n_points: int = N_POINTS) -> Landmarks:
    """The Colin27 AAL points of ``structures`` carried onto a template by :func:`afids_affine` from
    Colin27's AFIDs to ``template_landmarks`` (module docstring)."""
    from jaxmed.data import colin27

    pts = colin27_points(structures, n_points)
    a = afids_affine(colin27.landmarks(), template_landmarks)
    moved = pts.positions @ a[:3, :3].T + a[:3, 3]
    return Landmarks(pts.labels, moved, source=f"{pts.source}, carried by the AFIDs affine to {template_landmarks.source}")


def append(landmarks: Landmarks, extra: Landmarks) -> Landmarks:
    """``landmarks`` followed by ``extra`` (same source)."""
    return Landmarks(landmarks.labels + extra.labels, np.concatenate([landmarks.positions, extra.positions]),
                     tuple(landmarks.descriptions) + tuple(extra.descriptions), source=landmarks.source)
