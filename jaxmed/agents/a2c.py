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
from jaxmed.agents.actor_critic_train import Hparams as ActorCriticHparams
from jaxmed.agents.actor_critic_train import RunnerState, make_actor_critic_train
from jaxmed.agents.policy_gradient import ChunkCounts
from jaxmed.errors import ConfigError

__all__ = ["HPARAM_FIELDS", "A2CConfig", "Hparams", "RunnerState", "default_hparams", "make_parallel_train",
           "make_train", "stack_hparams"]


@dataclasses.dataclass(frozen=True)
class A2CConfig(core.OptimizerConfig, ChunkCounts):
    """A2C hyperparameters (the network and environment are configured separately).

    Attributes:
      n_envs: environments per device.
      num_steps: rollout length ``T`` (vector steps) per gradient step.
      updates_per_chunk: rollouts (= gradient steps) per ``run_chunk`` call.
      gamma, gae_lambda: discount and GAE λ (1.0: n-step returns).
      vf_coef, ent_coef: weights of the value loss and of the entropy bonus.
      normalize_advantages: normalise the advantages of each rollout (off in classic A2C).
      learning_rate, adam_eps, lr_decay_steps, lr_final_fraction, max_grad_norm: as in
        :class:`jaxmed.agents.ppo.PPOConfig` (one gradient step per rollout).
    """

    n_envs: int = 16
    num_steps: int = 5
    updates_per_chunk: int = 20
    gamma: float = 0.99
    gae_lambda: float = 1.0
    vf_coef: float = 0.5
    ent_coef: float = 0.01
    normalize_advantages: bool = False
    learning_rate: float = 7e-4

    def __post_init__(self):
        core.validate_fields(self, ints=("n_envs", "num_steps", "updates_per_chunk"), non_negative_ints=("lr_decay_steps",),
                        floats=("gamma", "gae_lambda", "vf_coef", "ent_coef") + core.OPTIMIZER_FLOATS,
                        bools=("normalize_advantages",))
        core.check_range(self, "gamma", 0.0, 1.0, low_open=True)
        core.check_range(self, "gae_lambda", 0.0, 1.0)
        core.check_non_negative(self, "vf_coef", "ent_coef")
        core.check_optimizer_fields(self)

    # the shared actor-critic program reads these: one unclipped step on the whole rollout
    update_epochs = 1
    num_minibatches = 1
    clip_eps = None
    value_clip_eps = None

    @property
    def rollout_steps(self) -> int:
        return self.num_steps


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
