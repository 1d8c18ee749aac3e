"""Small float32 linear algebra at full precision on every backend.

On GPUs XLA computes a float32 ``dot_general`` at its *default* precision with TF32 tensor cores
(10-bit mantissa) and on TPUs with bfloat16 passes. For network layers that is what one wants; for
geometry it is not: a voxel coordinate of 150 carries an error of ~0.1 voxel after a TF32 matrix
product, which shifts every trilinear sample and every distance (mm) computed from it. Every
coordinate transform in :mod:`jaxmed.ops` and the environments therefore goes through the helpers
here, which ask for ``Precision.HIGHEST``: exact float32 on GPUs and TPUs, and on the CPU the very
same kernel as a plain ``@`` (so CPU results are unchanged bit for bit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def matmul(a, b):
    """``a @ b`` (``jnp.matmul`` broadcasting rules) in float32 at ``Precision.HIGHEST``."""
    return jnp.matmul(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), precision=HIGHEST)


def matvec(m, v):
    """``m @ v`` for ``m`` ``(R, C)`` and ``v`` ``(C,)`` or ``(..., C)``: ``(R,)`` / ``(..., R)`` float32 at
    ``Precision.HIGHEST``."""
    m = jnp.asarray(m, jnp.float32)
    v = jnp.asarray(v, jnp.float32)
    return jnp.matmul(m, v, precision=HIGHEST) if v.ndim == 1 else jnp.matmul(v, m.T, precision=HIGHEST)


def vdot(a, b):
    """Dot products along the last axis of ``(..., n)`` vectors (broadcast): ``(...)`` float32 at
    ``Precision.HIGHEST``."""
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    if a.ndim == 1 and b.ndim == 1:
        return jnp.dot(a, b, precision=HIGHEST)
    if b.ndim == 1:
        return jnp.matmul(a, b, precision=HIGHEST)
    return jnp.einsum("...i,...i->...", a, b, precision=HIGHEST)


def apply_affine(points, affine):
    """Map points through an affine: ``affine[:3, :3] @ x + affine[:3, 3]`` for every ``x``.

    Args:
      points: ``(..., 3)`` float or int (voxel indices or world mm).
      affine: ``(4, 4)`` or ``(3, 4)`` float; or ``(..., 4, 4)`` / ``(..., 3, 4)`` with leading axes
        broadcastable against ``points``' leading axes.

    Returns:
      ``(..., 3)`` float32, at ``Precision.HIGHEST``.
    """
    p = jnp.asarray(points, jnp.float32)
    a = jnp.asarray(affine, jnp.float32)
    if p.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {p.shape}")
    if a.ndim < 2 or a.shape[-2:] not in ((4, 4), (3, 4)):
        raise ValueError(f"affine must be (..., 4, 4) or (..., 3, 4), got {a.shape}")
    if a.ndim == 2:
        return matvec(a[:3, :3], p) + a[:3, 3]
    return jnp.einsum("...ij,...j->...i", a[..., :3, :3], p, precision=HIGHEST) + a[..., :3, 3]


__all__ = ["HIGHEST", "apply_affine", "matmul", "matvec", "vdot"]
