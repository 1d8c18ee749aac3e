"""Random intensity look-up tables for crops: a new contrast every episode, at render time.

A contrast is ``K`` knot values (``(K,)`` uint8, ``knot / 255`` is a fraction of the storage range)
at ``K`` evenly spaced stored intensities from 0 to full scale; a stored value ``v`` becomes the
piecewise-linear interpolation through the knots, ``interp(v / full, linspace(0, 1, K), knots / 255)
* full`` (rounded for integer storage). The identity knots leave every value exactly as it is.

A *gain* table (:func:`random_gain_knots`) is the narrow case real scans differ by most often: all
intensities times one factor, clipped to full scale (a brain normalised with or without its bright
scalp, another scanner's scaling).

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


def gain_knots(n_knots: int, gain) -> jax.Array:
    """``(K,)`` uint8 knots of ``v -> min(gain * v, full scale)`` (``gain`` a scalar > 0; the kink
    falls between knots, so the table is that line to within one knot spacing)."""
    return jnp.round(jnp.clip(gain * jnp.linspace(0.0, 255.0, n_knots), 0.0, 255.0)).astype(jnp.uint8)


def random_gain(key, prob, gain_min, gain_max) -> jax.Array:
    """``()`` float32: with probability ``prob`` a gain drawn log-uniformly in ``[gain_min, gain_max]``,
    else exactly 1 (scalars)."""
    k_use, k_gain = jax.random.split(key)
    lo, hi = jnp.log(jnp.asarray(gain_min, jnp.float32)), jnp.log(jnp.asarray(gain_max, jnp.float32))
    gain = jnp.exp(lo + (hi - lo) * jax.random.uniform(k_gain, ()))
    use = jax.random.uniform(k_use, ()) < prob
    return jnp.where(use, gain, jnp.float32(1.0))


def random_gain_knots(key, n_knots: int, prob, gain_min, gain_max) -> jax.Array:
    """``(K,)`` uint8: the :func:`gain_knots` of :func:`random_gain` (the identity knots when no gain
    is drawn, or when both bounds are 1)."""
    return gain_knots(n_knots, random_gain(key, prob, gain_min, gain_max))


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
