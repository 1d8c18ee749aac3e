"""Voxel <-> world (RAS mm) coordinate maps.

An *affine* is a ``(4, 4)`` float64 matrix mapping voxel indices ``(i, j, k, 1)`` to world RAS
millimetres ``(x, y, z, 1)``, as in NIfTI. Voxel index ``(0, 0, 0)`` is the *centre* of the first
voxel. All functions accept points of shape ``(..., 3)``.
"""

from __future__ import annotations

import numpy as np

from jaxmed.errors import ImageError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a ``(4, 4)`` affine to points ``(..., 3)``; returns ``(..., 3)`` float64."""
    pts = np.asarray(points, dtype=np.float64)
    a = np.asarray(affine, dtype=np.float64)
    return pts @ a[:3, :3].T + a[:3, 3]


def voxel_to_world(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Voxel indices ``(..., 3)`` -> world RAS mm ``(..., 3)``."""
    return apply_affine(affine, voxels)


def world_to_voxel(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """World RAS mm ``(..., 3)`` -> continuous voxel indices ``(..., 3)`` (exact inverse)."""
    return apply_affine(np.linalg.inv(np.asarray(affine, dtype=np.float64)), points)


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm, ``(3,)``: the column norms of the affine's linear part."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def check_affine(affine: np.ndarray, source: str = "affine") -> np.ndarray:
    """Validate a voxel->world affine: shape (4, 4), finite, non-singular. Returns it as float64."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ImageError(f"{source}: affine must be 4x4, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ImageError(f"{source}: affine contains NaN or Inf values")
    det = np.linalg.det(a[:3, :3])
    scale = np.prod(voxel_spacing(a)) or 1.0
    if abs(det) < 1e-6 * scale or np.any(voxel_spacing(a) < 1e-6):
        raise ImageError(f"{source}: affine is singular (determinant {det:.3g}); the voxel->world map is not invertible")
    return a


def axis_aligned_affine(spacing: float | np.ndarray, origin: np.ndarray) -> np.ndarray:
    """RAS-ordered, axis-aligned affine with the given voxel ``spacing`` (mm) and world ``origin`` of voxel 0."""
    a = np.eye(4)
    a[:3, :3] = np.diag(np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)))
    a[:3, 3] = np.asarray(origin, dtype=np.float64)
    return a


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation ``(3, 3)`` from Euler angles in degrees about x, then y, then z (R = Rz @ Ry @ Rx)."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def best_rigid(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``(4, 4)`` least-squares rigid transform (rotation + translation) taking ``source`` ``(n, 3)``
    onto ``target`` ``(n, 3)`` (Kabsch, via :meth:`scipy.spatial.transform.Rotation.align_vectors`)."""
    from scipy.spatial.transform import Rotation

    ms, mt = source.mean(0), target.mean(0)
    rot, _ = Rotation.align_vectors(target - mt, source - ms)
    out = np.eye(4)
    out[:3, :3] = rot.as_matrix()
    out[:3, 3] = mt - out[:3, :3] @ ms
    return out
