"""Fixed-size crops around a voxel from a padded volume or a padded volume stack.

Conventions shared by every function here:

* Voxel coordinates: index ``(0, 0, 0)`` is the centre of the first voxel of the *unpadded* volume.
* A padded volume has shape ``(X + 2m, Y + 2m, Z + 2m)``; unpadded voxel ``v`` lives at index
  ``v + m``. A padded stack is ``(N, X + 2m, Y + 2m, Z + 2m)`` (what ``VolumeBank`` holds).
* ``size`` is a static int (cube) or a 3-tuple ``(Dx, Dy, Dz)``. The window is placed so that its
  voxel ``[Dx // 2, Dy // 2, Dz // 2]`` is the centre; for even ``D`` the window therefore starts at
  ``center - D // 2`` and has one more voxel before the centre than after it.

**No clamping.** ``lax.dynamic_slice`` clamps start indices that would run past the array so that
the slice stays in bounds: the window then silently shifts away from the requested centre (a classic
landmark-agent bug). The caller guarantees that it never happens: ``margin >= required_margin(size)``
(i.e. ``m >= max(D) // 2 + 1``) and ``center`` inside the unpadded grid. ``margin`` and the array
shape are static, so the margin check is done at trace time (``ValueError``); the centre is traced
and is *not* checked — environments clip agent positions to the grid before cropping.

Cost: a crop reads and writes ``Dx * Dy * Dz`` elements of the volume's dtype (uint8/bfloat16 banks
move 4x/2x fewer bytes than float32); it is memory-bound. Under ``vmap`` the slice becomes one
XLA gather with ``slice_sizes = (1, Dx, Dy, Dz)``. bfloat16/float16 sources are sliced as uint16
bit patterns (see :func:`_bits_view`: XLA:CPU would otherwise upcast the whole bank inside loops).
"""

from __future__ import annotations

import numbers
from typing import Sequence, Union

import jax.numpy as jnp
from jax import lax

Size = Union[int, Sequence[int]]


def _size3(size: Size) -> tuple[int, int, int]:
    """Normalise a static ``size`` (int or 3 ints) to a tuple of three positive ints."""
    if isinstance(size, int):
        size = (size, size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"crop size must be a positive int or three positive ints, got {size}")
    return size  # type: ignore[return-value]


def _stride3(stride: Size) -> tuple[int, int, int]:
    if isinstance(stride, int):
        stride = (stride, stride, stride)
    stride = tuple(int(s) for s in stride)
    if len(stride) != 3 or min(stride) < 1:
        raise ValueError(f"stride must be a positive int or three positive ints, got {stride}")
    return stride  # type: ignore[return-value]


def required_margin(size: Size, stride: Size = 1) -> int:
    """Smallest padding margin (voxels) for which a crop of ``size`` (sampled every ``stride``
    voxels) around any voxel of the unpadded grid never clamps: ``max(D // 2 * s) + 1``.

    The window extends ``D // 2 * s`` voxels before the centre and at most as far after it, so
    ``max(D // 2 * s)`` suffices; the extra voxel leaves room for an agent that steps one voxel past
    the border before being clipped and for the +1 neighbour of trilinear interpolation.
    """
    d, s = _size3(size), _stride3(stride)
    return max(di // 2 * si for di, si in zip(d, s)) + 1


def _check_margin(spatial_shape: Sequence[int], size, stride, margin) -> None:
    """Trace-time check that a static ``margin`` is large enough and fits in the array."""
    if not isinstance(margin, numbers.Integral):
        return  # traced margin: the caller is responsible
    need = required_margin(size, stride)
    if margin < need:
        raise ValueError(
            f"padding margin {margin} is too small for a crop of size {size} with stride {stride}: "
            f"need at least {need} voxels, or lax.dynamic_slice clamps and shifts the window"
        )
    if min(spatial_shape) <= 2 * margin:
        raise ValueError(f"padded volume of spatial shape {tuple(spatial_shape)} is not larger than 2 * margin = {2 * margin}")


def _bits_view(x, anchor):
    """View a 2-byte float array (bfloat16, float16) as uint16, so slices and gathers move raw bits.

    XLA:CPU has no native 2-byte-float slicing: inside loops (``scan``, ``fori_loop``) it converts
    the *whole* source to float32 before the loop, rewriting a whole volume bank (hundreds of MB)
    per call and reading twice the bytes per crop. Slicing uint16 bits avoids the conversion, but
    the bitcast is loop-invariant too, and XLA would hoist it out of the loop as a full copy; tying
    the source to ``anchor`` (the per-call centre/points, which vary inside the loop) with an
    ``optimization_barrier`` keeps the bitcast next to the slice, where it fuses and is free.

    Returns ``(view, restore)`` where ``restore`` maps sliced uint16 values back to ``x.dtype``.
    Other dtypes are returned unchanged.
    """
    dtype = x.dtype
    if jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize == 2:
        x, _ = lax.optimization_barrier((x, anchor))
        return lax.bitcast_convert_type(x, jnp.uint16), lambda y: lax.bitcast_convert_type(y, dtype)
    return x, lambda y: y


def _window_start(center, size, stride, margin):
    """Padded index of the window's first voxel, ``(3,)`` int32."""
    center = jnp.asarray(center)
    if not jnp.issubdtype(center.dtype, jnp.integer):
        center = jnp.round(center)
    half = jnp.asarray([d // 2 * s for d, s in zip(size, stride)], jnp.int32)
    return center.astype(jnp.int32) + margin - half


def crop(volume, center, size: Size, margin: int):
    """Crop a ``size`` window centred on voxel ``center`` from a padded volume.

    Args:
      volume: ``(X + 2m, Y + 2m, Z + 2m)`` any dtype, the padded volume.
      center: ``(3,)`` int (floats are rounded to the nearest voxel), unpadded voxel index; must lie
        inside the unpadded grid (not checked: traced).
      size: static int or ``(Dx, Dy, Dz)``.
      margin: static int ``m >= required_margin(size)``, the padding of ``volume`` (checked).

    Returns:
      ``(Dx, Dy, Dz)`` in ``volume.dtype``; element ``[D // 2]`` is voxel ``center``.
    """
    d = _size3(size)
    _check_margin(volume.shape, d, 1, margin)
    start = _window_start(center, d, (1, 1, 1), margin)
    src, restore = _bits_view(volume, start)
    return restore(lax.dynamic_slice(src, (start[0], start[1], start[2]), d))


def crop_from_stack(stack, index, center, size: Size, margin: int):
    """Crop from the ``index``-th volume of a padded stack without materialising that volume.

    One ``dynamic_slice`` with a size-1 leading dimension, so only the window is read.

    Args:
      stack: ``(N, X + 2m, Y + 2m, Z + 2m)`` any dtype.
      index: int scalar, which volume (must be in ``[0, N)``; not checked: traced).
      center, size, margin: as in :func:`crop`.

    Returns:
      ``(Dx, Dy, Dz)`` in ``stack.dtype``.
    """
    d = _size3(size)
    _check_margin(stack.shape[1:], d, 1, margin)
    start = _window_start(center, d, (1, 1, 1), margin)
    index = jnp.asarray(index, jnp.int32)
    src, restore = _bits_view(stack, (index, start))
    out = lax.dynamic_slice(src, (index, start[0], start[1], start[2]), (1,) + d)
    return restore(out[0])


def _strided(source, lead, center, size, stride, margin):
    d, s = _size3(size), _stride3(stride)
    _check_margin(source.shape[len(lead):], d, s, margin)
    start = _window_start(center, d, s, margin)
    extent = tuple((di - 1) * si + 1 for di, si in zip(d, s))
    src, restore = _bits_view(source, (lead, start))
    block = lax.dynamic_slice(src, tuple(lead) + (start[0], start[1], start[2]), (1,) * len(lead) + extent)
    block = block.reshape(extent)
    return restore(block[:: s[0], :: s[1], :: s[2]])


def strided_crop(volume, center, size: Size, stride: Size, margin: int):
    """A ``size`` window sampled every ``stride`` voxels around ``center`` (coarse search scales).

    Output element ``k`` (per axis) is unpadded voxel ``center + (k - D // 2) * s``: a window
    covering ``(D - 1) * s + 1`` voxels at ``1 / s`` resolution, without averaging (nearest
    subsampling, as in the multi-scale landmark agents). Margin needed:
    ``required_margin(size, stride)``.

    Cost: implemented as one contiguous ``dynamic_slice`` of ``((D - 1) * s + 1)`` voxels per axis
    followed by a static strided slice, so it *reads* about ``s**3`` times more voxels than it
    returns (s = 2: ~8x, s = 3: ~27x the bytes of a plain crop of the same output size); XLA may
    fuse the two so only touched cache lines are loaded, but along the contiguous last axis whole
    lines are read anyway. For large strides a pre-downsampled pyramid level cropped with
    :func:`crop` is cheaper and smoother.

    Args:
      volume: ``(X + 2m, Y + 2m, Z + 2m)`` any dtype.
      center: ``(3,)`` int, unpadded voxel index.
      size: static int or ``(Dx, Dy, Dz)``, output shape.
      stride: static int or 3 ints >= 1.
      margin: static int, ``>= required_margin(size, stride)`` (checked).

    Returns:
      ``(Dx, Dy, Dz)`` in ``volume.dtype``.
    """
    return _strided(volume, (), center, size, stride, margin)


def strided_crop_from_stack(stack, index, center, size: Size, stride: Size, margin: int):
    """:func:`strided_crop` from the ``index``-th volume of a padded ``(N, ...)`` stack."""
    return _strided(stack, (jnp.asarray(index, jnp.int32),), center, size, stride, margin)
