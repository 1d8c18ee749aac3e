"""Random intensity look-up tables for crops: a new contrast every episode, at render time.

A contrast is ``K`` knot values (``(K,)`` uint8, ``knot / 255`` is a fraction of the storage range)
at ``K`` evenly spaced stored intensities from 0 to full scale; a stored value ``v`` becomes the
piecewise-linear interpolation through the knots, ``interp(v / full, linspace(0, 1, K), knots / 255)
* full`` (rounded for integer storage). The identity knots leave every value exactly as it is.

Random knots are uniform and independent, so the look-up table is any piecewise-linear function:
monotone (another T1 weighting), reversed (T2-like), or neither, as in SynthSeg (Billot et al. 2023),
where each tissue class draws its own intensity. Applied to the few crops an agent sees rather than to
the volume, it costs one interpolation per rendered voxel, and an environment stores only ``K`` bytes
per episode (state-based replay re-renders the same contrast).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def identity_knots(n_knots: int) -> jax.Array:
    """``(K,)`` uint8 knots of the identity table: ``round(255 * i / (K - 1))``."""
    return jnp.round(jnp.linspace(0.0, 255.0, n_knots)).astype(jnp.uint8)


def random_knots(key, n_knots: int, prob) -> jax.Array:
    """``(K,)`` uint8: with probability ``prob`` (a scalar in [0, 1]) ``K`` independent uniform knots,
    else the identity."""
    k_use, k_knots = jax.random.split(key)
    drawn = jnp.floor(jax.random.uniform(k_knots, (n_knots,)) * 256.0).clip(0, 255).astype(jnp.uint8)
    use = jax.random.uniform(k_use, ()) < prob
    return jnp.where(use, drawn, identity_knots(n_knots))


def apply_knots(values: jax.Array, knots: jax.Array, full_scale) -> jax.Array:
    """``values`` (any shape, stored intensities in ``[0, full_scale]``) through the table of ``knots``
    ``(K,)`` uint8; same shape and dtype (integer dtypes rounded and clipped to ``[0, full_scale]``).
    Identity knots return ``values`` unchanged, bit for bit."""
    n = knots.shape[0]
    full = jnp.asarray(full_scale, jnp.float32)
    x = values.astype(jnp.float32) / full
    y = jnp.interp(x, jnp.linspace(0.0, 1.0, n), knots.astype(jnp.float32) / 255.0) * full
    if jnp.issubdtype(values.dtype, jnp.integer):
        y = jnp.clip(jnp.round(y), 0.0, full)
    out = y.astype(values.dtype)
    return jnp.where(jnp.all(knots == identity_knots(n)), values, out)
