"""Trilinear sampling of 3D arrays at continuous voxel coordinates, and affine window resampling.

Coordinates are voxel indices: ``(0, 0, 0)`` is the centre of the first voxel, ``shape - 1`` the
centre of the last. Edge behaviour matches ``scipy.ndimage.map_coordinates(order=1,
mode="constant", cval=fill)`` (SciPy >= 1.6): a point is *inside* when every coordinate lies in the
closed interval ``[0, n - 1]`` and is interpolated from the voxels there (at exactly ``n - 1`` the
last voxel's value is returned); a point with any coordinate outside it gets ``fill``, with no
blending towards ``fill`` in the half voxel beyond the edge (that would be ``mode="grid-constant"``).
NaN coordinates count as outside.

Interpolation runs in float32 whatever the input dtype (uint8 / bfloat16 / float16 are gathered in
their own width, so memory traffic stays small, then converted; 2-byte floats are gathered as uint16
bits because XLA:CPU would otherwise convert the whole source to float32 inside loops). The result
is float32.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from jaxmed.ops.crop import Size, _bits_view, _size3, packed_layout
from jaxmed.ops.linalg import apply_affine


def _sample(gather, shape, points, fill, margin):
    """Shared trilinear kernel.

    ``gather(ix, iy, iz)`` returns the source values at padded integer indices (any shape).
    ``shape`` is the *unpadded* spatial shape; ``margin`` is added to the indices.
    """
    p = jnp.asarray(points, jnp.float32)
    if p.shape[-1] != 3:
        raise ValueError(f"points must have shape (..., 3), got {p.shape}")
    n = jnp.asarray(shape, jnp.float32)
    inside = jnp.all((p >= 0.0) & (p <= n - 1.0), axis=-1)
    # Lower corner, clipped so that the upper corner stays in the grid; at p == n - 1 this gives
    # i0 = n - 2 and weight 1 on the last voxel (as scipy). For n == 1 both corners are voxel 0.
    hi0 = jnp.maximum(jnp.asarray(shape, jnp.int32) - 2, 0)
    i0 = jnp.clip(jnp.floor(p).astype(jnp.int32), 0, hi0)
    i1 = jnp.minimum(i0 + 1, jnp.asarray(shape, jnp.int32) - 1)
    w1 = jnp.clip(p - i0.astype(jnp.float32), 0.0, 1.0)
    w0 = 1.0 - w1
    i0, i1 = i0 + margin, i1 + margin
    corners = ((i0, w0), (i1, w1))
    acc = jnp.zeros(p.shape[:-1], jnp.float32)
    for ix, wx in corners:
        for iy, wy in corners:
            for iz, wz in corners:
                v = gather(ix[..., 0], iy[..., 1], iz[..., 2]).astype(jnp.float32)
                acc = acc + v * (wx[..., 0] * wy[..., 1] * wz[..., 2])
    return jnp.where(inside, acc, jnp.asarray(fill, jnp.float32))


def trilinear(volume, points, fill: float = 0.0):
    """Sample ``volume`` at continuous voxel coordinates.

    Args:
      volume: ``(X, Y, Z)`` any real dtype.
      points: ``(..., 3)`` float, voxel coordinates.
      fill: value for points outside ``[0, shape - 1]`` on any axis (may be traced).

    Returns:
      ``(...)`` float32.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {volume.shape}")
    src, restore = _bits_view(volume, jnp.asarray(points))
    return _sample(lambda i, j, k: restore(src[i, j, k]), volume.shape, points, fill, 0)


def trilinear_from_stack(stack, index, points, fill: float = 0.0, margin: int = 0):
    """:func:`trilinear` on the ``index``-th volume of a (possibly padded) stack, gathering only
    the needed voxels (the volume is never materialised).

    Args:
      stack: ``(N, X + 2m, Y + 2m, Z + 2m)`` any real dtype.
      index: int scalar in ``[0, N)`` (not checked: traced).
      points: ``(..., 3)`` float, voxel coordinates in the *unpadded* grid.
      fill: value outside the unpadded grid ``[0, (X, Y, Z) - 1]`` (the padding is never sampled,
        so the result equals ``trilinear`` on the unpadded volume).
      margin: static int, the stack's padding ``m``.

    Returns:
      ``(...)`` float32.
    """
    if stack.ndim != 4:
        raise ValueError(f"stack must be (N, X, Y, Z), got shape {stack.shape}")
    shape = tuple(s - 2 * margin for s in stack.shape[1:])
    index = jnp.asarray(index, jnp.int32)
    src, restore = _bits_view(stack, (index, jnp.asarray(points)))
    return _sample(lambda i, j, k: restore(src[index, i, j, k]), shape, points, fill, margin)


def trilinear_levels(levels, extents, index, level, points, margin: int, fill: float = 0.0,
                     candidates: Sequence[int] | None = None, packed=None):
    """:func:`trilinear` on volume ``index`` of a pyramid of padded stacks, at a (traced) level.

    The pyramid is what :class:`jaxmed.data.bank.VolumeBank` holds: ``levels[l]`` is the padded
    stack of level ``l``; ``extents[l]`` the volume's unpadded extent there. ``points`` are voxel
    coordinates *of the chosen level*. Every sample equals ``scipy.ndimage.map_coordinates(
    unpadded_level_volume, points.T, order=1, mode="constant", cval=fill)``.

    Kernels: a static ``level`` (a Python int) samples that stack only. A traced ``level`` reads
    from ``packed`` (:func:`jaxmed.ops.crop.pack_levels` of ``levels``) when given, one gather per
    corner from the flat buffer whatever the level; otherwise it samples every level of
    ``candidates`` (default: all) at the same points and selects (``len(candidates)`` times the
    gathers: give only the levels that can occur).

    Args:
      levels: tuple of ``(N, X_l + 2m, Y_l + 2m, Z_l + 2m)`` stacks, any real dtype.
      extents: ``(L, 3)`` int, the volume's unpadded extent at each level (traced is fine).
      index: int scalar, the volume (traced, not checked).
      level: static int, or int scalar (traced) in ``candidates``.
      points: ``(..., 3)`` float, voxel coordinates at ``level``.
      margin: static int, the stacks' padding ``m`` (>= 1).
      fill: value outside ``[0, extent - 1]`` on any axis.
      candidates: static levels a traced ``level`` can take (default: every level).
      packed: optional ``(N, V)`` buffer of all levels (the bank's ``packed``).

    Returns:
      ``(...)`` float32.
    """
    extents = jnp.asarray(extents, jnp.int32)
    index = jnp.asarray(index, jnp.int32)
    if isinstance(level, int):
        stack = levels[level]
        src, restore = _bits_view(stack, (index, jnp.asarray(points)))
        return _sample(lambda i, j, k: restore(src[index, i, j, k]), extents[level], points, fill, margin)
    level = jnp.asarray(level, jnp.int32)
    candidates = tuple(range(len(levels))) if candidates is None else tuple(int(c) for c in candidates)
    if packed is not None:
        table = jnp.asarray(packed_layout([a.shape[1:] for a in levels]), jnp.int32)  # (L, 4): offset, X, Y, Z
        row = table[level]
        off, ny, nz = row[0], row[2], row[3]
        src, restore = _bits_view(packed, (index, level, jnp.asarray(points)))
        return _sample(lambda i, j, k: restore(src[index, off + (i * ny + j) * nz + k]), extents[level], points, fill, margin)
    out = None
    for lvl in candidates:
        value = trilinear_levels(levels, extents, index, lvl, points, margin, fill)
        out = value if out is None else jnp.where(level == lvl, value, out)
    return out


def _affine34(affine):
    a = jnp.asarray(affine, jnp.float32)
    if a.shape not in ((4, 4), (3, 4)):
        raise ValueError(f"affine must be (4, 4) or (3, 4), got {a.shape}")
    return a[:3]


def affine_grid(affine, size: Size):
    """Input voxel coordinates of every voxel of an output grid: ``affine @ [o, 1]``.

    Args:
      affine: ``(4, 4)`` or ``(3, 4)`` float, output voxel index -> input voxel coordinate.
      size: static int or ``(Dx, Dy, Dz)``.

    Returns:
      ``(Dx, Dy, Dz, 3)`` float32.
    """
    a = _affine34(affine)
    d = _size3(size)
    o = jnp.stack(jnp.meshgrid(*(jnp.arange(k, dtype=jnp.float32) for k in d), indexing="ij"), axis=-1)
    return apply_affine(o, a)


def resample_window(volume, affine, size: Size, fill: float = 0.0):
    """Resample ``volume`` onto a ``size`` grid whose voxel ``o`` sits at input voxel
    ``affine @ [o, 1]`` (box contents, moving image under a transform, oblique windows).

    Args:
      volume: ``(X, Y, Z)`` any real dtype.
      affine: ``(4, 4)`` or ``(3, 4)`` float, output index -> input voxel coordinate.
      size: static int or ``(Dx, Dy, Dz)``.
      fill: value for output voxels that fall outside the input grid.

    Returns:
      ``(Dx, Dy, Dz)`` float32.
    """
    return trilinear(volume, affine_grid(affine, size), fill)


def resample_window_from_stack(stack, index, affine, size: Size, fill: float = 0.0, margin: int = 0):
    """:func:`resample_window` on the ``index``-th volume of a padded stack; ``affine`` maps to
    *unpadded* voxel coordinates (see :func:`trilinear_from_stack`)."""
    return trilinear_from_stack(stack, index, affine_grid(affine, size), fill, margin)


def box_to_grid_affine(box_min, box_max, size: Size):
    """Affine mapping a ``size`` output grid onto an axis-aligned box.

    Output voxel ``0`` lands on ``box_min`` and voxel ``D - 1`` on ``box_max`` (corner voxel
    centres on the box corners), i.e. ``x = box_min + o * (box_max - box_min) / (D - 1)``; an axis
    with ``D == 1`` samples the box's mid-point.

    Args:
      box_min, box_max: ``(3,)`` float, voxel coordinates.
      size: static int or ``(Dx, Dy, Dz)``.

    Returns:
      ``(4, 4)`` float32 (diagonal scale + translation).
    """
    d = _size3(size)
    lo = jnp.asarray(box_min, jnp.float32)
    hi = jnp.asarray(box_max, jnp.float32)
    steps = jnp.asarray([max(k - 1, 1) for k in d], jnp.float32)
    single = jnp.asarray([k == 1 for k in d])
    scale = jnp.where(single, 0.0, (hi - lo) / steps)
    offset = jnp.where(single, 0.5 * (lo + hi), lo)
    a = jnp.zeros((4, 4), jnp.float32).at[jnp.arange(3), jnp.arange(3)].set(scale)
    return a.at[:3, 3].set(offset).at[3, 3].set(1.0)


__all__: Sequence[str] = [
    "trilinear",
    "trilinear_from_stack",
    "trilinear_levels",
    "affine_grid",
    "resample_window",
    "resample_window_from_stack",
    "box_to_grid_affine",
]
