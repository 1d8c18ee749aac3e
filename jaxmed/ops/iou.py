"""Volumes and intersection-over-union of axis-aligned 3D boxes.

A box is ``(box_min, box_max)``, each ``(..., 3)`` float (voxels or mm), the closed region
``box_min <= x <= box_max`` with volume ``prod(box_max - box_min)``: boxes are continuous regions,
not voxel sets (a box with corners at voxel centres ``a`` and ``b`` covers ``b - a`` voxels per axis,
not ``b - a + 1``). Inverted boxes (``max < min`` on an axis) are empty.
"""

from __future__ import annotations

import jax.numpy as jnp


def box_volume(box_min, box_max):
    """Volume ``(...)`` float32 of boxes ``(..., 3)``; 0 for empty or inverted boxes."""
    extent = jnp.asarray(box_max, jnp.float32) - jnp.asarray(box_min, jnp.float32)
    return jnp.prod(jnp.maximum(extent, 0.0), axis=-1)


def box_iou(a_min, a_max, b_min, b_max):
    """3D IoU of axis-aligned boxes, broadcasting over leading dimensions.

    Args:
      a_min, a_max, b_min, b_max: ``(..., 3)`` float, broadcastable.

    Returns:
      ``(...)`` float32 in ``[0, 1]``: intersection volume / union volume; 0 for disjoint or
      touching boxes and 0 (not NaN) when both boxes are empty.
    """
    a_min, a_max, b_min, b_max = (jnp.asarray(x, jnp.float32) for x in (a_min, a_max, b_min, b_max))
    inter = box_volume(jnp.maximum(a_min, b_min), jnp.minimum(a_max, b_max))
    union = box_volume(a_min, a_max) + box_volume(b_min, b_max) - inter
    ok = union > 0
    return jnp.where(ok, inter / jnp.where(ok, union, 1.0), 0.0)
