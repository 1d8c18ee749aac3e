"""The policy-gradient family's pieces (A2C, PPO, GRPO): categorical policies, rollouts, GAE(λ),
group-relative advantages, minibatching and the surrogate / value losses. What every learner shares
(optimiser, metrics, batch rendering, devices, config checks) is in :mod:`jaxmed.agents.core`.

Conventions (``T`` time steps, ``N`` environments, ``A`` agents per environment, ``n`` actions):

* A network maps observations ``(..., A, k, X, Y, Z)`` to ``(logits (..., A, n), value (..., A))``
  (:mod:`jaxmed.networks.actor_critic`); actions are ``(N, A)`` int32, one categorical draw per agent.
* Rewards are per agent ``(N, A)`` (a scalar reward of a single-agent env is reshaped to ``(N, 1)``).
* Agent liveness: an env state with a ``done`` field ``(A,)`` marks agents already finished inside a
  running episode; their steps are *invalid* (masked out of every loss). Envs without it: all live.
* Terminal vs truncated: an agent's step is *terminal* (no bootstrap) when the env reports
  ``terminated`` or the agent became done in that step (``info["final_state"].done``); an episode that
  ends only by ``truncated`` bootstraps from the value of its final observation
  ``env.get_obs(info["final_state"], params, bank)``, not from the reset observation.
* Rollouts store observation *states* (``env.obs_state``), never pixels; the update re-renders them
  with ``env.render`` (as the DQN replay does): a two-agent landmark rollout step is about 70 bytes
  per env (4096 envs x 128 steps: 37 MB) instead of 27 KB of uint8 crops (15³, 2 frames, 2 agents).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from jaxmed.agents import core
from jaxmed.agents.core import FINAL_PREFIX, episode_sums, final_metric_names, observe
from jaxmed.config import bounded
from jaxmed.errors import ConfigError

# ------------------------------------------------------------------ configs


class ChunkCounts:
    """``env_steps_per_chunk`` and ``grad_steps_per_chunk`` of a policy-gradient learner config with
    ``n_envs``, ``updates_per_chunk``, ``update_epochs``, ``num_minibatches`` and the rollout length
    ``rollout_steps`` (vector steps per iteration)."""

    @property
    def env_steps_per_chunk(self) -> int:
        """Single-env steps one ``run_chunk`` call takes (scans) per device."""
        return self.updates_per_chunk * self.rollout_steps * self.n_envs

    @property
    def grad_steps_per_chunk(self) -> int:
        """Gradient (Adam) steps one ``run_chunk`` call takes."""
        return self.updates_per_chunk * self.update_epochs * self.num_minibatches


@dataclasses.dataclass(frozen=True)
class PolicyGradientConfig(core.OptimizerConfig, ChunkCounts):
    """The hyperparameters every policy-gradient learner has (the network and environment are
    configured separately); A2C's and PPO's configs (through
    :class:`jaxmed.agents.actor_critic_train.ActorCriticConfig`) and GRPO's extend it.

    Attributes:
      n_envs: environments per device.
      updates_per_chunk: iterations (rollout + update) per ``run_chunk`` call.
      ent_coef: weight of the entropy bonus.
      learning_rate, adam_eps: Adam.
      lr_decay_steps: linear decay of the learning rate to ``lr_final_fraction * learning_rate`` over
        this many gradient steps (0: constant); e.g. ``chunks * grad_steps_per_chunk`` anneals over a run.
      max_grad_norm: global-norm gradient clipping.
    """

    n_envs: int = bounded(16, 1)
    updates_per_chunk: int = bounded(1, 1)
    ent_coef: float = bounded(0.01, 0.0)


# ------------------------------------------------------------------ acting


def policy_value(network, params, obs):
    """``(logits (..., A, n) float32, value (..., A) float32)`` of observations ``(..., A, ...)``."""
    logits, value = network.apply(params, obs)
    return logits.astype(jnp.float32), value.astype(jnp.float32)


def log_prob(logits, action):
    """Log-probability ``(...)`` of integer ``action`` ``(...)`` under categorical ``logits`` ``(..., n)``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy(logits):
    """Entropy ``(...)`` (nats) of categorical ``logits`` ``(..., n)``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def categorical_kl(logits_p, logits_q):
    """``KL(p || q)`` ``(...)`` (nats) between categorical distributions given by logits ``(..., n)``."""
    logp = jax.nn.log_softmax(logits_p, axis=-1)
    logq = jax.nn.log_softmax(logits_q, axis=-1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


def sample_actions(key, logits):
    """``(action (..., A) int32, log-prob (..., A))``: one categorical draw per agent."""
    action = jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
    return action, log_prob(logits, action)


def mode_action(network, params, obs) -> jax.Array:
    """``(..., A)`` int32: the most probable action of each agent's policy (argmax of the logits of an
    actor-critic ``network``; see :func:`jaxmed.agents.learners.policy_action` for any learner)."""
    logits, _ = network.apply(params, obs)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def agent_live(state, n_envs: int, n_agents: int) -> jax.Array:
    """``(N, A)`` bool: agents still acting in a batch of ``N`` env states (``~state.done`` when the
    state has a ``done`` field, per agent ``(N, A)`` or per env ``(N,)``; else every agent is live)."""
    done = getattr(state, "done", None)
    if done is None:
        return jnp.ones((n_envs, n_agents), bool)
    return ~per_agent(jnp.asarray(done, bool), n_envs, n_agents)


def per_agent(x, n: int, n_agents: int) -> jax.Array:
    """Reshape a per-env quantity ``(n,)`` or ``(n, A)`` to ``(n, A)`` (broadcasting a scalar per env)."""
    x = jnp.asarray(x).reshape(n, -1)
    return jnp.broadcast_to(x, (n, n_agents))


# ------------------------------------------------------------------ rollouts


def make_collect(env, env_params, network, n_envs: int, num_steps: int, gamma: float = 0.99, gae_lambda: float = 0.95):
    """Build ``collect(params, env_state, obs, key, bank, gamma=gamma, gae_lambda=gae_lambda) -> (batch,
    env_state, obs, sums, reward_mean)``: ``num_steps`` steps of ``n_envs`` auto-resetting environments
    (``lax.scan``) under the sampled policy, then GAE(λ) (:func:`gae`); ``gamma`` and ``gae_lambda`` may
    be given per call as traced scalars (hyperparameter leaves of a runner state).

    ``batch`` leaves are time-major ``(T, N, ...)``: ``obs_state`` (of the acting state), ``action``,
    ``logp``, ``value``, ``advantage``, ``target`` (λ-return) and ``valid`` (agent live), all ``(T, N, A)``
    besides ``obs_state``. ``sums`` are :func:`jaxmed.agents.core.episode_sums` totals over the rollout. A truncated
    episode bootstraps from its final observation's value (computed only in steps where some env
    truncated); a terminated one (or an agent that finished) does not bootstrap.
    """
    n_agents = env.n_agents
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))
    v_obs_state = jax.vmap(env.obs_state)

    default_gamma, default_lambda = gamma, gae_lambda

    def collect(params, env_state, obs, key, bank, gamma=default_gamma, gae_lambda=default_lambda):
        def step(carry, key):
            env_state, obs = carry
            k_act, k_env = jax.random.split(key)
            logits, value = policy_value(network, params, obs)
            action, logp = sample_actions(k_act, logits)
            live = agent_live(env_state, n_envs, n_agents)
            obs_next, state_next, reward, terminated, truncated, info = v_step(
                jax.random.split(k_env, n_envs), env_state, action, env_params, bank)
            final = info["final_state"]
            ended = terminated | truncated
            terminal = ~agent_live(final, n_envs, n_agents) | terminated[:, None]

            def final_values():
                return policy_value(network, params, observe(env, final, env_params, bank))[1]

            final_value = jax.lax.cond(truncated.any(), final_values, lambda: jnp.zeros((n_envs, n_agents), jnp.float32))
            reward = per_agent(reward, n_envs, n_agents).astype(jnp.float32)
            out = {
                "obs_state": v_obs_state(env_state), "action": action, "logp": logp, "value": value, "reward": reward,
                "valid": live, "terminal": terminal, "ended": ended, "final_value": final_value,
            }
            return (state_next, obs_next), (out, episode_sums(info, ended))

        (env_state, obs), (traj, sums) = jax.lax.scan(step, (env_state, obs), jax.random.split(key, num_steps))
        _, last_value = policy_value(network, params, obs)
        next_value = jnp.concatenate([traj["value"][1:], last_value[None]], axis=0)
        ended = jnp.broadcast_to(traj["ended"][..., None], traj["terminal"].shape)
        next_value = jnp.where(ended, traj["final_value"], next_value)
        advantage, target = gae(traj["reward"], traj["value"], next_value, traj["terminal"], ended, gamma, gae_lambda)
        batch = {k: traj[k] for k in ("obs_state", "action", "logp", "value", "valid")}
        batch.update(advantage=advantage, target=target)
        reward_mean = traj["reward"].mean()
        return batch, env_state, obs, jax.tree.map(lambda x: x.sum(0), sums), reward_mean

    return collect


def make_group_rollout(env, env_params, network, n_envs: int, group_size: int, horizon: int):
    """Build ``rollout(params, key, bank) -> (traj, outcome)`` for group-relative learning (GRPO).

    ``n_envs // group_size`` start states are drawn with ``env.reset`` and each is repeated
    ``group_size`` times (same volume, same start), then every env runs one episode under the sampled
    policy, without auto-reset, for ``horizon`` steps (``lax.scan``); an env freezes once its episode
    ended (``terminated | truncated``); an episode still running at the horizon counts as truncated
    there.

    Returns:
      traj: time-major ``(T, N, ...)``: ``obs_state``, ``action``, ``logp``, ``valid`` (agent live and
        episode not yet ended), each ``(T, N, A)`` besides ``obs_state``.
      outcome: ``return`` ``(N, A)`` summed reward; ``ended`` ``(N,)`` the env ended the episode itself;
        ``length`` ``(N,)`` steps taken; and every ``final_<metric>`` ``(N, A)``: the env's value where
        the episode ended, and for episodes cut at the horizon ``env.eval_metrics(state)["<metric>"]``
        when the env defines it (NaN otherwise).
    """
    n_agents = env.n_agents
    if n_envs % group_size:
        raise ConfigError(f"group rollout: n_envs {n_envs} is not a multiple of group_size {group_size}")
    n_groups = n_envs // group_size
    v_reset = jax.vmap(env.reset, in_axes=(0, None, None))
    v_step = jax.vmap(env.step_env, in_axes=(0, 0, 0, None, None))
    v_obs_state = jax.vmap(env.obs_state)

    def rollout(params, key, bank):
        k_reset, k_steps = jax.random.split(key)
        _, starts = v_reset(jax.random.split(k_reset, n_groups), env_params, bank)
        state = jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), starts)
        names = final_metric_names(jax.eval_shape(
            lambda s: v_step(jax.random.split(k_steps, n_envs), s, jnp.zeros((n_envs, n_agents), jnp.int32),
                             env_params, bank)[4], state))
        nan = jnp.full((n_envs, n_agents), jnp.nan, jnp.float32)

        def step(carry, key):
            state, finished, total, length, finals = carry
            k_act, k_env = jax.random.split(key)
            logits, _ = policy_value(network, params, observe(env, state, env_params, bank))
            action, logp = sample_actions(k_act, logits)
            live = agent_live(state, n_envs, n_agents) & ~finished[:, None]
            new, reward, terminated, truncated, info = v_step(jax.random.split(k_env, n_envs), state, action, env_params, bank)
            ending = ~finished & (terminated | truncated)
            out = {"obs_state": v_obs_state(state), "action": action, "logp": logp, "valid": live}
            state = jax.tree.map(lambda old, nw: jnp.where(finished.reshape((-1,) + (1,) * (nw.ndim - 1)), old, nw), state, new)
            total = total + jnp.where(live, per_agent(reward, n_envs, n_agents), 0.0)
            finals = {k: jnp.where(ending[:, None], per_agent(info[k], n_envs, n_agents).astype(jnp.float32), finals[k])
                      for k in names}
            length = length + (~finished).astype(jnp.int32)
            finished = finished | terminated | truncated
            return (state, finished, total, length, finals), out

        init = (state, jnp.zeros((n_envs,), bool), jnp.zeros((n_envs, n_agents), jnp.float32),
                jnp.zeros((n_envs,), jnp.int32), {k: nan for k in names})
        (state, finished, total, length, finals), traj = jax.lax.scan(step, init, jax.random.split(k_steps, horizon))
        cut_metrics = _eval_metrics_or_none(env, state, env_params, bank)
        for k in names:
            at_cut = cut_metrics.get(k[len(FINAL_PREFIX):]) if cut_metrics else None
            if at_cut is not None:
                finals[k] = jnp.where(finished[:, None], finals[k], per_agent(at_cut, n_envs, n_agents).astype(jnp.float32))
        outcome = {"return": total, "ended": finished, "length": length, **finals}
        return traj, outcome

    return rollout


def _eval_metrics_or_none(env, state, env_params, bank):
    """``env.eval_metrics`` of a batch of states, or ``None`` when the env does not define it."""
    try:
        return jax.vmap(env.eval_metrics, in_axes=(0, None, None))(state, env_params, bank)
    except (NotImplementedError, AttributeError):
        return None


# ------------------------------------------------------------------ advantages


def gae(reward, value, next_value, terminal, ended, gamma: float, lam: float):
    """Generalised advantage estimation over a time-major rollout.

    Args (``(T, ...)``, any trailing shape shared by all):
      reward: reward of step ``t``.
      value: ``V(s_t)``.
      next_value: the bootstrap value of step ``t``'s successor: ``V(s_{t+1})`` inside an episode,
        ``V(final observation)`` where the episode ended by truncation (ignored where terminal).
      terminal: bool, no bootstrap after step ``t`` (the task ended for this agent).
      ended: bool, the episode ended after step ``t`` (terminated or truncated): the advantage
        recursion does not run across it.
      gamma, lam: discount and GAE λ.

    Returns:
      ``(advantages, returns)``, ``returns = advantages + value`` (the λ-return targets of the critic).
      ``delta_t = r_t + γ (1 - terminal_t) next_value_t - V(s_t)``;
      ``A_t = delta_t + γ λ (1 - (terminal_t | ended_t)) A_{t+1}``, ``A_T = 0``.
    """
    reward = reward.astype(jnp.float32)
    not_terminal = 1.0 - terminal.astype(jnp.float32)
    delta = reward + gamma * not_terminal * next_value - value
    carry_on = gamma * lam * (1.0 - (terminal | ended).astype(jnp.float32))

    def back(adv_next, x):
        d, c = x
        adv = d + c * adv_next
        return adv, adv

    _, adv = jax.lax.scan(back, jnp.zeros_like(delta[0]), (delta, carry_on), reverse=True)
    return adv, adv + value


def group_advantages(returns, group_size: int, eps: float = 1e-6, scale_by_std: bool = True):
    """Group-relative advantages (GRPO): ``(returns - group mean) / (group std + eps)``.

    Args:
      returns: ``(N, ...)`` with ``N = n_groups * group_size`` and the ``group_size`` members of a group
        consecutive (``jnp.repeat`` of the group starts).
      scale_by_std: divide by the group's standard deviation (population std, ``ddof = 0``);
        ``False`` only centres (as Dr. GRPO suggests, to avoid up-weighting near-unanimous groups).
    Returns ``(N, ...)`` float32.
    """
    n = returns.shape[0]
    if n % group_size:
        raise ConfigError(f"group_advantages: {n} returns are not a multiple of group_size {group_size}")
    r = returns.astype(jnp.float32).reshape((n // group_size, group_size) + returns.shape[1:])
    centred = r - r.mean(axis=1, keepdims=True)
    if scale_by_std:
        centred = centred / (r.std(axis=1, keepdims=True) + eps)
    return centred.reshape(returns.shape)


def masked_mean(x, mask):
    """Mean of ``x`` over the entries where ``mask`` (broadcast) is true; 0 if there are none."""
    m = jnp.broadcast_to(mask, x.shape).astype(jnp.float32)
    return jnp.sum(x * m) / jnp.maximum(m.sum(), 1.0)


def normalize(x, mask, eps: float = 1e-8):
    """``(x - mean) / (std + eps)`` with the mean and std taken over the ``mask``-ed entries."""
    mean = masked_mean(x, mask)
    std = jnp.sqrt(masked_mean((x - mean) ** 2, mask))
    return (x - mean) / (std + eps)


# ------------------------------------------------------------------ minibatching


def shuffled_minibatches(key, batch, n_minibatches: int):
    """Shuffle the leading axis ``B`` of every leaf of ``batch`` and split it into ``n_minibatches``:
    leaves ``(B, ...) -> (n_minibatches, B // n_minibatches, ...)`` (``B`` must divide)."""
    size = jax.tree.leaves(batch)[0].shape[0]
    perm = jax.random.permutation(key, size)
    return jax.tree.map(lambda x: x[perm].reshape((n_minibatches, size // n_minibatches) + x.shape[1:]), batch)


def epochs_of_minibatches(key, batch, n_epochs: int, n_minibatches: int, step: Callable, carry):
    """Run ``step(carry, minibatch) -> (carry, metrics)`` over ``n_epochs`` reshuffled passes of
    ``n_minibatches`` minibatches of ``batch`` (leaves ``(B, ...)``); returns ``(carry, metrics)``
    with metric leaves ``(n_epochs, n_minibatches)``."""

    def epoch(carry, k):
        return jax.lax.scan(step, carry, shuffled_minibatches(k, batch, n_minibatches))

    return jax.lax.scan(epoch, carry, jax.random.split(key, n_epochs))


def flatten_time(tree):
    """Merge the leading ``(T, N)`` axes of every leaf into one ``T * N`` axis."""
    return jax.tree.map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), tree)  # zero-size leaves too


# ------------------------------------------------------------------ losses


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
