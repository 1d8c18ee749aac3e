"""Group-relative policy optimisation (GRPO) for episodic image tasks: no critic, advantages relative
to a group of episodes from the same start.

GRPO (Shao et al. 2024, "DeepSeekMath", and DeepSeek-R1, 2025) replaces PPO's learned value baseline
by the statistics of a *group* of ``G`` outcomes sampled for the same prompt. Here a "prompt" is a
start state: ``n_envs / G`` start states (volume and agent positions) are drawn with ``env.reset``
and each is repeated ``G`` times; every copy runs one episode under the sampled policy (no
auto-reset, up to ``max_steps`` steps; an env freezes once its episode ended; an episode still
running at ``max_steps`` is cut there and keeps its accumulated reward). Per agent:

* return ``R`` = the summed (shaped) reward of the episode, or with ``terminal_reward`` set (e.g.
  ``"final_distance_mm"``) ``terminal_reward_scale * metric`` at the episode's end (``-distance``
  with the default scale -1; use +1 for a metric to maximise, e.g. ``"final_iou"``). An episode cut
  at ``max_steps`` takes the metric from ``env.eval_metrics`` of its last state;
* advantage ``Â = (R - mean_G R) / (std_G R + eps)`` (population std; ``scale_by_std=False`` only
  centres), the same for every step of the episode;
* loss over the live steps of the batch (mean over steps, not per episode first):
  ``-mean(min(ρ Â, clip(ρ, 1-ε, 1+ε) Â)) + kl_coef * KL(π || π_ref) - ent_coef * H(π)`` with
  ``ρ = π(a|s) / π_old(a|s)`` (``π_old`` = the sampling policy), ``update_epochs`` passes of
  ``num_minibatches`` shuffled minibatches of the ``max_steps * n_envs`` step samples. The KL term is
  the exact categorical KL per visited state to the *reference policy*: the parameters at the start
  of the current ``run_chunk`` call (a frozen copy for ``updates_per_chunk`` iterations, refreshed
  every chunk; no extra state). ``kl_coef = 0`` (default) skips it (a ``lax.cond``: under a vmapped
  population with some ``kl_coef > 0`` every member computes it, multiplied by its own coefficient).

Hyperparameter leaves (:class:`Hparams` in the runner state, :mod:`jaxmed.agents.hparams`):
``learning_rate``, ``lr_final_fraction``, ``max_grad_norm``, ``clip_eps``, ``kl_coef``, ``ent_coef``.

When it helps: when the task's reward is *sparse and terminal* — the final distance to a landmark,
the final IoU of a box, the final registration error — a critic has to learn the value of every
intermediate state from a single number at the end, which is slow and noisy; the group baseline
needs no learning, compares outcomes on the *same* image from the *same* start (removing the large
variance between volumes and starts) and credits the whole trajectory with how much better than
its siblings it ended. With ``terminal_reward`` it optimises the evaluation metric itself rather
than a shaped proxy. It costs ``G`` episodes per start (all run in parallel here) and full episodes
before any update; with dense, well-shaped rewards (the landmark distance-decrease reward) PPO's
per-step GAE credit assignment usually learns from fewer env steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxmed.agents import core
from jaxmed.agents import hparams as hparams_lib
from jaxmed.agents import policy_gradient as pgl
from jaxmed.config import bounded
from jaxmed.errors import ConfigError

__all__ = ["HPARAM_FIELDS", "GRPOConfig", "Hparams", "RunnerState", "default_hparams", "make_parallel_train",
           "make_train", "stack_hparams"]


@dataclasses.dataclass(frozen=True)
class GRPOConfig(pgl.PolicyGradientConfig):
    """GRPO hyperparameters (module docstring): those of every policy-gradient learner
    (:class:`jaxmed.agents.policy_gradient.PolicyGradientConfig`; ``n_envs / group_size`` groups per
    device, no entropy bonus by default) and

    Attributes:
      group_size: ``G``, episodes per start state.
      max_steps: steps scanned per episode (set it to the env's ``max_steps``; longer episodes are cut).
      update_epochs, num_minibatches: passes over each rollout and minibatches per pass
        (``num_minibatches`` must divide ``max_steps * n_envs``).
      clip_eps: ratio clip ε.
      kl_coef: weight of the KL penalty to the reference policy (0: none).
      scale_by_std: divide the centred returns by the group std.
      adv_eps: ``eps`` of the advantage denominator.
      terminal_reward: ``""`` (summed reward) or the name of an ``info["final_<metric>"]`` key whose
        value at the episode's end, times ``terminal_reward_scale``, is the return.
      terminal_reward_scale: -1 for an error to minimise (distance), +1 for a score (IoU).
    """

    n_envs: int = 64
    group_size: int = bounded(8, 2)  # advantages are relative to the group
    max_steps: int = bounded(200, 1)
    update_epochs: int = bounded(2, 1)
    num_minibatches: int = bounded(4, 1)
    clip_eps: float = bounded(0.2, 0.0, low_open=True)
    kl_coef: float = bounded(0.0, 0.0)
    ent_coef: float = 0.0
    scale_by_std: bool = True
    adv_eps: float = bounded(1e-6, 0.0, low_open=True)
    terminal_reward: str = ""
    terminal_reward_scale: float = -1.0

    def __post_init__(self):
        super().__post_init__()
        if self.n_envs % self.group_size:
            raise ConfigError(f"GRPOConfig.n_envs ({self.n_envs}) must be a multiple of group_size ({self.group_size})")
        if (self.n_envs * self.max_steps) % self.num_minibatches:
            raise ConfigError(f"GRPOConfig.num_minibatches ({self.num_minibatches}) must divide n_envs * max_steps "
                              f"({self.n_envs} * {self.max_steps} = {self.n_envs * self.max_steps})")
        if self.terminal_reward and not self.terminal_reward.startswith(core.FINAL_PREFIX):
            raise ConfigError(f"GRPOConfig.terminal_reward must name an info key 'final_<metric>' (e.g. "
                              f"'final_distance_mm'), got {self.terminal_reward!r}")

    @property
    def rollout_steps(self) -> int:
        """Steps scanned per episode (frozen steps after an episode's end included)."""
        return self.max_steps


@struct.dataclass
class Hparams:
    """The numeric GRPO hyperparameters carried in the runner state (scalars; a leading population axis
    when vmapped); same meaning as the :class:`GRPOConfig` fields of the same names."""

    learning_rate: jax.Array
    lr_final_fraction: jax.Array  # of learning_rate, reached after the config's lr_decay_steps
    max_grad_norm: jax.Array
    clip_eps: jax.Array
    kl_coef: jax.Array
    ent_coef: jax.Array


#: GRPOConfig fields that are leaves of the runner state (vmappable inside one compiled program).
HPARAM_FIELDS, default_hparams, stack_hparams = hparams_lib.learner_hparams(Hparams)


@struct.dataclass
class RunnerState:
    """What the GRPO loop carries between chunks: ``params``, ``opt_state``, ``key``, ``steps`` (vector
    env steps scanned), ``updates`` (gradient steps) and ``hparams`` (:class:`Hparams`). No env state:
    every iteration starts new groups."""

    params: Any
    opt_state: Any
    key: jax.Array
    steps: jax.Array
    updates: jax.Array
    hparams: Hparams


def make_train(config: GRPOConfig, env, env_params, network, axis_name: str | None = None) -> core.TrainFns:
    """GRPO training functions ``TrainFns(init, run_chunk, network, optimizer)``, the interface of
    :func:`jaxmed.agents.ppo.make_train`. ``network`` is an actor-critic whose value output is ignored
    (build it policy-only with ``actor_critic_from_config(cfg, critic=False)``).

    ``metrics``: ``reward`` (mean per agent-step over live steps), ``return`` (mean episode return used
    for the advantages), ``episodes`` (episodes run), ``episodes_ended`` (ended by the env before the
    horizon), ``episode_length``, every ``final_*`` env metric (mean over episodes), ``loss``,
    ``policy_loss``, ``kl``, ``entropy``, ``approx_kl``, ``clip_frac``, ``steps``, ``updates``.
    """
    if not isinstance(config, GRPOConfig):
        raise ConfigError(f"grpo.make_train needs a GRPOConfig, got {type(config).__name__}")
    optimizer = core.make_optimizer(config)
    apply_gradients = core.make_apply_gradients(config, optimizer)
    n_envs = config.n_envs
    rollout = pgl.make_group_rollout(env, env_params, network, n_envs, config.group_size, config.max_steps)
    v_reset = jax.vmap(env.reset, in_axes=(0, None, None))

    def init(key, bank, hparams: Hparams | None = None) -> RunnerState:
        hparams = default_hparams(config) if hparams is None else hparams
        env.check_bank(bank)
        net_key, env_key = jax.random.split(key)
        obs, _ = v_reset(jax.random.split(env_key, 1), env_params, bank)
        params = core.init_network(network, net_key, obs, env)
        return RunnerState(params=params, opt_state=optimizer.init(params), key=core.device_key(jax.random.fold_in(key, 1), axis_name),
                           steps=jnp.zeros((), jnp.int32), updates=jnp.zeros((), jnp.int32), hparams=hparams)

    def episode_return(outcome):
        if not config.terminal_reward:
            return outcome["return"]
        if config.terminal_reward not in outcome:
            names = sorted(k for k in outcome if k.startswith(core.FINAL_PREFIX))
            raise ConfigError(f"GRPOConfig.terminal_reward {config.terminal_reward!r}: the env {env.name} reports "
                              f"{', '.join(names) or 'no final_* metrics'}")
        return config.terminal_reward_scale * outcome[config.terminal_reward]

    def loss_fn(params, ref_params, obs, mb, hp):
        logits, _ = pgl.policy_value(network, params, obs)
        mask = mb["valid"]
        logp = pgl.log_prob(logits, mb["action"])
        pg, stats = pgl.policy_loss(logp, mb["logp"], mb["advantage"], mask, hp.clip_eps)
        ent = pgl.masked_mean(pgl.entropy(logits), mask)

        def kl_to_reference():
            ref_logits, _ = pgl.policy_value(network, jax.lax.stop_gradient(ref_params), obs)
            return pgl.masked_mean(pgl.categorical_kl(logits, ref_logits), mask)

        kl = jax.lax.cond(hp.kl_coef > 0, kl_to_reference, lambda: jnp.zeros((), jnp.float32))
        loss = pg - hp.ent_coef * ent + hp.kl_coef * kl
        return loss, {"loss": loss, "policy_loss": pg, "kl": kl, "entropy": ent, **stats}

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def iteration(rs: RunnerState, ref_params, bank):
        key, k_roll, k_upd = jax.random.split(rs.key, 3)
        traj, outcome = rollout(rs.params, k_roll, bank)
        ret = episode_return(outcome)
        ret = jnp.where(jnp.isfinite(ret), ret, 0.0)
        advantage = pgl.group_advantages(ret, config.group_size, config.adv_eps, config.scale_by_std)  # (N, A)
        batch = dict(traj, advantage=jnp.broadcast_to(advantage[None], traj["logp"].shape))

        def minibatch_step(carry, mb):
            params, opt_state, count = carry
            (_, aux), grads = grad_fn(params, ref_params, core.render_batch(env, mb["obs_state"], bank), mb, rs.hparams)
            grads = core.pmean_if(grads, axis_name)
            params, opt_state = apply_gradients(params, opt_state, grads, rs.hparams, count)
            return (params, opt_state, count + 1), aux

        (params, opt_state, _), aux = pgl.epochs_of_minibatches(
            k_upd, pgl.flatten_time(batch), config.update_epochs, config.num_minibatches, minibatch_step,
            (rs.params, rs.opt_state, rs.updates))
        rs = rs.replace(params=params, opt_state=opt_state, key=key, steps=rs.steps + config.max_steps,
                        updates=rs.updates + config.update_epochs * config.num_minibatches)
        valid = traj["valid"]
        means = {k: v.mean() for k, v in aux.items()}
        means["return"] = ret.mean()
        means["episode_length"] = outcome["length"].mean()
        sums = {"episodes": jnp.asarray(n_envs, jnp.float32), "episodes_ended": outcome["ended"].sum(),
                "reward/sum": outcome["return"].sum(), "reward/count": valid.sum()}
        sums.update(core.metric_sums({k: v for k, v in outcome.items() if k.startswith(core.FINAL_PREFIX)}, jnp.ones((n_envs,), bool)))
        return rs, (sums, means)

    def run_chunk(rs: RunnerState, bank):
        env.check_bank(bank)
        ref_params = rs.params  # the reference policy of the KL penalty: frozen for this chunk
        rs, (sums, means) = jax.lax.scan(lambda r, _: iteration(r, ref_params, bank), rs, None, length=config.updates_per_chunk)
        metrics = core.reduce_chunk_metrics(jax.tree.map(lambda x: x.sum(0), sums), jax.tree.map(lambda x: x.mean(0), means), axis_name)
        metrics.update(core.chunk_counters(rs.steps, rs.updates, axis_name))
        return rs, metrics

    return core.TrainFns(init=init, run_chunk=run_chunk, network=network, optimizer=optimizer)


def make_parallel_train(config: GRPOConfig, env, env_params, network, n_devices: int | None = None, axis_name: str = "devices"):
    """:func:`make_train` data-parallel over ``n_devices`` local devices with ``jax.pmap`` (as DQN's)."""
    return core.make_parallel(make_train, config, env, env_params, network, n_devices, axis_name)
