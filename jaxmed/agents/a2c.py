"""Advantage actor-critic (A2C, the synchronous form of A3C: Mnih et al. 2016, "Asynchronous methods
for deep reinforcement learning") for jaxmed environments.

``n_envs`` vmapped environments advance ``num_steps`` steps under the sampled policy; the advantages
are GAE(λ) (``gae_lambda = 1``: the classic n-step returns bootstrapped from the last value; a
truncated episode bootstraps from its final observation, a terminated one does not); then *one*
gradient step on the whole rollout:

    loss = -mean(log π(a|s) · A) + vf_coef · 0.5 · mean((V - R)^2) - ent_coef · entropy

(no importance ratio, no clipping). The program is PPO's (:mod:`jaxmed.agents.actor_critic_train`)
with one epoch of one minibatch and the vanilla losses of :mod:`jaxmed.agents.policy_gradient`. The
optimiser is Adam with global-norm clipping (the A3C paper used shared RMSProp).
"""

from __future__ import annotations

import dataclasses

from jaxmed.agents import core
from jaxmed.agents import hparams as hparams_lib
from jaxmed.agents.actor_critic_train import ActorCriticConfig, RunnerState, make_actor_critic_train
from jaxmed.agents.actor_critic_train import Hparams as ActorCriticHparams
from jaxmed.errors import ConfigError

__all__ = ["HPARAM_FIELDS", "A2CConfig", "Hparams", "RunnerState", "default_hparams", "make_parallel_train",
           "make_train", "stack_hparams"]


@dataclasses.dataclass(frozen=True)
class A2CConfig(ActorCriticConfig):
    """A2C hyperparameters: the fields of :class:`jaxmed.agents.actor_critic_train.ActorCriticConfig`
    with classic A2C defaults: short rollouts (``num_steps``, one gradient step each, so
    ``updates_per_chunk`` rollouts per chunk), n-step returns (``gae_lambda = 1``), the advantages of each
    rollout not normalised."""

    num_steps: int = 5
    updates_per_chunk: int = 20
    gae_lambda: float = 1.0
    normalize_advantages: bool = False
    learning_rate: float = 7e-4

    # the shared actor-critic program reads these: one unclipped step on the whole rollout
    update_epochs = 1
    num_minibatches = 1
    clip_eps = None
    value_clip_eps = None


#: A2C's hyperparameter leaves: learning_rate, lr_final_fraction, max_grad_norm, gamma, gae_lambda, vf_coef,
#: ent_coef (scalars in the runner state; see :class:`jaxmed.agents.actor_critic_train.Hparams`).
Hparams = ActorCriticHparams

#: A2CConfig fields that are leaves of the runner state (vmappable inside one compiled program).
HPARAM_FIELDS, default_hparams, stack_hparams = hparams_lib.learner_hparams(Hparams)


def make_train(config: A2CConfig, env, env_params, network, axis_name: str | None = None) -> core.TrainFns:
    """A2C training functions; same interface and metrics as :func:`jaxmed.agents.ppo.make_train`
    (``clip_frac`` is 0)."""
    if not isinstance(config, A2CConfig):
        raise ConfigError(f"a2c.make_train needs an A2CConfig, got {type(config).__name__}")
    return make_actor_critic_train(config, env, env_params, network, axis_name, default_hparams)


def make_parallel_train(config: A2CConfig, env, env_params, network, n_devices: int | None = None, axis_name: str = "devices"):
    """:func:`make_train` data-parallel over ``n_devices`` local devices with ``jax.pmap`` (as DQN's)."""
    return core.make_parallel(make_train, config, env, env_params, network, n_devices, axis_name)
