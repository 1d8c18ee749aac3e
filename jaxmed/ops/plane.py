"""Planes in voxel space: in-plane axes, slab sampling, planes from points, plane distances.

A plane is a unit normal ``n`` ``(3,)`` and an offset ``d`` with ``n . x = d`` (``d`` in the units
of ``x``: voxels, or mm if the points are mm). ``(n, d)`` and ``(-n, -d)`` are the same plane.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from jaxmed.ops.linalg import apply_affine, matmul, vdot
from jaxmed.ops.resample import _sample, trilinear, trilinear_from_stack

_EPS = 1e-12


def _unit(v):
    v = jnp.asarray(v, jnp.float32)
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), _EPS)


def plane_axes(normal):
    """Two in-plane unit vectors ``(u, v)``, each ``(3,)`` float32, with ``(u, v, n)`` a
    right-handed orthonormal basis (``u x v = n``).

    ``u`` is built from the coordinate axis least aligned with ``n`` (``u = n x e / |n x e|``), so it
    is well conditioned for every normal; it jumps when the least-aligned axis changes
    (not continuous, not meant for differentiation). ``normal`` need not be unit length.
    """
    n = _unit(normal)
    e = jnp.eye(3, dtype=jnp.float32)[jnp.argmin(jnp.abs(n))]
    u = _unit(jnp.cross(n, e))
    v = jnp.cross(n, u)
    return u, v


def plane_points(center, normal, size: Sequence[int] = (32, 32), n_slices: int = 1, spacing=1.0, slice_spacing=1.0):
    """Voxel coordinates of a slab of ``n_slices`` planes perpendicular to ``normal``.

    Sample ``[s, h, w]`` sits at
    ``center + (h - (H-1)/2) * spacing * u + (w - (W-1)/2) * spacing * v + (s - (S-1)/2) * slice_spacing * n``
    with ``(u, v) = plane_axes(normal)``: the grid is symmetric about ``center`` (for odd ``H``, ``W``
    and ``S`` the middle sample is ``center`` itself; for even sizes the centre lies between two
    samples) and slices are stacked along ``+n``.

    Args:
      center: ``(3,)`` float, voxel coordinates.
      normal: ``(3,)`` float, need not be unit length.
      size: static ``(H, W)`` ints.
      n_slices: static int ``S >= 1``.
      spacing, slice_spacing: float, in voxels (may be traced).

    Returns:
      ``(S, H, W, 3)`` float32.
    """
    n = _unit(normal)
    u, v = plane_axes(n)
    return slab_points(center, n, u, v, size, n_slices, spacing, slice_spacing)


def slab_points(center, normal, u, v, size: Sequence[int] = (32, 32), n_slices: int = 1, spacing=1.0, slice_spacing=1.0):
    """:func:`plane_points` with the in-plane axes given: sample ``[s, h, w]`` sits at
    ``center + (h - (H-1)/2) * spacing * u + (w - (W-1)/2) * spacing * v + (s - (S-1)/2) * slice_spacing * normal``.

    Units are those of ``center`` (voxels, or world mm for :func:`sample_plane_world_from_stack`).
    ``normal``, ``u`` and ``v`` are used as given (pass unit vectors, e.g. from :func:`plane_basis`).

    Returns:
      ``(S, H, W, 3)`` float32.
    """
    h, w = (int(k) for k in size)
    n = jnp.asarray(normal, jnp.float32)
    u = jnp.asarray(u, jnp.float32)
    v = jnp.asarray(v, jnp.float32)
    c = jnp.asarray(center, jnp.float32)

    def offsets(k, step):
        return (jnp.arange(k, dtype=jnp.float32) - 0.5 * (k - 1)) * step

    os_, oh, ow = offsets(int(n_slices), slice_spacing), offsets(h, spacing), offsets(w, spacing)
    return (
        c
        + os_[:, None, None, None] * n
        + oh[None, :, None, None] * u
        + ow[None, None, :, None] * v
    )


def sample_plane(volume, center, normal, size: Sequence[int] = (32, 32), n_slices: int = 1, spacing=1.0, slice_spacing=1.0,
                 fill: float = 0.0):
    """Trilinearly sample a slab of planes through ``center`` perpendicular to ``normal``.

    Args:
      volume: ``(X, Y, Z)`` any real dtype.
      center, normal, size, n_slices, spacing, slice_spacing: see :func:`plane_points`.
      fill: value for samples outside the volume.

    Returns:
      ``(n_slices, H, W)`` float32.
    """
    return trilinear(volume, plane_points(center, normal, size, n_slices, spacing, slice_spacing), fill)


def sample_plane_from_stack(stack, index, center, normal, size: Sequence[int] = (32, 32), n_slices: int = 1, spacing=1.0,
                            slice_spacing=1.0, fill: float = 0.0, margin: int = 0):
    """:func:`sample_plane` on the ``index``-th volume of a padded ``(N, ...)`` stack (``center`` in
    unpadded voxel coordinates, ``margin`` the padding; see ``trilinear_from_stack``)."""
    pts = plane_points(center, normal, size, n_slices, spacing, slice_spacing)
    return trilinear_from_stack(stack, index, pts, fill, margin)


def plane_basis(normal, reference):
    """In-plane unit vectors ``(u, v)`` (each ``(3,)`` float32) oriented by a reference direction.

    ``u`` is ``reference`` projected onto the plane and normalised, ``v = n x u`` (so ``(u, v, n)`` is
    right-handed, ``u x v = n``). Unlike :func:`plane_axes` this is continuous in ``normal`` as long
    as ``reference`` stays away from it, so an image sampled on a slowly tilting plane keeps its
    orientation (what a view-plane agent needs). When ``reference`` is within ~0.06 degrees of
    ``normal`` it falls back to :func:`plane_axes`.

    Args:
      normal: ``(3,)`` float, need not be unit length.
      reference: ``(3,)`` float, e.g. a world axis, need not be unit length.
    """
    n = _unit(normal)
    r = _unit(reference)
    p = r - vdot(r, n) * n
    norm = jnp.linalg.norm(p)
    fallback, _ = plane_axes(n)
    u = jnp.where(norm > 1e-3, p / jnp.maximum(norm, _EPS), fallback)
    return u, jnp.cross(n, u)


def sample_plane_world_from_stack(stack, index, world_to_voxel, center, normal, u, v, size: Sequence[int] = (32, 32),
                                  n_slices: int = 1, spacing=1.0, slice_spacing=1.0, fill: float = 0.0, margin: int = 0):
    """Sample a slab laid out in *world* units on the ``index``-th volume of a padded stack.

    The sample points are :func:`slab_points` ``(center, normal, u, v, ...)`` in world mm
    (``spacing`` / ``slice_spacing`` in mm), mapped to the volume's unpadded voxel coordinates by
    ``world_to_voxel`` and sampled trilinearly (:func:`trilinear_from_stack`; outside the volume:
    ``fill``). Works for any (oblique, anisotropic) voxel grid.

    Args:
      stack: ``(N, X + 2m, Y + 2m, Z + 2m)`` any real dtype.
      index: int scalar, volume index.
      world_to_voxel: ``(4, 4)`` float, world mm -> unpadded voxel coordinates of that volume.
      center, normal, u, v: ``(3,)`` float, world mm / unit directions.
      size: static ``(H, W)``; n_slices: static ``S``; margin: static padding ``m``.

    Returns:
      ``(S, H, W)`` float32.
    """
    pts = slab_points(center, normal, u, v, size, n_slices, spacing, slice_spacing)
    vox = apply_affine(pts, world_to_voxel)
    return trilinear_from_stack(stack, index, vox, fill, margin)


def sample_plane_world_packed(packed, level_shapes, level, index, world_to_voxel, center, normal, u, v,
                              size: Sequence[int] = (32, 32), n_slices: int = 1, spacing=1.0, slice_spacing=1.0,
                              fill: float = 0.0, margin: int = 0):
    """:func:`sample_plane_world_from_stack` on pyramid level ``level`` (traced) of a packed bank buffer.

    ``packed`` is ``(N, V)`` from :func:`jaxmed.ops.crop.pack_levels` (``VolumeBank.packed``): every
    padded level of each volume flattened one after another, so a slab at any level is one set of
    gathers from one array (no sampling of every level and selecting). Equal to sampling
    ``levels[level]`` with :func:`sample_plane_world_from_stack`: the same grid convention (the
    unpadded grid is each level's padded shape minus ``2 margin``; outside it, ``fill``).

    Args:
      packed: ``(N, V)`` any real dtype.
      level_shapes: static padded spatial shapes of the levels, ``((X_0 + 2m, ...), ...)``.
      level: int scalar, index into ``level_shapes`` (traced; clipped to the valid range).
      index: int scalar, volume index.
      world_to_voxel: ``(4, 4)``, world mm -> unpadded voxel coordinates *of that level*.
      other arguments: as :func:`sample_plane_world_from_stack`.

    Returns:
      ``(S, H, W)`` float32.
    """
    from jaxmed.ops.crop import packed_layout

    table = jnp.asarray(packed_layout(level_shapes), jnp.int32)  # (L, 4): offset, X, Y, Z (padded)
    row = table[jnp.clip(jnp.asarray(level, jnp.int32), 0, table.shape[0] - 1)]
    offset, ny, nz = row[0], row[2], row[3]
    pts = slab_points(center, normal, u, v, size, n_slices, spacing, slice_spacing)
    vox = apply_affine(pts, world_to_voxel)
    index = jnp.asarray(index, jnp.int32)
    gather = lambda i, j, k: packed[index, offset + (i * ny + j) * nz + k]  # noqa: E731
    return _sample(gather, row[1:] - 2 * margin, vox, fill, margin)


def canonical_plane(normal, offset):
    """``(n, d)`` flipped if needed so that the largest-magnitude component of ``n`` is positive
    (``(n, d)`` and ``(-n, -d)`` are the same plane; this picks one). ``normal`` ``(..., 3)``,
    ``offset`` ``(...)``."""
    n = jnp.asarray(normal, jnp.float32)
    d = jnp.asarray(offset, jnp.float32)
    big = jnp.take_along_axis(n, jnp.argmax(jnp.abs(n), axis=-1)[..., None], axis=-1)[..., 0]
    sign = jnp.where(big < 0, -1.0, 1.0)
    return n * sign[..., None], d * sign


def fit_plane(points, weights=None):
    """Least-squares plane through ``points`` ``(K, 3)`` (total least squares: minimises the sum of
    squared perpendicular distances), optionally weighted ``(K,)``.

    The plane passes through the (weighted) centroid; its normal is the eigenvector of the smallest
    eigenvalue of the centred scatter matrix, i.e. the last right-singular vector of the centred
    points (as ``numpy.linalg.svd``). Returned in :func:`canonical_plane` orientation.

    Returns:
      ``(normal (3,), offset ())`` float32 with ``normal . x = offset`` on the plane.
    """
    p = jnp.asarray(points, jnp.float32)
    w = jnp.ones(p.shape[:-1], jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    centroid = jnp.sum(w[:, None] * p, axis=0) / jnp.maximum(jnp.sum(w), _EPS)
    q = p - centroid
    scatter = matmul((w[:, None] * q).T, q)
    _, vecs = jnp.linalg.eigh(scatter)  # ascending eigenvalues
    n, d = canonical_plane(vecs[:, 0], vdot(vecs[:, 0], centroid))
    return n, d


def point_plane_distance(points, normal, offset):
    """Signed distances ``(...)`` of ``points`` ``(..., 3)`` to the plane ``normal . x = offset``
    (``normal`` need not be unit length; positive on the side ``normal`` points to)."""
    n = jnp.asarray(normal, jnp.float32)
    length = jnp.maximum(jnp.linalg.norm(n), _EPS)
    return (vdot(points, n) - jnp.asarray(offset, jnp.float32)) / length


def plane_from_points(p0, p1, p2):
    """Plane through three points ``(3,)``: returns ``(normal, offset)``, ``normal`` ``(3,)``
    float32 unit vector along ``(p1 - p0) x (p2 - p0)``, ``offset`` float32 scalar ``n . p0``.
    Collinear points give a zero normal."""
    p0 = jnp.asarray(p0, jnp.float32)
    n = jnp.cross(jnp.asarray(p1, jnp.float32) - p0, jnp.asarray(p2, jnp.float32) - p0)
    n = n / jnp.maximum(jnp.linalg.norm(n), _EPS)
    return n, vdot(n, p0)


def plane_distance_angle(n1, d1, n2, d2):
    """Angle and offset difference between planes ``n1 . x = d1`` and ``n2 . x = d2``.

    Sign-invariant: ``(n, d)`` and ``(-n, -d)`` describe the same plane; plane 2 is flipped to the
    side of ``n1`` before the offsets are compared. Normals need not be unit length (offsets are
    rescaled with them).

    Returns:
      ``(angle, distance)``: float32 scalars; angle between the normals in degrees, ``[0, 90]``
      (``atan2(|n1 x n2|, |n1 . n2|)``, accurate for small angles), and ``|d1 - d2|`` after
      orienting both normals alike (units of the offsets).
    """
    n1 = jnp.asarray(n1, jnp.float32)
    n2 = jnp.asarray(n2, jnp.float32)
    l1 = jnp.maximum(jnp.linalg.norm(n1), _EPS)
    l2 = jnp.maximum(jnp.linalg.norm(n2), _EPS)
    n1, d1 = n1 / l1, jnp.asarray(d1, jnp.float32) / l1
    n2, d2 = n2 / l2, jnp.asarray(d2, jnp.float32) / l2
    dot = vdot(n1, n2)
    sign = jnp.where(dot < 0, -1.0, 1.0)
    angle = jnp.rad2deg(jnp.arctan2(jnp.linalg.norm(jnp.cross(n1, n2)), jnp.abs(dot)))
    return angle, jnp.abs(d1 - sign * d2)
