"""The learners a run can select (``train.learner``) and what each one needs from the outer loop.

Every learner module provides the same interface:

* a frozen config dataclass (the YAML section named after the learner, e.g. ``dqn:`` / ``ppo:``)
  with ``n_envs`` and ``env_steps_per_chunk`` (single-env steps one ``run_chunk`` takes per device);
* ``make_train(config, env, env_params, network, axis_name=None) -> TrainFns`` (``init(key, bank)``,
  ``run_chunk(state, bank) -> (state, metrics)``), pure and vmappable over seeds;
* ``make_parallel_train(config, env, env_params, network, n_devices)`` (data-parallel, ``pmap``);
* ``Hparams``, ``HPARAM_FIELDS``, ``default_hparams`` and ``stack_hparams`` (:mod:`jaxmed.agents.hparams`).

The network family differs: value learners use :func:`jaxmed.networks.network_from_config`
(Q-values), policy-gradient learners an actor-critic network. :func:`policy_action` is the
deterministic action of a trained network of any learner (evaluation, ``jaxmed detect``,
``register``, ``plane``).
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from jaxmed.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LearnerSpec:
    module: str  # import path of the learner module
    config_class: str  # name of its config dataclass
    network: str  # "q" (network_from_config), "actor_critic" or "voxel_q" (per-voxel Q convolution)


LEARNERS: dict[str, LearnerSpec] = {
    "dqn": LearnerSpec("jaxmed.agents.dqn", "DQNConfig", "q"),
    "a2c": LearnerSpec("jaxmed.agents.a2c", "A2CConfig", "actor_critic"),
    "ppo": LearnerSpec("jaxmed.agents.ppo", "PPOConfig", "actor_critic"),
    "grpo": LearnerSpec("jaxmed.agents.grpo", "GRPOConfig", "actor_critic"),
    "voxel_q": LearnerSpec("jaxmed.agents.voxel_q", "VoxelQConfig", "voxel_q"),  # voxel-seg-v0 only
}


def spec(name: str) -> LearnerSpec:
    """The :class:`LearnerSpec` registered as ``name`` (:class:`ConfigError` listing them otherwise)."""
    if name not in LEARNERS:
        raise ConfigError(f"unknown learner {name!r}; choose one of {', '.join(LEARNERS)}")
    return LEARNERS[name]


def module(name: str) -> ModuleType:
    """The learner's module (imported on first use)."""
    return importlib.import_module(spec(name).module)


def config_class(name: str) -> type:
    """The learner's config dataclass (the YAML section named after the learner)."""
    return getattr(module(name), spec(name).config_class)


def network_from_config(name: str, cfg: dict):
    """Build learner ``name``'s network from a ``network:`` config mapping."""
    if spec(name).network == "q":
        from jaxmed.networks import network_from_config as build
    elif spec(name).network == "voxel_q":
        from jaxmed.agents.voxel_q import network_from_config as build
    else:
        from jaxmed.networks.actor_critic import actor_critic_from_config as build
    return build(cfg)


def run_chunks(fns, bank, n_chunks: int, state=None, seed: int = 0):
    """Train in a Python loop of ``n_chunks`` jitted ``fns.run_chunk`` calls (any learner's
    ``make_train(...)`` result); starts from ``fns.init(jax.random.key(seed), bank)`` unless ``state``
    is given. Returns ``(state, metrics of the last chunk)`` (``metrics`` is ``{}`` when
    ``n_chunks == 0``). For logging, checkpoints and evaluation use :func:`jaxmed.train.run_training`.
    """
    import jax

    if state is None:
        state = jax.jit(fns.init)(jax.random.key(seed), bank)
    chunk = jax.jit(fns.run_chunk)
    metrics = {}
    for _ in range(n_chunks):
        state, metrics = chunk(state, bank)
    return state, metrics


def policy_action(name: str, network, params, obs):
    """``(..., A)`` int32: the deterministic action of learner ``name``'s trained ``network`` for
    observations ``(..., A, ...)``: the action of highest Q-value for a value learner
    (:func:`jaxmed.agents.dqn.greedy_action`; the per-voxel Q-network of ``voxel_q`` maps the env's
    patches ``(..., A, 2, p, p, p)`` to ``(..., A, n_actions)`` too), the most probable action of the
    policy for an actor-critic one (:func:`jaxmed.agents.policy_gradient.mode_action`)."""
    if spec(name).network in ("q", "voxel_q"):
        from jaxmed.agents.dqn import greedy_action

        return greedy_action(network, params, obs)
    from jaxmed.agents.policy_gradient import mode_action

    return mode_action(network, params, obs)
