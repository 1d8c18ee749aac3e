"""Jitted kernels on 3D masks and probability maps: overlap, cross-entropy, morphology, patches.

Every function is pure JAX on arrays whose last three axes are the spatial ``(X, Y, Z)`` voxel axes
(leading axes batch), so they ``vmap`` / ``jit`` freely. Masks are bool (or 0/1 of any dtype),
probabilities float32 in ``[0, 1]``.

Morphology uses the ``3 x 3 x 3`` cube (the 26-neighbourhood, SciPy's
``ndimage.generate_binary_structure(3, 3)``) iterated ``radius`` times, i.e. a cube of edge
``2 radius + 1`` voxels, as max- / min-pooling; the border counts as background for both (SciPy's
``border_value=0``), so erosion eats masks that touch the border. ``radius`` may be a traced
integer (a ``fori_loop``), so the structuring element's size can be part of an environment state.

Host-side metrics that need a distance transform or connected components (the 95 % Hausdorff
distance, the largest component, Otsu's threshold) are plain NumPy / SciPy functions at the end of
the module; they are evaluation tools, never traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_SPATIAL = (-3, -2, -1)


def dice(pred, target, empty: float = 1.0) -> jax.Array:
    """Dice overlap ``2 |P ∩ T| / (|P| + |T|)`` over the last three axes; soft (products) when the
    inputs are probabilities. Both empty: ``empty``. Shape: leading axes of the inputs, float32."""
    p = jnp.asarray(pred, jnp.float32)
    t = jnp.asarray(target, jnp.float32)
    inter = jnp.sum(p * t, axis=_SPATIAL)
    total = jnp.sum(p, axis=_SPATIAL) + jnp.sum(t, axis=_SPATIAL)
    return jnp.where(total > 0, 2.0 * inter / jnp.maximum(total, 1e-12), jnp.float32(empty))


def binary_cross_entropy(prob, target, eps: float = 1e-6) -> jax.Array:
    """Per-voxel ``-(y log p + (1 - y) log(1 - p))`` in nats, ``p`` clipped to ``[eps, 1 - eps]``;
    same shape as the inputs, float32."""
    p = jnp.clip(jnp.asarray(prob, jnp.float32), eps, 1.0 - eps)
    y = jnp.asarray(target, jnp.float32)
    return -(y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p))


def _pool3(x: jax.Array, op, identity: float) -> jax.Array:
    """One ``3 x 3 x 3`` max (or min) pooling step, stride 1, the border padded with 0 (background);
    ``(..., X, Y, Z)`` float32. (XLA folds the init value into every window, so it must be the
    operation's identity; the zero border is an explicit pad.)"""
    lead = x.shape[:-3]
    y = jnp.pad(x.reshape((-1,) + x.shape[-3:]), ((0, 0), (1, 1), (1, 1), (1, 1)))
    y = jax.lax.reduce_window(y, jnp.float32(identity), op, (1, 3, 3, 3), (1, 1, 1, 1), "VALID")
    return y.reshape(lead + x.shape[-3:])


def _iterate(mask, radius, op, identity):
    m = jnp.asarray(mask).astype(jnp.float32)
    return jax.lax.fori_loop(0, jnp.asarray(radius, jnp.int32), lambda _, y: _pool3(y, op, identity), m) > 0.5


def dilate(mask, radius) -> jax.Array:
    """Binary dilation by the cube of edge ``2 radius + 1`` (``radius`` >= 0, may be traced); bool."""
    return _iterate(mask, radius, jax.lax.max, -np.inf)


def erode(mask, radius) -> jax.Array:
    """Binary erosion by the cube of edge ``2 radius + 1``, the border counted as background; bool."""
    return _iterate(mask, radius, jax.lax.min, np.inf)


def opening(mask, radius) -> jax.Array:
    """``dilate(erode(mask, r), r)``: removes specks and bridges thinner than the element; bool."""
    return dilate(erode(mask, radius), radius)


def closing(mask, radius) -> jax.Array:
    """``erode(dilate(mask, r), r)``: fills holes and gaps narrower than the element; bool."""
    return erode(dilate(mask, radius), radius)


def window_mask(image, low, high) -> jax.Array:
    """``low <= image <= high`` (the threshold window of a Sahba-style agent); bool, image's shape."""
    return (image >= low) & (image <= high)


def patches(volume, size: int) -> jax.Array:
    """Every voxel's ``size``³ neighbourhood, zero outside: ``(C, X, Y, Z)`` -> ``(X, Y, Z, C, s, s, s)``
    (``size`` odd; patch ``[x, y, z, c]`` is centred on voxel ``(x, y, z)``). A convolution with a
    ``size``³ kernel is the same linear map applied to these patches, without materialising them."""
    if size % 2 != 1:
        raise ValueError(f"patches: size must be odd, got {size}")
    v = jnp.asarray(volume, jnp.float32)
    c = v.shape[0]
    out = jax.lax.conv_general_dilated_patches(v[None], (size,) * 3, (1, 1, 1), "SAME",
                                               dimension_numbers=("NCXYZ", "OIXYZ", "NCXYZ"))
    # (1, C * s^3, X, Y, Z), channel-major then the window in C order
    out = out[0].reshape((c, size, size, size) + v.shape[1:])
    return jnp.moveaxis(out, (4, 5, 6), (0, 1, 2))


# ------------------------------------------------------------------ host-side evaluation metrics (NumPy / SciPy)


def surface_distances(pred: np.ndarray, target: np.ndarray, spacing) -> np.ndarray:
    """Distances (mm) from every surface voxel of each mask to the other mask's surface, both ways,
    concatenated (the sample the Hausdorff distances are percentiles of). Surface = mask minus its
    26-neighbourhood erosion. Empty array if either mask is empty."""
    from scipy import ndimage

    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if not pred.any() or not target.any():
        return np.zeros(0)
    cube = ndimage.generate_binary_structure(3, 3)
    sp = pred & ~ndimage.binary_erosion(pred, cube)
    st = target & ~ndimage.binary_erosion(target, cube)
    spacing = np.broadcast_to(np.asarray(spacing, np.float64), (3,))
    to_t = ndimage.distance_transform_edt(~st, sampling=spacing)
    to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return np.concatenate([to_t[sp], to_p[st]])


def hausdorff95(pred: np.ndarray, target: np.ndarray, spacing) -> float:
    """The 95th percentile of :func:`surface_distances` (mm); ``inf`` when exactly one mask is empty,
    0 when both are."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    if not pred.any() and not target.any():
        return 0.0
    d = surface_distances(pred, target, spacing)
    return float(np.percentile(d, 95)) if d.size else float("inf")


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of ``mask`` (bool; empty stays empty)."""
    from scipy import ndimage

    mask = np.asarray(mask, bool)
    labels, n = ndimage.label(mask, ndimage.generate_binary_structure(3, 3))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape): the histogram split maximising the between-class
    variance (the middle of a run of equal maxima); returned as a value between two bin centres."""
    v = np.asarray(values, np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)[:-1].astype(np.float64)
    w1 = v.size - w0
    s0 = np.cumsum(hist * centres)[:-1]
    m0 = s0 / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    ties = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    i = int(ties[len(ties) // 2])  # an empty gap between the classes: every split in it ties; take its middle
    return float(0.5 * (centres[i] + centres[i + 1]))
