"""Rigid transforms as ``(4, 4)`` homogeneous matrices built from 6 parameters.

Parameters ``(6,)`` float: translations ``(tx, ty, tz)`` in the units of the coordinates they act
on (voxels or mm) and Euler angles ``(rx, ry, rz)`` in **degrees**, applied about x, then y, then
z: ``R = Rz @ Ry @ Rx`` (the same convention as :func:`jaxmed.data.geometry.rotation_matrix`).
The rotation is about ``center``: ``x' = R (x - c) + c + t``. Matrices map column vectors
``[x, 1]``; ``compose(a, b)`` applies ``b`` first.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxmed.ops.linalg import matmul, matvec


def rotation_matrix(angles_deg):
    """``(3, 3)`` float32 rotation from Euler angles ``(rx, ry, rz)`` in degrees, ``Rz @ Ry @ Rx``."""
    ax, ay, az = jnp.deg2rad(jnp.asarray(angles_deg, jnp.float32))
    cx, sx, cy, sy, cz, sz = jnp.cos(ax), jnp.sin(ax), jnp.cos(ay), jnp.sin(ay), jnp.cos(az), jnp.sin(az)
    one, zero = jnp.ones_like(cx), jnp.zeros_like(cx)
    rx = jnp.stack([jnp.stack([one, zero, zero]), jnp.stack([zero, cx, -sx]), jnp.stack([zero, sx, cx])])
    ry = jnp.stack([jnp.stack([cy, zero, sy]), jnp.stack([zero, one, zero]), jnp.stack([-sy, zero, cy])])
    rz = jnp.stack([jnp.stack([cz, -sz, zero]), jnp.stack([sz, cz, zero]), jnp.stack([zero, zero, one])])
    return matmul(matmul(rz, ry), rx)


def rigid_matrix(params, center=(0.0, 0.0, 0.0)):
    """Homogeneous rigid transform from parameters.

    Args:
      params: ``(6,)`` float, ``(tx, ty, tz, rx, ry, rz)``: translation (voxels or mm) and Euler
        angles (degrees).
      center: ``(3,)`` float, the rotation centre (same units as the translation).

    Returns:
      ``(4, 4)`` float32 ``M`` with ``M @ [x, 1] = [R (x - c) + c + t, 1]``.
    """
    p = jnp.asarray(params, jnp.float32)
    c = jnp.asarray(center, jnp.float32)
    r = rotation_matrix(p[3:6])
    t = c + p[:3] - matvec(r, c)
    top = jnp.concatenate([r, t[:, None]], axis=1)
    return jnp.concatenate([top, jnp.asarray([[0.0, 0.0, 0.0, 1.0]], jnp.float32)], axis=0)


def compose(*matrices):
    """Compose homogeneous transforms ``(4, 4)``: ``compose(a, b, c) = a @ b @ c`` (``c`` applied
    first). Returns ``(4, 4)`` float32."""
    if not matrices:
        raise ValueError("compose needs at least one matrix")
    out = jnp.asarray(matrices[0], jnp.float32)
    for m in matrices[1:]:
        out = matmul(out, m)
    return out


def invert_rigid(matrix):
    """Exact inverse of a rigid ``(4, 4)`` transform, ``[R^T, -R^T t]`` (no general matrix
    inversion). Returns ``(4, 4)`` float32."""
    m = jnp.asarray(matrix, jnp.float32)
    rt = m[:3, :3].T
    t = -matvec(rt, m[:3, 3])
    top = jnp.concatenate([rt, t[:, None]], axis=1)
    return jnp.concatenate([top, jnp.asarray([[0.0, 0.0, 0.0, 1.0]], jnp.float32)], axis=0)


def rotation_angle(r):
    """Rotation angle in degrees, in ``[0, 180]``, of a ``(3, 3)`` rotation matrix.

    Uses ``atan2(|axis * sin|, cos)`` rather than ``arccos((trace - 1) / 2)``, which loses all
    precision for small angles in float32 (resolution ~0.03 degrees).
    """
    r = jnp.asarray(r, jnp.float32)
    cos = 0.5 * (jnp.trace(r) - 1.0)
    v = jnp.stack([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    sin = 0.5 * jnp.linalg.norm(v)
    return jnp.rad2deg(jnp.arctan2(sin, cos))


def rigid_distance(params_a, params_b):
    """Distance between two rigid transforms given as parameters ``(6,)`` (same centre).

    Returns:
      ``(translation, angle)``: float32 scalars; the Euclidean distance between the translations
      (units of the translation, e.g. mm) and the angle in degrees, ``[0, 180]``, of the relative
      rotation ``Ra^T Rb`` (geodesic distance on SO(3); differs from the distance between Euler
      angle triples).
    """
    a = jnp.asarray(params_a, jnp.float32)
    b = jnp.asarray(params_b, jnp.float32)
    translation = jnp.linalg.norm(a[:3] - b[:3])
    angle = rotation_angle(matmul(rotation_matrix(a[3:6]).T, rotation_matrix(b[3:6])))
    return translation, angle


def matrix_to_params(matrix, center=(0.0, 0.0, 0.0)):
    """Inverse of :func:`rigid_matrix`: ``(6,)`` float32 parameters of a rigid ``(4, 4)`` matrix.

    Angles come back in ``rx, rz in (-180, 180]``, ``ry in [-90, 90]``; at the gimbal-lock
    singularity ``ry = +-90`` only ``rx -+ rz`` is determined and ``rz`` is set to 0.
    """
    m = jnp.asarray(matrix, jnp.float32)
    c = jnp.asarray(center, jnp.float32)
    r = m[:3, :3]
    # R = Rz Ry Rx: r20 = -sin(ry), r21 = cos(ry) sin(rx), r22 = cos(ry) cos(rx),
    # r10 = sin(rz) cos(ry), r00 = cos(rz) cos(ry).
    sy = -jnp.clip(r[2, 0], -1.0, 1.0)
    cy = jnp.hypot(r[0, 0], r[1, 0])
    ry = jnp.arctan2(sy, cy)
    locked = cy < 1e-6
    rx = jnp.where(locked, jnp.arctan2(-r[1, 2], r[1, 1]), jnp.arctan2(r[2, 1], r[2, 2]))
    rz = jnp.where(locked, 0.0, jnp.arctan2(r[1, 0], r[0, 0]))
    t = m[:3, 3] - c + matvec(r, c)
    return jnp.concatenate([t, jnp.rad2deg(jnp.stack([rx, ry, rz]))])
