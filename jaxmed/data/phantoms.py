"""Small procedural volumes with known landmarks and boxes, for fast tests and examples.

* :func:`blob_phantom` — a soft ellipsoidal "head" with bright blobs of distinct sizes and
  elongations; each landmark sits at a blob centre, so an agent can see where to go.
* :func:`organ_phantom` — a few ellipsoid "organs" of different brightness; each one's axis-aligned
  bounding box (world RAS mm) is returned as a target box.
* :func:`ellipsoid_phantom` — one bright ellipsoid "organ" (plus dimmer distractors) whose surface
  points are landmarks ``"organ#000"``, ... (the form in which the box environments read targets).

Both are deterministic by seed and use an axis-aligned RAS affine centred on the world origin.
"""

from __future__ import annotations

import numpy as np

from jaxmed.data import geometry
from jaxmed.data.landmarks import Landmarks
from jaxmed.data.volume import Volume


def centred_grid(shape: tuple[int, int, int], spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid every phantom is drawn on: ``(affine, world, half)``, the axis-aligned RAS affine of
    ``shape`` voxels of ``spacing`` mm centred on the world origin, the world position (mm) of every
    voxel ``shape + (3,)`` and the half extent ``(3,)`` mm."""
    origin = -(np.asarray(shape, dtype=np.float64) - 1) / 2 * spacing
    affine = geometry.axis_aligned_affine(spacing, origin)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return affine, geometry.voxel_to_world(affine, idx), (np.asarray(shape) - 1) / 2 * spacing


def noisy_volume(data: np.ndarray, noise: float, rng: np.random.Generator, affine: np.ndarray, source: str) -> Volume:
    """The last step of every phantom: ``data`` plus Gaussian noise of std ``noise`` (drawn from ``rng``),
    clipped at 0, as float32 scaled to a maximum of 1, in a :class:`Volume` on ``affine``."""
    data = np.clip(data + noise * rng.standard_normal(data.shape), 0.0, None).astype(np.float32)
    return Volume(data / data.max(), affine, source=source)


def blob_phantom(
    shape: tuple[int, int, int] = (48, 48, 48),
    spacing: float = 2.0,
    n_landmarks: int = 4,
    seed: int = 0,
    noise: float = 0.02,
) -> tuple[Volume, Landmarks]:
    """A head-like phantom with ``n_landmarks`` bright, distinctly shaped blobs.

    Returns ``(volume, landmarks)``: data ``shape`` float32 in [0, 1], landmarks ``"L0".."L{n-1}"``
    at the blob centres (world RAS mm), at least ~4 blob radii apart and inside the head.
    """
    rng = np.random.default_rng(seed)
    affine, world, half = centred_grid(shape, spacing)
    head = np.exp(-np.sum((world / (0.8 * half)) ** 8, axis=-1))  # flat-topped ellipsoid
    data = 0.25 * head
    centres = []
    for _ in range(10_000):
        c = rng.uniform(-0.6, 0.6, size=3) * half
        if all(np.linalg.norm(c - o) > 0.4 * half.min() for o in centres):
            centres.append(c)
        if len(centres) == n_landmarks:
            break
    else:
        raise ValueError(f"blob_phantom: cannot place {n_landmarks} separated blobs in shape {shape}")
    for i, c in enumerate(centres):
        # Gaussian blobs of 1 to 2 voxels sigma, elongated along a different axis each
        radii = spacing * (1.0 + 0.5 * ((i + np.arange(3)) % 3))
        data = data + (0.5 + 0.5 * (i + 1) / n_landmarks) * np.exp(-0.5 * np.sum(((world - c) / radii) ** 2, axis=-1))
    volume = noisy_volume(data, noise, rng, affine, f"blob_phantom(seed={seed})")
    labels = tuple(f"L{i}" for i in range(n_landmarks))
    return volume, Landmarks(labels, np.array(centres), source=volume.source)


def organ_phantom(
    shape: tuple[int, int, int] = (48, 48, 48),
    spacing: float = 2.0,
    n_organs: int = 3,
    seed: int = 0,
    noise: float = 0.02,
) -> tuple[Volume, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Ellipsoid "organs" with known bounding boxes.

    Returns ``(volume, boxes)`` where ``boxes[name] = (box_min, box_max)``, each ``(3,)`` world RAS
    mm: the axis-aligned bounding box of the ellipsoid (centre ± semi-axes).
    """
    rng = np.random.default_rng(seed)
    affine, world, half = centred_grid(shape, spacing)
    data = np.zeros(shape, dtype=np.float64)
    boxes = {}
    for i in range(n_organs):
        semi = rng.uniform(0.12, 0.3, size=3) * half
        centre = rng.uniform(-1, 1, size=3) * (half - semi) * 0.8
        inside = np.sum(((world - centre) / semi) ** 2, axis=-1) <= 1.0
        data[inside] = 0.4 + 0.6 * (i + 1) / n_organs
        boxes[f"organ{i}"] = (centre - semi, centre + semi)
    return noisy_volume(data, noise, rng, affine, f"organ_phantom(seed={seed})"), boxes


def sphere_directions(n: int) -> np.ndarray:
    """``(n, 3)`` unit vectors: the 6 axis directions ``±x, ±y, ±z`` first, then a Fibonacci spiral
    (nearly uniform on the sphere) for the remaining ``n - 6``; ``n >= 6``."""
    if n < 6:
        raise ValueError(f"sphere_directions: need n >= 6 (the six axis directions), got {n}")
    axes = np.concatenate([np.eye(3), -np.eye(3)])[[0, 3, 1, 4, 2, 5]]
    m = n - 6
    i = np.arange(m) + 0.5
    z = 1.0 - 2.0 * i / max(m, 1)
    phi = np.pi * (1.0 + 5.0**0.5) * i
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    spiral = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)
    return np.concatenate([axes, spiral])


def ellipsoid_phantom(
    shape: tuple[int, int, int] = (32, 32, 32),
    spacing: float = 2.0,
    seed: int = 0,
    n_points: int = 26,
    n_distractors: int = 1,
    semi_range: tuple[float, float] = (0.15, 0.35),
    noise: float = 0.02,
    name: str = "organ",
) -> tuple[Volume, Landmarks]:
    """One bright ellipsoid "organ" with surface points as landmarks, for the box environments.

    The organ (intensity 1) has axis-aligned semi-axes drawn in ``semi_range`` times the half field
    of view and a centre drawn so that it stays inside the image; ``n_distractors`` dimmer
    ellipsoids (intensity 0.45, smaller) are placed elsewhere and a faint "body" fills the
    background. Landmarks ``"<name>#000" ... "<name>#{n-1}"`` are ``centre + semi * d`` for the
    directions ``d`` of :func:`sphere_directions` (the six axis extremes first), so their bounding
    box is exactly the organ's: ``centre ± semi``.

    Returns ``(volume, landmarks)``: data ``shape`` float32 in [0, 1], landmarks world RAS mm.
    """
    rng = np.random.default_rng(seed)
    affine, world, half = centred_grid(shape, spacing)
    body = np.exp(-np.sum((world / (0.9 * half)) ** 6, axis=-1))
    data = 0.15 * body
    semi = rng.uniform(*semi_range, size=3) * half
    centre = rng.uniform(-1, 1, size=3) * (half - semi) * 0.7
    for _ in range(n_distractors):
        d_semi = rng.uniform(0.08, 0.18, size=3) * half
        for _ in range(1000):
            d_centre = rng.uniform(-1, 1, size=3) * (half - d_semi) * 0.8
            if np.any(np.abs(d_centre - centre) > semi + d_semi + spacing):
                break
        inside = np.sum(((world - d_centre) / d_semi) ** 2, axis=-1) <= 1.0
        data[inside] = 0.45
    inside = np.sum(((world - centre) / semi) ** 2, axis=-1) <= 1.0
    data[inside] = 1.0
    volume = noisy_volume(data, noise, rng, affine, f"ellipsoid_phantom(seed={seed})")
    points = centre + semi * sphere_directions(n_points)
    labels = tuple(f"{name}#{i:03d}" for i in range(n_points))
    return volume, Landmarks(labels, points, source=volume.source)
