"""Hindsight goal relabelling (HER) for goal-conditioned envs on the state-based DQN replay.

After Andrychowicz et al., "Hindsight experience replay", NeurIPS 2017, as used for goal-conditioned
navigation by Amadou et al., MICCAI 2024. A sampled transition ``(s, a, r, s')`` is re-targeted, with
probability ``fraction``, at a goal the agent *achieved*: its goal becomes a position of its own
trajectory, the goal image becomes the crop of the *subject's own* volume there (for a goal-image
agent that is the only image of that place there is), and reward and bootstrap factor are
recomputed by the env for the new goal: the env offers the hooks (it knows its reward and stop rule;
e.g. :meth:`jaxmed.envs.goal_landmark.GoalLandmarkEnv.relabel`):

* ``env.achieved_goal(next_obs_state, bank, offset_mm) -> goal_vox (A, 3)``: a goal the transition
  achieved (level-0 voxels of the episode's volume), moved by a world offset;
* ``env.relabel(obs_state, next_obs_state, goal_vox, valid, params, bank) -> (obs_state',
  next_obs_state', reward' (A,), terminal' (A,))``; the bootstrap factor becomes
  ``gamma * (1 - terminal')``.

The options are the DQN learner's (``dqn.her: {fraction, strategy, radius_mm}``, :class:`HERConfig`).

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

#: The ``env:`` keys hindsight relabelling had before it became a learner option, and their new place.
OLD_ENV_KEYS = {"her_fraction": "fraction", "her_strategy": "strategy", "her_radius_mm": "radius_mm"}


@dataclasses.dataclass(frozen=True)
class HERConfig:
    """``fraction`` of sampled transitions relabelled (0: off); ``strategy`` (:data:`STRATEGIES`);
    ``radius_mm`` (world mm per axis) for ``"near"``."""

    fraction: float = 0.0
    strategy: str = "near"
    radius_mm: float = 8.0

    def __post_init__(self):
        if not 0.0 <= float(self.fraction) <= 1.0:
            raise ConfigError(f"HER fraction must be in [0, 1], got {self.fraction}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown HER strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if float(self.radius_mm) < 0:
            raise ConfigError(f"HER radius_mm must be >= 0, got {self.radius_mm}")


def supports_relabelling(env) -> bool:
    """Whether ``env`` offers the relabelling hooks (``achieved_goal`` and ``relabel``)."""
    return callable(getattr(env, "achieved_goal", None)) and callable(getattr(env, "relabel", None))


def make_her_transform(env, env_params, gamma: float, config: HERConfig, n_step: int = 1) -> Callable:
    """``batch_transform(batch, key, bank) -> batch`` for :func:`jaxmed.agents.dqn.make_train`: each
    sampled transition is relabelled with probability ``config.fraction`` (module docstring).

    ``env`` offers the relabelling hooks (:func:`supports_relabelling`); ``gamma`` is the learner's
    discount. Batch leaves are ``(B, ...)`` as sampled from the replay (``obs_state``,
    ``next_obs_state``, ``valid`` ``(B, A)``, ``reward`` ``(B, A)``, ``discount`` ``(B, A)``).
    """
    if not supports_relabelling(env):
        raise ConfigError(f"hindsight relabelling needs a goal-conditioned env with relabelling hooks; {env.name!r} has none")
    if n_step != 1:
        raise ConfigError(f"hindsight relabelling needs one-step transitions (dqn.n_step = 1), got n_step = {n_step}")
    if not 0 < gamma <= 1:
        raise ConfigError(f"gamma must be in (0, 1], got {gamma}")
    v_goal = jax.vmap(env.achieved_goal, in_axes=(0, None, 0))
    v_relabel = jax.vmap(env.relabel, in_axes=(0, 0, 0, 0, None, None))

    def transform(batch, key, bank):
        B, A = batch["valid"].shape
        k_pick, k_off = jax.random.split(key)
        relabel = jax.random.uniform(k_pick, (B,)) < config.fraction  # (B,)
        offset = jnp.zeros((B, A, 3), jnp.float32)
        if config.strategy == "near":
            offset = jax.random.uniform(k_off, (B, A, 3), jnp.float32, -1.0, 1.0) * config.radius_mm
        goal_vox = v_goal(batch["next_obs_state"], bank, offset)
        obs, nxt, reward, terminal = v_relabel(batch["obs_state"], batch["next_obs_state"], goal_vox, batch["valid"], env_params, bank)
        discount = gamma * (1.0 - terminal.astype(jnp.float32))

        def sel(new, old):
            return jnp.where(relabel.reshape((B,) + (1,) * (old.ndim - 1)), new.astype(old.dtype), old)

        out = dict(batch)
        out["obs_state"] = jax.tree.map(sel, obs, batch["obs_state"])
        out["next_obs_state"] = jax.tree.map(sel, nxt, batch["next_obs_state"])
        out["reward"] = sel(reward, batch["reward"])
        out["discount"] = sel(discount, batch["discount"])
        return out

    return transform


def transform_for(env, env_params, learner_config) -> Callable | None:
    """The relabelling ``batch_transform`` a run should use, or ``None``: a learner config with
    ``her.fraction > 0`` (``dqn.her``) gets :func:`make_her_transform` with its ``gamma`` and ``n_step``."""
    her = getattr(learner_config, "her", None)
    if her is None or float(her.fraction) <= 0:
        return None
    return make_her_transform(env, env_params, learner_config.gamma, her, n_step=getattr(learner_config, "n_step", 1))


def move_env_keys(data: dict, where: str = "config") -> dict:
    """A config mapping with the old ``env.her_fraction`` / ``her_strategy`` / ``her_radius_mm`` keys moved
    to ``dqn.her`` (their place since relabelling became a learner option). Both places at once, or
    the old keys with another learner, raise :class:`ConfigError`."""
    env = data.get("env")
    if not isinstance(env, dict) or not any(k in env for k in OLD_ENV_KEYS):
        return data
    old = {OLD_ENV_KEYS[k]: env[k] for k in OLD_ENV_KEYS if k in env}
    learner = (data.get("train") or {}).get("learner", "dqn") if isinstance(data.get("train"), dict) else "dqn"
    if learner != "dqn":
        raise ConfigError(f"{where}.env: {', '.join(k for k in OLD_ENV_KEYS if k in env)}: hindsight relabelling is an option "
                          f"of the dqn learner (dqn.her), not of {learner}")
    dqn = dict(data.get("dqn") or {})
    if dqn.get("her") is not None:
        raise ConfigError(f"{where}: both env.her_* and dqn.her are set; env.her_* moved to dqn.her, keep only that")
    dqn["her"] = old
    return {**data, "env": {k: v for k, v in env.items() if k not in OLD_ENV_KEYS}, "dqn": dqn}
