"""Hindsight goal relabelling (HER) for goal-conditioned envs on the state-based DQN replay.

After Andrychowicz et al., "Hindsight experience replay", NeurIPS 2017, as used for goal-conditioned
navigation by Amadou et al., MICCAI 2024. A sampled transition ``(s, a, r, s')`` is re-targeted, with
probability ``fraction``, at a goal the agent *achieved*: its goal becomes a position of its own
trajectory, the goal image becomes the crop of the *subject's own* volume there (for a goal-image
agent that is the only image of that place there is), and reward and bootstrap factor are
recomputed with the env's reward function for the new goal:

* ``reward' = clip(|x_s - g| - |x_s' - g|, ±reward_clip)`` mm (0 for agents already done), with
  ``x`` the agents' world positions (level-0 voxels through the volume's affine);
* ``discount' = gamma * (1 - terminal')`` with ``terminal' = osc_done(s') | reached'``, ``reached'``
  the landmark env's stop-at-target rule for the new goal (``terminate_at_target_mm > 0``, move
  made at the finest level, ``|x_s' - g| <= terminate_at_target_mm``); ``osc_done`` (stopped by
  oscillating at the finest level) does not depend on the goal and is carried in the obs state.

Strategies for the achieved goal ``g`` (level-0 voxel of the episode's volume):

* ``"next"``: ``x_s'``, the position the transition reached;
* ``"near"``: ``x_s'`` plus a uniform offset in ``± radius_mm`` per axis (rounded to a voxel, kept in
  the volume): a place within a few steps of the trajectory, seen from farther away.

The "future" / "final" strategies of the paper need positions *later* in the episode; the replay
here stores single transitions (observation states, no episode links), so a transition only knows
the ring of its own past positions and ``x_s'``. With the dense distance-decrease reward every goal
gives an informative reward, so relabelling's job here is to show the network many goal images of
places it can reach, which both strategies do. ``n_step > 1`` is refused: an ``n``-step return
cannot be recomputed for a new goal from its two end states.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from jaxmed.errors import ConfigError

STRATEGIES = ("next", "near")


@dataclasses.dataclass(frozen=True)
class HERConfig:
    """``fraction`` of sampled transitions relabelled; ``strategy`` (:data:`STRATEGIES`); ``radius_mm`` for ``"near"``."""

    fraction: float = 0.5
    strategy: str = "near"
    radius_mm: float = 8.0

    def __post_init__(self):
        if not 0.0 <= float(self.fraction) <= 1.0:
            raise ConfigError(f"HER fraction must be in [0, 1], got {self.fraction}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown HER strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if float(self.radius_mm) < 0:
            raise ConfigError(f"HER radius_mm must be >= 0, got {self.radius_mm}")


def to_world(affine, vox) -> jax.Array:
    """``(..., 3)`` world mm of level-0 voxels ``vox`` ``(..., 3)`` under ``affine`` ``(..., 4, 4)`` (broadcast)."""
    v = vox.astype(jnp.float32)
    return jnp.einsum("...ij,...j->...i", affine[..., :3, :3], v) + affine[..., :3, 3]


def relabelled_reward(affine, pos, next_pos, goal_world, reward_clip, valid) -> jax.Array:
    """``(B, A)`` float32: the distance-decrease reward (mm, clipped) of moving ``pos -> next_pos``
    (``(B, A, 3)`` level-0 voxels, ``affine`` ``(B, 4, 4)``) towards ``goal_world`` ``(B, A, 3)`` mm; 0 where not ``valid``."""
    a = affine[:, None]
    d0 = jnp.linalg.norm(to_world(a, pos) - goal_world, axis=-1)
    d1 = jnp.linalg.norm(to_world(a, next_pos) - goal_world, axis=-1)
    return jnp.where(valid, jnp.clip(d0 - d1, -reward_clip, reward_clip), 0.0).astype(jnp.float32)


def make_her_transform(env, env_params, gamma: float, config: HERConfig, n_step: int = 1) -> Callable:
    """``batch_transform(batch, key, bank) -> batch`` for :func:`jaxmed.agents.dqn.make_train`.

    ``env`` is a goal-conditioned env whose obs state holds ``nav`` (a landmark :class:`ObsState`),
    ``goal_volume``, ``goal_vox`` and ``osc_done`` (:class:`jaxmed.envs.goal_landmark.GoalObsState`);
    ``gamma`` the learner's discount. Batch leaves are ``(B, ...)`` as sampled from the replay.
    """
    if n_step != 1:
        raise ConfigError(f"hindsight relabelling needs one-step transitions (dqn.n_step = 1), got n_step = {n_step}")
    if not 0 < gamma <= 1:
        raise ConfigError(f"gamma must be in (0, 1], got {gamma}")

    def transform(batch, key, bank):
        obs, nxt = batch["obs_state"], batch["next_obs_state"]
        volume = obs.nav.volume  # (B,)
        pos = obs.nav.history[:, :, 0].astype(jnp.int32)  # (B, A, 3)
        next_pos = nxt.nav.history[:, :, 0].astype(jnp.int32)
        B, A = pos.shape[:2]
        k_pick, k_off = jax.random.split(key)
        relabel = jax.random.uniform(k_pick, (B,)) < config.fraction  # (B,)
        affine = bank.affines[0, volume]  # (B, 4, 4)
        goal_vox = next_pos
        if config.strategy == "near":
            offset = jax.random.uniform(k_off, (B, A, 3), jnp.float32, -1.0, 1.0) * config.radius_mm
            inv = jnp.linalg.inv(affine)[:, None]
            goal_vox = jnp.round(to_world(inv, to_world(affine[:, None], next_pos) + offset)).astype(jnp.int32)
            goal_vox = jnp.clip(goal_vox, 0, bank.shapes[0, volume][:, None, :] - 1)
        goal_world = to_world(affine[:, None], goal_vox)
        valid = batch["valid"]
        reward = relabelled_reward(affine, pos, next_pos, goal_world, jnp.asarray(env_params.reward_clip, jnp.float32), valid)
        thr = jnp.asarray(env_params.terminate_at_target_mm, jnp.float32)
        d1 = jnp.linalg.norm(to_world(affine[:, None], next_pos) - goal_world, axis=-1)
        reached = valid & (thr > 0) & (obs.nav.level == 0) & (d1 <= thr)
        terminal = nxt.osc_done | reached
        discount = gamma * (1.0 - terminal.astype(jnp.float32))

        sel = lambda new, old: jnp.where(relabel.reshape((B,) + (1,) * (old.ndim - 1)), new, old)  # noqa: E731
        gv = goal_vox.astype(obs.goal_vox.dtype)
        out = dict(batch)
        out["obs_state"] = obs.replace(goal_volume=sel(volume, obs.goal_volume), goal_vox=sel(gv, obs.goal_vox))
        out["next_obs_state"] = nxt.replace(goal_volume=sel(volume, nxt.goal_volume), goal_vox=sel(gv, nxt.goal_vox))
        out["reward"] = sel(reward, batch["reward"])
        out["discount"] = sel(discount.astype(batch["discount"].dtype), batch["discount"])
        return out

    return transform


def transform_for(env, env_params, learner_config) -> Callable | None:
    """The relabelling ``batch_transform`` a run of ``env`` should use, or ``None``: an env whose
    static config has ``her_fraction > 0`` (with ``her_strategy``, ``her_radius_mm``) gets
    :func:`make_her_transform` with the learner's ``gamma`` and ``n_step``."""
    c = getattr(env, "config", None)
    fraction = float(getattr(c, "her_fraction", 0.0) or 0.0)
    if fraction <= 0:
        return None
    her = HERConfig(fraction, c.her_strategy, c.her_radius_mm)
    return make_her_transform(env, env_params, learner_config.gamma, her, n_step=getattr(learner_config, "n_step", 1))
