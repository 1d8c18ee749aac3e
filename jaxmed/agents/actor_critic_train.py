"""The training program shared by A2C and PPO (PureJaxRL style): rollout, GAE, minibatch epochs.

One *iteration* = a ``lax.scan`` rollout of ``num_steps`` steps of ``n_envs`` vmapped, auto-resetting
environments under the sampled policy (:func:`jaxmed.agents.policy_gradient.make_collect`, GAE(λ) with
truncation bootstrapped from the final observation), then ``update_epochs`` passes over the
``num_steps * n_envs`` samples in ``num_minibatches`` shuffled minibatches, one Adam step each (global
norm clipping, linear learning-rate annealing). ``run_chunk`` scans ``updates_per_chunk`` iterations
under ``jit``; the host only logs between chunks.

A2C and PPO differ only in the loss and the number of passes: A2C takes one gradient step per
rollout with the vanilla policy gradient and an unclipped value loss; PPO takes several with the
clipped surrogate and (optionally) the clipped value loss (:mod:`jaxmed.agents.policy_gradient`). Their
configs extend :class:`ActorCriticConfig` (the fields both have, the optimiser's among them) and
provide ``update_epochs``, ``num_minibatches``, ``clip_eps`` (``None``: A2C) and ``value_clip_eps``
(``None``: unclipped).

Hyperparameter leaves: the numbers the update uses (``learning_rate``, ``lr_final_fraction``,
``max_grad_norm``, ``gamma``, ``gae_lambda``, ``vf_coef``, ``ent_coef`` and PPO's ``clip_eps``, also the
value clip when ``clip_value``) are read from ``RunnerState.hparams`` (the learner's ``Hparams``, see
:mod:`jaxmed.agents.hparams`), so ``jax.vmap`` over ``init(key, bank, hparams)`` trains several settings
in one program; ``init(key, bank)`` takes the config's values.

Data parallelism: with ``axis_name`` the functions run under ``jax.pmap`` / ``shard_map``: each
device acts in its own environments (keys folded with the device index), gradients are
``lax.pmean``-ed before every Adam step, so parameters and optimiser state stay identical.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from jaxmed.agents import core
from jaxmed.agents.core import (
    TrainFns,
    device_key,
    make_apply_gradients,
    make_optimizer,
    pmean_if,
    reduce_chunk_metrics,
    render_batch,
)
from jaxmed.agents.policy_gradient import (
    PolicyGradientConfig,
    entropy,
    epochs_of_minibatches,
    flatten_time,
    log_prob,
    make_collect,
    normalize,
    policy_loss,
    policy_value,
    value_loss,
)
from jaxmed.config import bounded


@dataclasses.dataclass(frozen=True)
class ActorCriticConfig(PolicyGradientConfig):
    """The hyperparameters A2C and PPO share: those of every policy-gradient learner
    (:class:`jaxmed.agents.policy_gradient.PolicyGradientConfig`: ``n_envs``, ``updates_per_chunk``,
    ``ent_coef``, the optimiser's) and the critic's; :class:`jaxmed.agents.a2c.A2CConfig` and
    :class:`jaxmed.agents.ppo.PPOConfig` extend it.

    Attributes:
      num_steps: rollout length ``T`` (vector steps) per iteration.
      gamma, gae_lambda: discount and GAE λ (1.0: n-step returns).
      vf_coef: weight of the value loss.
      normalize_advantages: normalise the advantages (mean 0, std 1 over live agents) of each minibatch.
    """

    num_steps: int = bounded(128, 1)
    gamma: float = bounded(0.99, 0.0, 1.0, low_open=True)
    gae_lambda: float = bounded(0.95, 0.0, 1.0)
    vf_coef: float = bounded(0.5, 0.0)
    normalize_advantages: bool = True

    @property
    def rollout_steps(self) -> int:
        return self.num_steps


@struct.dataclass
class Hparams:
    """The numeric hyperparameters of A2C (and, with ``clip_eps`` added, PPO) carried in the runner
    state: scalars, or ``(P,)`` for a vmapped population; same meaning as the config fields of the same
    names (``lr_final_fraction``: of ``learning_rate``, reached after the static ``lr_decay_steps``)."""

    learning_rate: jax.Array
    lr_final_fraction: jax.Array
    max_grad_norm: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    vf_coef: jax.Array
    ent_coef: jax.Array


@struct.dataclass
class RunnerState:
    """Everything the A2C / PPO loop carries (a pytree; per device under pmap, per seed under vmap).

    Attributes: ``params``, ``opt_state``; ``env_state`` (``N`` env states) and ``obs`` ``(N, A, ...)``,
    the current observations; ``key``; ``steps``: vector env steps taken (one step of all ``N`` envs);
    ``updates``: gradient steps taken; ``hparams``: the learner's hyperparameter leaves (scalars).
    """

    params: Any
    opt_state: Any
    env_state: Any
    obs: jax.Array
    key: jax.Array
    steps: jax.Array
    updates: jax.Array
    hparams: Any


def make_actor_critic_train(config, env, env_params, network, axis_name: str | None, default_hparams: Callable) -> TrainFns:
    """Build ``TrainFns(init(key, bank, hparams=None), run_chunk, network, optimizer)`` for A2C / PPO
    (module docstring); ``default_hparams(config)`` gives the learner's ``Hparams`` of the config."""
    optimizer = make_optimizer(config)
    apply_gradients = make_apply_gradients(config, optimizer)
    n_envs = config.n_envs
    v_reset = jax.vmap(env.reset, in_axes=(0, None, None))
    collect = make_collect(env, env_params, network, n_envs, config.num_steps, config.gamma, config.gae_lambda)

    def init(key, bank, hparams=None) -> RunnerState:
        hparams = default_hparams(config) if hparams is None else hparams
        net_key, env_key = jax.random.split(key)  # the network key is shared by every device
        obs, env_state = v_reset(jax.random.split(device_key(env_key, axis_name), n_envs), env_params, bank)
        params = core.init_network(network, net_key, obs[:1], env)
        return RunnerState(
            params=params, opt_state=optimizer.init(params), env_state=env_state, obs=obs,
            key=device_key(jax.random.fold_in(key, 1), axis_name),
            steps=jnp.zeros((), jnp.int32), updates=jnp.zeros((), jnp.int32), hparams=hparams,
        )

    def loss_fn(params, obs, mb, hp):
        logits, value = policy_value(network, params, obs)
        mask = mb["valid"]
        advantage = mb["advantage"]
        if config.normalize_advantages:
            advantage = normalize(advantage, mask)
        logp = log_prob(logits, mb["action"])
        pg, stats = policy_loss(logp, mb["logp"], advantage, mask, None if config.clip_eps is None else hp.clip_eps)
        vl = value_loss(value, mb["value"], mb["target"], mask, None if config.value_clip_eps is None else hp.clip_eps)
        ent = jnp.sum(entropy(logits) * mask) / jnp.maximum(mask.sum(), 1)
        loss = pg + hp.vf_coef * vl - hp.ent_coef * ent
        return loss, {"loss": loss, "policy_loss": pg, "value_loss": vl, "entropy": ent, **stats}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def iteration(rs: RunnerState, bank):
        key, k_roll, k_upd = jax.random.split(rs.key, 3)
        hp = rs.hparams
        batch, env_state, obs, sums, reward_mean = collect(rs.params, rs.env_state, rs.obs, k_roll, bank, hp.gamma, hp.gae_lambda)

        def minibatch_step(carry, mb):
            params, opt_state, count = carry
            (_, aux), grads = grad_fn(params, render_batch(env, mb["obs_state"], bank), mb, hp)
            grads = pmean_if(grads, axis_name)
            params, opt_state = apply_gradients(params, opt_state, grads, hp, count)
            return (params, opt_state, count + 1), aux

        (params, opt_state, _), aux = epochs_of_minibatches(
            k_upd, flatten_time(batch), config.update_epochs, config.num_minibatches, minibatch_step,
            (rs.params, rs.opt_state, rs.updates))
        rs = rs.replace(params=params, opt_state=opt_state, env_state=env_state, obs=obs, key=key,
                        steps=rs.steps + config.num_steps, updates=rs.updates + config.update_epochs * config.num_minibatches)
        means = {k: v.mean() for k, v in aux.items()}
        means["reward"] = reward_mean
        return rs, (sums, means)

    def run_chunk(rs: RunnerState, bank):
        env.check_bank(bank)
        rs, (sums, means) = jax.lax.scan(lambda r, _: iteration(r, bank), rs, None, length=config.updates_per_chunk)
        metrics = reduce_chunk_metrics(jax.tree.map(lambda x: x.sum(0), sums), jax.tree.map(lambda x: x.mean(0), means), axis_name)
        metrics.update(core.chunk_counters(rs.steps, rs.updates, axis_name))
        return rs, metrics

    return TrainFns(init=init, run_chunk=run_chunk, network=network, optimizer=optimizer)
