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

**Kernels.** :func:`crop` / :func:`crop_from_stack` are one ``lax.dynamic_slice``; under ``vmap``
(and in :func:`crop_batch`, which vmaps it over any batch shape) the windows become one XLA gather
with ``slice_sizes = (1, Dx, Dy, Dz)``. Alternatives measured on the 2-core CPU, 45^3 windows
(uint8/float32/bfloat16, 16-4096 windows, interleaved runs): ``lax.map`` / ``fori_loop`` over
``dynamic_slice`` (sequential, one thread: 0.6-0.9x), a row gather of the ``Dx * Dy`` contiguous rows
(``slice_sizes = (1, Dz)``, 2-D or flat view: 1.0-1.4x in isolation for <= 256 windows, equal
beyond, but 0.88-0.95x inside the jitted landmark env, where the per-row index arithmetic is paid
2025 times per window), ``take`` of whole rows then a slice, per-plane slices, and bfloat16/float32
sources viewed as bytes or uint16 (longer rows): none beats the one gather by more than the
run-to-run noise inside the env. The ceiling is XLA:CPU's code for a short row: LLVM fully unrolls
a copy of up to ~72 uint8 elements into scalar moves (no SLP vectorisation; longer rows do get
vector moves), so a 45-byte row costs ~35 moves where NumPy's memmove uses a few vector moves, and
large outputs go through ordinary (not non-temporal) stores. Measured on a quiet machine (load < 2):
~7-8 GB/s of uint8 windows from an L3-resident bank (1.0-1.6x a NumPy slicing loop), ~4 GB/s from
a 64 MB bank (1.3x); float32 ~6.5 GB/s from a 256 MB bank (0.85x NumPy, ~7.8 GB/s there). XLA
splits a large gather over both cores, so on a loaded machine it loses more than a one-thread
NumPy loop does.

:func:`crop_packed` crops every window at *its own* pyramid level from one ``(N, V)`` buffer holding
all levels (:func:`pack_levels`, ``VolumeBank.packed``) with a row gather: the level only changes
the row offsets, so each window is copied once. On XLA:CPU this measured no faster than cropping
every level and selecting (``jnp.where(level == l, crop_l, ...)``): XLA fuses the per-level gathers
and the selects into one loop that writes each output element once (0.95-1.1x, uint8 and float32);
it is kept for accelerators, where the fused select still issues a load per level.

Cost: a crop reads and writes ``Dx * Dy * Dz`` elements of the volume's dtype (uint8/bfloat16 banks
move 4x/2x fewer bytes than float32); it is memory-bound. bfloat16/float16 sources are gathered as
uint16 bit patterns (see :func:`_bits_view`: XLA:CPU would otherwise upcast the whole bank inside loops).
"""

from __future__ import annotations

import numbers
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Size = Union[int, Sequence[int]]


def _positive3(value: Size, what: str) -> tuple[int, int, int]:
    """Normalise a static ``value`` (int or 3 ints) to a tuple of three positive ints; ``what`` names
    it in the ValueError."""
    if isinstance(value, int):
        value = (value, value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 3 or min(value) < 1:
        raise ValueError(f"{what} must be a positive int or three positive ints, got {value}")
    return value  # type: ignore[return-value]


def _size3(size: Size) -> tuple[int, int, int]:
    """Normalise a static ``size`` (int or 3 ints) to a tuple of three positive ints."""
    return _positive3(size, "crop size")


def _stride3(stride: Size) -> tuple[int, int, int]:
    return _positive3(stride, "stride")


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


def _like_dynamic_slice(start, dim, size):
    """Start index(es) ``start`` as ``lax.dynamic_slice`` uses them along an axis of length ``dim``
    for a slice of ``size``: a negative start counts from the end (``+ dim``), then it is clamped to
    ``[0, dim - size]``. ``dim`` and ``size`` broadcast against ``start`` (static or traced)."""
    dim = jnp.asarray(dim, jnp.int32)
    start = jnp.where(start < 0, start + dim, start)
    return jnp.clip(start, 0, dim - jnp.asarray(size, jnp.int32))


def _gather_rows(rows, volume, offsets, dz: int):
    """Copy ``Dx * Dy`` rows of ``dz`` contiguous elements per window with one gather.

    Args:
      rows: ``(N, V)`` source, each volume flattened (any dtype; 2-byte floats already as uint16).
      volume: int32 ``(...)``, volume index per window, in ``[0, N)``.
      offsets: int32 ``(..., Dx, Dy)``, offset in ``[0, V - dz]`` of each row's first element.
      dz: static row length.

    Returns:
      ``(..., Dx, Dy, dz)``.
    """
    volume = jnp.broadcast_to(jnp.asarray(volume, jnp.int32)[..., None, None], offsets.shape)
    index = jnp.stack([volume, offsets], axis=-1)
    dnums = lax.GatherDimensionNumbers(offset_dims=(offsets.ndim,), collapsed_slice_dims=(0,), start_index_map=(0, 1))
    # in bounds by construction (the callers clamp the window start as dynamic_slice does)
    return lax.gather(rows, index, dnums, (1, dz), mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


def _gather_windows(source, volume, base, strides, d):
    """Windows of ``d`` from a flattened ``(N, V)`` source: one row gather of ``Dx * Dy`` rows each.

    Args:
      source: ``(N, V)``, each volume's (packed levels') voxels flattened, any dtype.
      volume: int32 ``(...)``, volume of each window, in ``[0, N)``.
      base: int32 ``(...)``, flat offset of each window's first element (the whole window in bounds).
      strides: ``(sx, sy)`` int32 ``(...)``, element strides of the window's x and y axes (``Y * Z``, ``Z``).
      d: static window shape.

    Returns:
      ``(..., Dx, Dy, Dz)`` in ``source.dtype``.
    """
    # Materialise the per-window values: otherwise XLA fuses whatever computed them (an env's whole
    # state update, say) into the gather and re-evaluates it for every row of every window.
    volume, base, (sx, sy) = lax.optimization_barrier((volume, base, tuple(strides)))
    src, restore = _bits_view(source, base)
    ix = jnp.arange(d[0], dtype=jnp.int32)
    iy = jnp.arange(d[1], dtype=jnp.int32)
    offsets = base[..., None, None] + ix[:, None] * sx[..., None, None] + iy[None, :] * sy[..., None, None]
    return restore(_gather_rows(src, volume, offsets, d[2]))


def _check_int32(n_elements: int) -> None:
    if n_elements >= 2**31:
        raise ValueError(f"{n_elements} voxels per volume are too many for int32 offsets (limit 2**31 - 1)")


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


def crop_batch(stack, index, centers, size: Size, margin: int):
    """Many crops from a padded stack at once: :func:`crop_from_stack` vmapped over any batch shape
    (one XLA gather, see the module docstring).

    Args:
      stack: ``(N, X + 2m, Y + 2m, Z + 2m)`` any dtype.
      index: int ``(...)`` broadcastable to ``centers.shape[:-1]``, volume of each window (a scalar
        for one volume); in ``[0, N)`` (traced, not checked).
      centers: ``(..., 3)`` int (floats are rounded), unpadded voxel indices inside the grid.
      size, margin: as in :func:`crop`.

    Returns:
      ``(..., Dx, Dy, Dz)`` in ``stack.dtype``.
    """
    d = _size3(size)
    centers = jnp.asarray(centers)
    batch = centers.shape[:-1]
    index = jnp.broadcast_to(jnp.asarray(index, jnp.int32), batch).reshape(-1)
    one = lambda i, c: crop_from_stack(stack, i, c, d, margin)  # noqa: E731
    return jax.vmap(one)(index, centers.reshape(-1, 3)).reshape(batch + d)


def pack_levels(levels):
    """One ``(N, V)`` buffer holding every level of a pyramid of padded stacks, for :func:`crop_packed`.

    Volume ``n``'s row is its levels flattened one after another: level ``l`` of shape
    ``(N, X_l, Y_l, Z_l)`` occupies ``[sum_{k<l} X_k Y_k Z_k, ... + X_l Y_l Z_l)``; ``V`` is the sum.
    Works on NumPy and JAX arrays (returns the same kind)."""
    n = levels[0].shape[0]
    xp = np if all(isinstance(a, np.ndarray) for a in levels) else jnp
    return xp.concatenate([xp.reshape(a, (n, -1)) for a in levels], axis=1)


def packed_layout(level_shapes) -> tuple[tuple[int, ...], ...]:
    """Static ``(offset, X, Y, Z)`` of each level inside a :func:`pack_levels` row, from the levels'
    padded spatial shapes ``((X_0, Y_0, Z_0), ...)``."""
    out, offset = [], 0
    for shape in level_shapes:
        x, y, z = (int(v) for v in shape)
        out.append((offset, x, y, z))
        offset += x * y * z
    _check_int32(offset)
    return tuple(out)


def crop_packed(packed, level_shapes, level, index, centers, size: Size, margin: int):
    """Crops at a per-window pyramid level from a :func:`pack_levels` buffer, in one row gather.

    Equal, for any input, to cropping ``levels[level]`` with :func:`crop_batch` window by window (the
    window start and the volume index are wrapped and clamped exactly as ``lax.dynamic_slice`` does,
    which keeps every row in bounds), but each window is copied once, from its own level; see the
    module docstring for when that is faster than cropping every level and selecting.

    Args:
      packed: ``(N, V)`` from :func:`pack_levels`, any dtype.
      level_shapes: static ``((X_0 + 2m, Y_0 + 2m, Z_0 + 2m), ...)``, the levels' padded spatial shapes.
      level: int ``(...)`` broadcastable to ``centers.shape[:-1]``, index into ``level_shapes`` (traced;
        clamped to the valid range).
      index: int ``(...)`` broadcastable likewise, volume of each window in ``[0, N)`` (traced; an
        out-of-range value is treated as ``dynamic_slice`` treats it).
      centers: ``(..., 3)`` int, unpadded voxel index *at the window's level*, inside its grid.
      size, margin: as in :func:`crop`; the margin must suit every level (checked).

    Returns:
      ``(..., Dx, Dy, Dz)`` in ``packed.dtype``.
    """
    d = _size3(size)
    layout = packed_layout(level_shapes)
    if packed.ndim != 2 or packed.shape[1] != layout[-1][0] + int(np.prod(layout[-1][1:])):
        raise ValueError(f"packed buffer of shape {tuple(packed.shape)} does not match level shapes {tuple(level_shapes)}")
    for shape in level_shapes:
        _check_margin(shape, d, 1, margin)
    table = jnp.asarray(layout, jnp.int32)  # (L, 4): offset, X, Y, Z
    centers = jnp.asarray(centers)
    batch = centers.shape[:-1]
    level = jnp.broadcast_to(jnp.clip(jnp.asarray(level, jnp.int32), 0, len(layout) - 1), batch)
    index = jnp.broadcast_to(_like_dynamic_slice(jnp.asarray(index, jnp.int32), packed.shape[0], 1), batch)
    row = table[level]  # (..., 4)
    shape = row[..., 1:]
    start = _like_dynamic_slice(_window_start(centers, d, (1, 1, 1), margin), shape, d)
    sx, sy = shape[..., 1] * shape[..., 2], shape[..., 2]
    base = row[..., 0] + start[..., 0] * sx + start[..., 1] * sy + start[..., 2]
    return _gather_windows(packed, index, base, (sx, sy), d)


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
