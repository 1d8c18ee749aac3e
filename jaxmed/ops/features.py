"""Contrast-invariant features of image crops, computed at render time.

An agent that sees raw intensities learns the contrast of the images it trained on: a scan whose
tissues are ordered or spaced differently (another sequence, another scanner, a synthetic subject with
a random tissue contrast) looks like another image. The boundaries between tissues stay where they
are, whatever their intensities. :func:`edge_map` keeps only them: the *normalised gradient field*
magnitude of Haber & Modersitzki (2006, "Intensity gradient based registration and fusion of
multi-modal images"),

    e(x) = |grad I(x)| / sqrt(|grad I(x)|^2 + eps^2),    eps = rel_eps * mean_x |grad I(x)|,

in ``[0, 1)``: close to 1 on any boundary whose gradient is well above the crop's mean, close to 0 in
flat tissue. With ``eps`` taken relative to the crop's own mean gradient, ``e`` is unchanged when the
crop's intensities are multiplied by any positive factor, and changes little under a monotone or
non-monotone remap that keeps neighbouring tissues distinct.
"""

from __future__ import annotations

import jax.numpy as jnp


def gradient_magnitude(crops) -> jnp.ndarray:
    """``|grad I|`` of ``crops`` ``(..., D, H, W)`` float32 over its last three axes, in intensity per
    voxel: central differences inside, one-sided differences on the faces (as :func:`numpy.gradient`).
    Returns the same shape, float32."""
    crops = jnp.asarray(crops, jnp.float32)
    grads = jnp.gradient(crops, axis=(-3, -2, -1))
    return jnp.sqrt(sum(g * g for g in grads))


def edge_map(crops, rel_eps: float = 0.5) -> jnp.ndarray:
    """Normalised-gradient-field magnitude of each crop (module docstring): ``(..., D, H, W)`` float32
    in ``[0, 1)``. ``rel_eps`` (> 0) sets ``eps`` as a fraction of each crop's mean ``|grad I|``;
    a flat crop (no gradient at all) gives zeros."""
    g = gradient_magnitude(crops)
    eps = rel_eps * jnp.mean(g, axis=(-3, -2, -1), keepdims=True) + 1e-6
    return g / jnp.sqrt(g * g + eps * eps)
