"""Loss pieces of the policy-gradient learners (shared by A2C, PPO and GRPO).

Every function takes per-sample arrays of one shape (e.g. ``(B, A)``: minibatch x agents) and a
boolean ``mask`` of the same shape (live agents); means are taken over the masked entries only.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxmed.agents.rollout_pg import masked_mean


def policy_loss(logp, old_logp, advantage, mask, clip_eps: float | None):
    """Policy-gradient loss and diagnostics.

    * ``clip_eps=None`` (A2C): ``-mean(logp * advantage)``, the vanilla policy gradient.
    * ``clip_eps > 0`` (PPO, GRPO): the clipped surrogate ``-mean(min(ρ A, clip(ρ, 1 - ε, 1 + ε) A))``
      with ``ρ = exp(logp - old_logp)`` (Schulman et al. 2017). At ``ρ = 1`` its gradient equals the
      vanilla one, so one unclipped step on fresh data is A2C's step.

    Returns ``(loss, {"approx_kl": mean((ρ - 1) - log ρ), "clip_frac": fraction with |ρ - 1| > ε})``.
    """
    log_ratio = logp - old_logp
    ratio = jnp.exp(log_ratio)
    if clip_eps is None:
        surrogate = logp * advantage
        clip_frac = jnp.zeros(())
    else:
        surrogate = jnp.minimum(ratio * advantage, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantage)
        clip_frac = masked_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32), mask)
    approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return -masked_mean(surrogate, mask), {"approx_kl": approx_kl, "clip_frac": clip_frac}


def value_loss(value, old_value, target, mask, clip_eps: float | None):
    """``0.5 * mean((V - target)^2)``; with ``clip_eps`` the PPO clipped form
    ``0.5 * mean(max((V - target)^2, (V_old + clip(V - V_old, -ε, ε) - target)^2))``."""
    err = (value - target) ** 2
    if clip_eps is not None:
        clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
        err = jnp.maximum(err, (clipped - target) ** 2)
    return 0.5 * masked_mean(err, mask)
