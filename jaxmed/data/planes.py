"""Standard view planes defined by anatomical landmarks, and a phantom with a visible target plane.

A :class:`PlaneDefinition` turns the positions of a few named landmarks (world RAS mm, e.g. the AFIDs
carried to a synthetic subject) into a plane ``n . x = d`` (unit normal ``n``, offset ``d`` in mm).
The computation is pure ``jax.numpy`` (jit / vmap over subjects), so the view-plane environment fits
each subject's target plane from the volume bank's landmarks at reset.

Registered definitions (:data:`PLANES`, :func:`get_plane`):

``"midsagittal"``
    Total-least-squares plane (:func:`jaxmed.ops.plane.fit_plane`, the SVD fit) through the 10
    midline AFIDs (AC, PC, infracollicular sulcus, PMJ, superior interpeduncular fossa, culmen,
    intermammillary sulcus, pineal gland, genu and splenium of the corpus callosum: |x| < 0.25 mm on
    the MNI152NLin2009cAsym template) and the midpoints of the 11 bilateral AFIDs pairs (R/L LMS,
    mammillary bodies, lateral ventricles, temporal horns, indusium griseum origins, occipital horns,
    olfactory sulcal fundi: midpoints at |x| < 0.8 mm on the template). The midpoints extend the fit
    superiorly (lateral ventricles, z = +27 mm) and posteriorly (occipital horns, y = -80 mm), where
    the midline landmarks alone (z in [-22, 6] mm) leave the tilt about the AP axis poorly determined.
    Normal ~ +R (left-right). Reference landmarks (metric): the 10 midline AFIDs.
``"acpc_axial"``
    The plane containing AC and PC and the left-right direction of the mid-sagittal fit, i.e. through
    AC with normal ``unit((AC - PC) x n_msp)`` oriented superiorly: perpendicular to the mid-sagittal
    plane and containing the AC-PC line (the Talairach axial plane). Normal ~ +S. Reference
    landmarks: AC, PC.
``"coronal_ac"`` / ``"coronal_pc"``
    The planes through AC (PC) perpendicular to both planes above: normal = the AC-PC direction
    projected into the mid-sagittal plane (~ +A). Reference landmark: AC (PC).
``"phantom"``
    The plane through landmarks L0, L1, L2 (:func:`plane_phantom`, or the blobs of
    :func:`jaxmed.data.blob_phantom`). Reference landmarks: L0, L1, L2.

Each definition also names ``normal_axis`` (the world axis its normal is close to: the start-plane
prior of an agent without ground truth) and ``in_plane_axis`` (the world axis that orients an image
sampled on the plane: its rows follow that axis projected onto the plane, see
:func:`jaxmed.ops.plane.plane_basis`).

Metrics: :meth:`PlaneDefinition.reference_point` is the centroid of the reference landmarks
projected onto the target plane (exactly on it); the distance of that point to a found plane
(``distance_mm``) is zero for a perfect answer. Alansary et al. 2018 report the mean distance of the
anatomical landmarks to the found plane, :meth:`PlaneDefinition.landmark_distance`
(``landmark_distance_mm``): it includes the landmarks' own residual off the target plane (zero for
AC/PC on the ACPC plane, not for the midline landmarks of a least-squares fit).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax.numpy as jnp
import numpy as np

from jaxmed.errors import ConfigError, LandmarkError
from jaxmed.ops.linalg import vdot
from jaxmed.ops.plane import canonical_plane, fit_plane, plane_distance_angle, point_plane_distance

#: AFIDs landmarks on the midline of the MNI152NLin2009cAsym template (|x| < 0.25 mm).
MIDLINE_AFIDS = (
    "AC",
    "PC",
    "infracollicular sulcus",
    "PMJ",
    "superior interpeduncular fossa",
    "culmen",
    "intermammillary sulcus",
    "pineal gland",
    "genu of CC",
    "splenium of CC",
)

#: Bilateral AFIDs pairs (right, left); their midpoints lie within 0.8 mm of the template midline.
BILATERAL_AFIDS = tuple(
    (f"R {name}", f"L {name}")
    for name in (
        "superior LMS",
        "inferior LMS",
        "MB",
        "LV at AC",
        "LV at PC",
        "AL temporal horn",
        "superior AM temporal horn",
        "inferior AM temporal horn",
        "indusium griseum origin",
        "ventral occipital horn",
        "olfactory sulcal fundus",
    )
)

#: Labels read by every AFIDs plane: the midline landmarks (AC first, PC second), then the pairs.
_MSP_LABELS = MIDLINE_AFIDS + tuple(label for pair in BILATERAL_AFIDS for label in pair)
_AXES = {"R": 0, "A": 1, "S": 2}


def _msp(points: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mid-sagittal fit from points ordered as ``_MSP_LABELS`` ``(32, 3)``; normal oriented to +R."""
    k = len(MIDLINE_AFIDS)
    pairs = points[k:].reshape(-1, 2, 3)
    n, d = fit_plane(jnp.concatenate([points[:k], pairs.mean(axis=1)], axis=0))
    right = jnp.sum(pairs[:, 0] - pairs[:, 1], axis=0)  # left -> right, summed over the pairs
    sign = jnp.where(vdot(n, right) < 0, -1.0, 1.0)
    return n * sign, d * sign


def _midsagittal(points):
    return _msp(points)


def _acpc_axial(points):
    n_msp, _ = _msp(points)  # AC and PC are the first two of the mid-sagittal labels
    ac, pc = points[0], points[1]
    n = jnp.cross(n_msp, ac - pc)  # right x anterior = superior
    n = n / jnp.maximum(jnp.linalg.norm(n), 1e-12)
    return n, vdot(n, ac)


def _coronal(through: int):
    def compute(points):
        n_msp, _ = _msp(points)
        ap = points[0] - points[1]  # PC -> AC: anterior
        n = ap - vdot(ap, n_msp) * n_msp
        n = n / jnp.maximum(jnp.linalg.norm(n), 1e-12)
        return n, vdot(n, points[through])

    return compute


def _three_points(points):
    p0, p1, p2 = points[0], points[1], points[2]
    n = jnp.cross(p1 - p0, p2 - p0)
    n = n / jnp.maximum(jnp.linalg.norm(n), 1e-12)
    return canonical_plane(n, vdot(n, p0))


@dataclasses.dataclass(frozen=True)
class PlaneDefinition:
    """A plane computed from named landmarks.

    Attributes:
      name: registry name.
      labels: the landmarks read, in the order ``compute`` expects them.
      reference_labels: landmarks the metrics are measured on (a subset of ``labels``).
      normal_axis: ``"R"``, ``"A"`` or ``"S"``, the world axis the normal is close to.
      in_plane_axis: the world axis that orients images sampled on the plane.
      description: one line for tables and files.
      compute: ``(K, 3) jnp positions (ordered as labels) -> (normal (3,), offset ())``, pure jnp.
    """

    name: str
    labels: tuple[str, ...]
    reference_labels: tuple[str, ...]
    normal_axis: str
    in_plane_axis: str
    description: str
    compute: Callable = dataclasses.field(repr=False, compare=False)

    @property
    def normal_axis_index(self) -> int:
        return _AXES[self.normal_axis]

    @property
    def in_plane_axis_index(self) -> int:
        return _AXES[self.in_plane_axis]

    def reference_indices(self) -> tuple[int, ...]:
        return tuple(self.labels.index(label) for label in self.reference_labels)

    def plane(self, points) -> tuple[jnp.ndarray, jnp.ndarray]:
        """``(normal (3,), offset ())`` float32 from ``points`` ``(K, 3)`` world mm ordered as ``labels``."""
        return self.compute(jnp.asarray(points, jnp.float32))

    def reference_point(self, points, normal, offset) -> jnp.ndarray:
        """``(3,)``: the reference landmarks' centroid projected onto the plane ``(normal, offset)``."""
        ref = jnp.asarray(points, jnp.float32)[jnp.asarray(self.reference_indices())]
        c = ref.mean(axis=0)
        return c - point_plane_distance(c, normal, offset) * normal

    def landmark_distance(self, points, normal, offset) -> jnp.ndarray:
        """``()`` mean |distance| (mm) of the reference landmarks to the plane ``(normal, offset)``
        (the metric of Alansary et al. 2018)."""
        ref = jnp.asarray(points, jnp.float32)[jnp.asarray(self.reference_indices())]
        return jnp.mean(jnp.abs(point_plane_distance(ref, normal, offset)))

    def from_landmarks(self, landmarks) -> tuple[np.ndarray, float]:
        """Host-side convenience: ``(normal (3,), offset)`` NumPy float64 from a
        :class:`jaxmed.data.Landmarks` holding every label of this definition."""
        missing = [label for label in self.labels if label not in landmarks.labels]
        if missing:
            raise LandmarkError(f"plane {self.name!r} needs landmark(s) {', '.join(map(repr, missing))}; "
                                f"{landmarks.source or 'the landmark set'} has {', '.join(landmarks.labels)}")
        n, d = self.plane(landmarks.select(self.labels).positions)
        return np.asarray(n, np.float64), float(d)


PLANES: dict[str, PlaneDefinition] = {
    "midsagittal": PlaneDefinition(
        "midsagittal", _MSP_LABELS, MIDLINE_AFIDS, "R", "A",
        "mid-sagittal plane: SVD fit to the 10 midline AFIDs and the midpoints of the 11 bilateral pairs", _midsagittal),
    "acpc_axial": PlaneDefinition(
        "acpc_axial", _MSP_LABELS, ("AC", "PC"), "S", "R",
        "ACPC axial plane: contains AC, PC and the left-right normal of the mid-sagittal fit", _acpc_axial),
    "coronal_ac": PlaneDefinition(
        "coronal_ac", _MSP_LABELS, ("AC",), "A", "R",
        "coronal plane through AC, perpendicular to the AC-PC line and the mid-sagittal plane", _coronal(0)),
    "coronal_pc": PlaneDefinition(
        "coronal_pc", _MSP_LABELS, ("PC",), "A", "R",
        "coronal plane through PC, perpendicular to the AC-PC line and the mid-sagittal plane", _coronal(1)),
    "phantom": PlaneDefinition(
        "phantom", ("L0", "L1", "L2"), ("L0", "L1", "L2"), "S", "R",
        "plane through phantom landmarks L0, L1, L2", _three_points),
}


def get_plane(name: str) -> PlaneDefinition:
    """The registered :class:`PlaneDefinition` ``name`` (:class:`ConfigError` listing them otherwise)."""
    if name not in PLANES:
        raise ConfigError(f"unknown plane {name!r}; registered planes: {', '.join(PLANES)}")
    return PLANES[name]


def plane_errors(normal, offset, target_normal, target_offset, reference_point) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(angle_deg, distance_mm)`` of a found plane against a target: the angle between the normals
    (degrees, ``[0, 90]``) and the distance of the target's ``reference_point`` ``(3,)`` (on the target
    plane) to the found plane (mm)."""
    angle, _ = plane_distance_angle(normal, offset, target_normal, target_offset)
    return angle, jnp.abs(point_plane_distance(reference_point, normal, offset))


# ---------------------------------------------------------------------------------------------
# A phantom whose target plane is visible from everywhere


def plane_phantom(
    shape: tuple[int, int, int] = (32, 32, 32),
    spacing: float = 2.0,
    seed: int = 0,
    max_tilt_deg: float = 15.0,
    max_shift_mm: float = 4.0,
    noise: float = 0.02,
) -> tuple:
    """A head-like ellipsoid split by a bright sheet, with the sheet's plane as target.

    The target plane has a normal tilted from +S by up to ``max_tilt_deg`` (seeded direction) and
    passes within ``max_shift_mm`` of the volume centre. Inside the ellipsoid (semi-axes 0.85, 0.75
    and 0.65 of the half-extent along R, A, S) the intensity is ``0.3 + 0.25 tanh(s / 6 mm)`` plus a
    sheet ``0.45 exp(-s^2 / (2 (1.5 mm)^2))``, where ``s`` is the signed distance to the target plane:
    brighter above it, darker below, so that a slab sampled off the plane shows on which side it lies
    and a tilted slab shows a bright band. Landmarks ``L0, L1, L2`` lie on the sheet (at 0.4 of the
    half-extent from the centre, 120 degrees apart), so the ``"phantom"`` plane definition recovers
    the target exactly; ``L3`` is the sheet's point nearest the volume centre.

    Returns ``(Volume, Landmarks)`` with an axis-aligned RAS affine centred on the world origin,
    data float32 in ``[0, 1]``.
    """
    from jaxmed.data.landmarks import Landmarks
    from jaxmed.data.phantoms import centred_grid, noisy_volume

    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    affine, world, half = centred_grid(shape, spacing)

    tilt = np.deg2rad(rng.uniform(0.0, max_tilt_deg))
    phi = rng.uniform(0.0, 2 * np.pi)
    normal = np.array([np.sin(tilt) * np.cos(phi), np.sin(tilt) * np.sin(phi), np.cos(tilt)])
    centre = normal * rng.uniform(-max_shift_mm, max_shift_mm)
    s = (world - centre) @ normal
    head = np.sum((world / (np.array([0.85, 0.75, 0.65]) * half)) ** 2, axis=-1) <= 1.0
    data = head * (0.3 + 0.25 * np.tanh(s / 6.0) + 0.45 * np.exp(-0.5 * (s / 1.5) ** 2))
    volume = noisy_volume(data, noise, rng, affine, f"plane_phantom(seed={seed})")

    e = np.eye(3)[np.argmin(np.abs(normal))]
    u = np.cross(normal, e)
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    r = 0.4 * half.min()
    points = [centre + r * (np.cos(a) * u + np.sin(a) * v) for a in np.deg2rad([0.0, 120.0, 240.0])] + [centre]
    return volume, Landmarks(("L0", "L1", "L2", "L3"), np.array(points), source=volume.source)
