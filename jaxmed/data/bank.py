"""The :class:`VolumeBank`: many volumes stacked, padded and (optionally) pyramided, as one pytree.

Jitted environments receive the bank as an *argument* (never a closed-over constant, which would
inline hundreds of MB into the program and recompile per data set). Volumes of different shapes
are zero-padded to one shape plus a margin of ``margin`` voxels on every side, so that a crop of up
to ``2 * margin - 1`` voxels around any voxel inside a volume never makes ``lax.dynamic_slice``
clamp (clamping silently shifts the crop). Unpadded voxel ``v`` of volume ``n`` at level ``l``
lives at ``bank.levels[l][n, v + margin]``.

Pyramid level ``l`` has an integer downsampling ``factors[l]`` (1, 2, 4, ...) made by average
pooling; voxel ``j`` of a level with factor ``f`` covers level-0 voxels ``[j f, (j + 1) f)`` and
its centre is level-0 voxel ``j f + (f - 1) / 2``; each level keeps its own voxel->world affine.

Optionally (``build_bank(..., packed=True)``) the bank also holds ``packed``: every level of each
volume flattened into one ``(N, V)`` buffer (:func:`jaxmed.ops.crop.pack_levels`), so that a batch of
crops, each at its own traced level, is one row gather copying each window once
(:meth:`VolumeBank.crops`, used by the multi-scale landmark env). It duplicates the pyramid (the
per-level ``levels`` stay the storage the rest of the library reads): about 2.3x level 0 instead of
1.14x for factors 1, 2, 4. It is off by default because on XLA:CPU it measured no faster than the
fallback, cropping every candidate level and selecting, which XLA fuses into one loop writing each
output element once (see :mod:`jaxmed.ops.crop`); on an accelerator, where the fused select still
loads from every level, measure both.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmed.data import geometry
from jaxmed.data.landmarks import Landmarks
from jaxmed.data.volume import Volume
from jaxmed.errors import ConfigError, LandmarkError

STORAGE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "uint8": jnp.uint8}

#: :meth:`VolumeBank.bucket_shapes` rounds level-0 extents up to a multiple of this many voxels times
#: the coarsest pyramid factor, so that banks of similar size share one compiled program.
SHAPE_BUCKET = 16


@struct.dataclass
class VolumeBank:
    """Stacked, padded volumes with per-level affines and landmarks.

    Attributes (``N`` volumes, ``L`` levels, ``K`` landmarks, ``m`` = margin):
      levels: ``L`` arrays, level ``l`` of shape ``(N, X_l + 2m, Y_l + 2m, Z_l + 2m)`` in the storage
        dtype; ``X_l`` is the largest volume's extent at that level.
      shapes: ``(L, N, 3)`` int32, each volume's unpadded extent (voxels) at each level.
      affines: ``(L, N, 4, 4)`` float32, level voxel index -> world RAS mm.
      landmarks_vox: ``(L, N, K, 3)`` float32, landmark positions in each level's voxel units.
      landmarks_world: ``(N, K, 3)`` float32, world RAS mm.
      intensity_scale: ``()`` float32; stored value times this = normalised intensity.
      packed: ``(N, V)`` storage dtype, all levels of each volume flattened and concatenated
        (:func:`jaxmed.ops.crop.pack_levels`), or ``None`` (the default, ``build_bank(packed=False)``).
        Derived from ``levels``: :meth:`replace` with new ``levels`` rebuilds it.
      margin: static int, padding on every side (voxels, same at every level).
      factors: static tuple of the levels' downsampling factors.
      labels: static tuple of the ``K`` landmark labels.
    """

    levels: tuple[jax.Array, ...]
    shapes: jax.Array
    affines: jax.Array
    landmarks_vox: jax.Array
    landmarks_world: jax.Array
    intensity_scale: jax.Array
    margin: int = struct.field(pytree_node=False)
    factors: tuple[int, ...] = struct.field(pytree_node=False)
    labels: tuple[str, ...] = struct.field(pytree_node=False)
    packed: jax.Array | None = None

    @property
    def n_volumes(self) -> int:
        return int(self.levels[0].shape[0])

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def n_landmarks(self) -> int:
        return len(self.labels)

    @property
    def max_crop(self) -> int:
        """Largest crop edge (voxels) that can never clamp: ``2 * margin - 1``."""
        return 2 * self.margin - 1

    @property
    def nbytes(self) -> int:
        """Bytes of image data held: the levels plus the ``packed`` copy when present."""
        extra = 0 if self.packed is None else self.packed.size * self.packed.dtype.itemsize
        return int(sum(a.size * a.dtype.itemsize for a in self.levels) + extra)

    @property
    def level_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """Static padded spatial shape ``(X_l + 2m, Y_l + 2m, Z_l + 2m)`` of each level."""
        return tuple(tuple(int(v) for v in a.shape[1:]) for a in self.levels)

    def bucket_shapes(self, bucket: int = SHAPE_BUCKET) -> list[tuple[int, int, int]]:
        """Padded spatial shapes of each level rounded up to a bucket: the level-0 extent to a multiple
        of ``bucket * max(factors)`` voxels, level ``l`` that divided by its factor, plus the margins
        (banks of similar size get the same shapes, hence the same compiled programs)."""
        q = bucket * max(self.factors)
        ext0 = np.asarray(self.levels[0].shape[1:]) - 2 * self.margin
        b0 = -(-ext0 // q) * q
        return [tuple(int(v) for v in b0 // f + 2 * self.margin) for f in self.factors]

    def padded_to(self, level_shapes) -> VolumeBank:
        """This bank with each level's stack zero-padded at the high end to ``level_shapes`` (at least
        its own). ``shapes`` (the true extents) is unchanged, so start points, bounds and answers are
        those of the unpadded bank; only the array shapes, hence the compiled programs, are shared."""
        levels = []
        for a, target in zip(self.levels, level_shapes):
            pad = [(0, 0)] + [(0, int(t) - int(s)) for t, s in zip(target, a.shape[1:])]
            if any(p[1] < 0 for p in pad):
                raise ValueError(f"VolumeBank.padded_to: level shape {a.shape[1:]} is larger than the target {tuple(target)}")
            levels.append(jnp.pad(a, pad) if any(p[1] for p in pad) else a)
        return self.replace(levels=tuple(levels))

    def label_index(self, label: str) -> int:
        """Index of ``label`` among the bank's landmarks (:class:`LandmarkError` if absent)."""
        if label not in self.labels:
            raise LandmarkError(f"volume bank has no landmark {label!r}; available: {', '.join(self.labels)}")
        return self.labels.index(label)

    @property
    def stored_full_scale(self) -> float | jax.Array:
        """The stored value of normalised intensity ``full_scale``: 255 for integer storage, else
        ``1 / intensity_scale`` (normalised intensity 1 for float storage)."""
        return 255.0 if jnp.issubdtype(self.levels[0].dtype, jnp.integer) else 1.0 / self.intensity_scale

    def to_intensity(self, stored: jax.Array) -> jax.Array:
        """Stored values (any storage dtype) -> float32 normalised intensities."""
        return stored.astype(jnp.float32) * self.intensity_scale

    def crop(self, index, center, size, level: int = 0) -> jax.Array:
        """Crop ``size`` voxels around integer voxel ``center`` ``(3,)`` of volume ``index`` at a static ``level``.

        Returns the window in the storage dtype. ``center`` must lie inside that volume's grid.
        """
        from jaxmed.ops.crop import crop_from_stack

        return crop_from_stack(self.levels[level], index, center, size, self.margin)

    def crops(self, index, centers, size, level, candidates: Sequence[int] | None = None) -> jax.Array:
        """A batch of crops, each at its own pyramid level, in the storage dtype.

        Args:
          index: int ``(...)`` broadcastable to ``centers.shape[:-1]``, volume of each window (or a scalar).
          centers: ``(..., 3)`` int, voxel index *at the window's level* (inside that level's grid).
          size: static int or 3 ints, ``<= max_crop``.
          level: a static int (every window at that bank level) or an int array ``(...)``
            broadcastable like ``index``, the bank level of each window.
          candidates: static bank levels ``level`` can take (default: all); only used by the
            fallback without ``packed``, which crops every candidate level and selects.

        Returns:
          ``(..., Dx, Dy, Dz)``. With ``packed`` every window is copied once, from its own level
          (:func:`jaxmed.ops.crop.crop_packed`); a static ``level`` uses ``levels[level]`` directly.
        """
        from jaxmed.ops.crop import crop_batch, crop_packed

        if isinstance(level, (int, np.integer)):
            return crop_batch(self.levels[int(level)], index, centers, size, self.margin)
        candidates = tuple(range(self.n_levels)) if candidates is None else tuple(int(c) for c in candidates)
        if len(candidates) == 1:
            return crop_batch(self.levels[candidates[0]], index, centers, size, self.margin)
        if self.packed is not None:
            return crop_packed(self.packed, self.level_shapes, level, index, centers, size, self.margin)
        level = jnp.broadcast_to(jnp.asarray(level), jnp.shape(centers)[:-1])
        out = None
        for lvl in candidates:
            window = crop_batch(self.levels[lvl], index, centers, size, self.margin)
            out = window if out is None else jnp.where((level == lvl)[..., None, None, None], window, out)
        return out


def _replace(self, **updates) -> VolumeBank:
    """``dataclasses.replace`` that keeps ``packed`` derived from ``levels``: new ``levels`` without a
    new ``packed`` rebuild it (when the bank had one)."""
    if "levels" in updates and "packed" not in updates and self.packed is not None:
        from jaxmed.ops.crop import pack_levels

        updates["packed"] = pack_levels(tuple(updates["levels"]))
    return dataclasses.replace(self, **updates)


VolumeBank.replace = _replace  # flax.struct installs a plain dataclasses.replace


def _avg_pool(data: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return data
    pad = [(0, (-n) % f) for n in data.shape]
    d = np.pad(data, pad)
    x, y, z = (n // f for n in d.shape)
    return d.reshape(x, f, y, f, z, f).mean(axis=(1, 3, 5))


def _level_affine(affine: np.ndarray, f: int) -> np.ndarray:
    """Affine of a level downsampled by ``f`` from a level-0 affine."""
    scale = np.eye(4)
    scale[:3, :3] *= f
    scale[:3, 3] = (f - 1) / 2.0
    return affine @ scale


def _as_pair(item) -> tuple[Volume, Landmarks]:
    if isinstance(item, tuple) and len(item) == 2:
        return item
    if hasattr(item, "volume") and hasattr(item, "landmarks"):
        return item.volume, item.landmarks
    raise ConfigError(f"build_bank expects (Volume, Landmarks) pairs or Subject objects, got {type(item).__name__}")


def build_bank(
    subjects: Sequence,
    labels: Sequence[str] | None = None,
    *,
    factors: Sequence[int] = (1,),
    max_crop: int = 45,
    dtype: str = "float32",
    packed: bool = False,
    full_scale: float | None = None,
) -> VolumeBank:
    """Stack subjects into a :class:`VolumeBank`.

    Args:
      subjects: ``(Volume, Landmarks)`` pairs or objects with ``.volume`` / ``.landmarks``. Volumes
        should be normalised (intensities ~[0, 1]) and are best resampled to a common isotropic
        spacing (agents step in voxels).
      labels: landmarks to carry (default: all labels of the first subject); every subject must
        have them, inside its image.
      factors: pyramid downsampling factors, strictly increasing, starting at 1.
      max_crop: the largest crop edge (voxels, at any level) that will be taken; sets the margin
        ``max_crop // 2 + 1``.
      dtype: storage dtype, ``"float32"``, ``"bfloat16"`` or ``"uint8"`` (``[0, full_scale]`` stored as
        ``0..255``).
      full_scale: uint8 banks: the intensity stored as 255 (larger ones are clipped to it). ``None``:
        the bank's own maximum, so that a volume's stored values (what a network sees) depend on
        the other volumes of its bank; a fixed value stores every volume alike, in training and in
        detection (``data.intensity_ceiling``). Float banks store intensities as they are.
      packed: also store all levels in one ``(N, V)`` buffer for per-window-level crops (module
        docstring; doubles the pyramid's memory). Off by default.
    """
    if not subjects:
        raise ConfigError("build_bank: no subjects given")
    if dtype not in STORAGE_DTYPES:
        raise ConfigError(f"build_bank: dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    factors = tuple(int(f) for f in factors)
    if factors[0] != 1 or any(b <= a for a, b in zip(factors, factors[1:])):
        raise ConfigError(f"build_bank: factors must start at 1 and increase strictly, got {factors}")
    if max_crop < 1:
        raise ConfigError(f"build_bank: max_crop must be >= 1, got {max_crop}")
    pairs = [_as_pair(s) for s in subjects]
    labels = tuple(labels) if labels is not None else pairs[0][1].labels
    margin = max_crop // 2 + 1
    if full_scale is not None and not (np.isfinite(full_scale) and full_scale > 0):
        raise ConfigError(f"build_bank: full_scale must be a finite number > 0, got {full_scale!r}")
    vmax = float(full_scale) if full_scale is not None else (max(float(v.data.max()) for v, _ in pairs) or 1.0)
    scale = vmax / 255.0 if dtype == "uint8" else 1.0

    level_arrays, shapes, affines, lm_vox = [], [], [], []
    lm_world = []
    for v, lm in pairs:
        sub = lm.select(labels)
        sub.check_inside(v)
        lm_world.append(sub.positions)
    for f in factors:
        pooled = [_avg_pool(v.data, f) for v, _ in pairs]
        ext = np.max([p.shape for p in pooled], axis=0)
        stack = np.zeros((len(pairs), *(ext + 2 * margin)), dtype=np.float32)
        for n, p in enumerate(pooled):
            stack[n, margin : margin + p.shape[0], margin : margin + p.shape[1], margin : margin + p.shape[2]] = p
        if dtype == "uint8":
            stack = np.clip(np.rint(stack / scale), 0, 255).astype(np.uint8)
        level_arrays.append(jnp.asarray(stack, dtype=STORAGE_DTYPES[dtype]))
        shapes.append([p.shape for p in pooled])
        aff = [_level_affine(v.affine, f) for v, _ in pairs]
        affines.append(aff)
        lm_vox.append([geometry.world_to_voxel(a, w) for a, w in zip(aff, lm_world)])
    packed_buffer = None
    if packed:
        from jaxmed.ops.crop import pack_levels, packed_layout

        try:
            packed_layout([a.shape[1:] for a in level_arrays])
        except ValueError as e:
            raise ConfigError(f"build_bank: cannot pack the pyramid ({e}); use packed=False") from None
        packed_buffer = pack_levels(level_arrays)
    return VolumeBank(
        packed=packed_buffer,
        levels=tuple(level_arrays),
        shapes=jnp.asarray(np.array(shapes), dtype=jnp.int32),
        affines=jnp.asarray(np.array(affines), dtype=jnp.float32),
        landmarks_vox=jnp.asarray(np.array(lm_vox), dtype=jnp.float32),
        landmarks_world=jnp.asarray(np.array(lm_world), dtype=jnp.float32),
        intensity_scale=jnp.asarray(scale, dtype=jnp.float32),
        margin=margin,
        factors=factors,
        labels=labels,
    )
