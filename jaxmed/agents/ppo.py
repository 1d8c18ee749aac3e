"""Proximal policy optimisation (Schulman et al. 2017, "Proximal Policy Optimization Algorithms") for
jaxmed environments, PureJaxRL style: the whole training iteration is one jitted pure function.

Per iteration (see :mod:`jaxmed.agents.actor_critic_train`): ``num_steps`` steps of ``n_envs``
vmapped environments under the sampled categorical policy; GAE(λ) advantages (a truncated episode
bootstraps from its final observation, a terminated one does not); ``update_epochs`` passes of
``num_minibatches`` shuffled minibatches, each one Adam step on

    loss = clipped surrogate + vf_coef * (clipped) value loss - ent_coef * entropy

with advantages normalised per minibatch (``normalize_advantages``), global-norm clipping and a
linear learning-rate decay over ``lr_decay_steps`` gradient steps. Multi-agent envs: every agent is
an independent actor with its own head (one shared trunk); agents that already finished inside a
running episode are masked out of every loss.

PPO was used in medical imaging for e.g. view/slice selection and classification agents; here it is
offered for every jaxmed environment next to the DQN family (:mod:`jaxmed.agents.dqn`).
"""

from __future__ import annotations

import dataclasses

import jax
from flax import struct

from jaxmed.agents import core
from jaxmed.agents import hparams as hparams_lib
from jaxmed.agents.actor_critic_train import ActorCriticConfig, RunnerState, make_actor_critic_train
from jaxmed.agents.actor_critic_train import Hparams as ActorCriticHparams
from jaxmed.config import bounded
from jaxmed.errors import ConfigError

__all__ = ["HPARAM_FIELDS", "PPOConfig", "Hparams", "RunnerState", "default_hparams", "make_parallel_train",
           "make_train", "stack_hparams"]


@dataclasses.dataclass(frozen=True)
class PPOConfig(ActorCriticConfig):
    """PPO hyperparameters: the fields of :class:`jaxmed.agents.actor_critic_train.ActorCriticConfig` and

    Attributes:
      update_epochs: passes over each rollout.
      num_minibatches: minibatches per pass; must divide ``n_envs * num_steps``.
      clip_eps: ratio clip ε of the surrogate.
      clip_value: clip the value update to ± ``clip_eps`` around the rollout's value (PPO2 style).
    """

    update_epochs: int = bounded(4, 1)
    num_minibatches: int = bounded(4, 1)
    clip_eps: float = bounded(0.2, 0.0, low_open=True)
    clip_value: bool = True

    def __post_init__(self):
        super().__post_init__()
        if (self.n_envs * self.num_steps) % self.num_minibatches:
            raise ConfigError(f"PPOConfig.num_minibatches ({self.num_minibatches}) must divide n_envs * num_steps "
                              f"({self.n_envs} * {self.num_steps} = {self.n_envs * self.num_steps})")

    @property
    def value_clip_eps(self) -> float | None:
        """The value-loss clip (``clip_eps`` when ``clip_value``, else ``None``)."""
        return self.clip_eps if self.clip_value else None


@struct.dataclass
class Hparams(ActorCriticHparams):
    """PPO's hyperparameter leaves: A2C's (:class:`jaxmed.agents.actor_critic_train.Hparams`) and the
    ratio clip ``clip_eps`` of the surrogate (also the value-loss clip with ``clip_value``)."""

    clip_eps: jax.Array


#: PPOConfig fields that are leaves of the runner state (vmappable inside one compiled program).
HPARAM_FIELDS, default_hparams, stack_hparams = hparams_lib.learner_hparams(Hparams)


def make_train(config: PPOConfig, env, env_params, network, axis_name: str | None = None) -> core.TrainFns:
    """PPO training functions ``core.TrainFns(init(key, bank, hparams=None) -> RunnerState, run_chunk(rs, bank)
    -> (rs, metrics), network, optimizer)`` for ``env`` and an actor-critic ``network``
    (:func:`jaxmed.networks.actor_critic_from_config`). With ``axis_name`` the functions must run under
    ``jax.pmap`` / ``shard_map`` with that axis (gradients and metrics ``lax.pmean``-ed).

    ``metrics``: ``reward`` (mean per agent-step), ``episodes``, every ``final_*`` env metric (mean over
    ended episodes, NaN if none ended), ``loss``, ``policy_loss``, ``value_loss``, ``entropy``,
    ``approx_kl``, ``clip_frac`` (means over the chunk's minibatches), ``steps`` (vector env steps),
    ``updates`` (gradient steps).

    ``hparams``: an :class:`Hparams` (:func:`default_hparams` of the config when ``None``), kept in the
    runner state and read by every update; vmap ``init`` over stacked ones (:func:`stack_hparams`) to
    train several settings in one program. ``optimizer`` is Adam's direction (no learning rate).
    """
    if not isinstance(config, PPOConfig):
        raise ConfigError(f"ppo.make_train needs a PPOConfig, got {type(config).__name__}")
    return make_actor_critic_train(config, env, env_params, network, axis_name, default_hparams)


def make_parallel_train(config: PPOConfig, env, env_params, network, n_devices: int | None = None, axis_name: str = "devices"):
    """:func:`make_train` data-parallel over ``n_devices`` local devices with ``jax.pmap``: ``(init, run_chunk)``
    as :func:`jaxmed.agents.dqn.make_parallel_train`."""
    return core.make_parallel(make_train, config, env, env_params, network, n_devices, axis_name)
