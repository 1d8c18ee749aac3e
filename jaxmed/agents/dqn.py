"""DQN, Double DQN, Dueling DQN and Dueling-Double DQN for jaxmed environments (PureJaxRL style).

Papers: Ghesu et al. 2016/2019 (DQN landmark agents), Alansary et al. 2019 (DQN variants for
landmark detection: gamma 0.9, batch 48, epsilon-greedy, target network, 4-frame history).

The whole loop — epsilon-greedy acting of ``n_envs`` vmapped environments, environment step with
auto-reset, replay insertion, replay sampling, re-rendering of the sampled observations from the
volume bank, the TD update and the target-network update — is one pure function of a
:class:`RunnerState`, scanned ``chunk_steps`` times under ``jit``; the host only logs between chunks.

The replay stores *observation states* (``env.obs_state``: volume index, ring of past positions,
scale level: tens of bytes), never pixels; ``env.render`` re-renders them at sample time.

Data parallelism (the pmap pattern): :func:`make_train` with ``axis_name`` set gives per-device
functions whose gradients are averaged with ``lax.pmean`` over that axis; every device acts in its
own environments (keys folded with the device index) and samples its own replay shard, while the
network, optimiser and target parameters stay bit-identical across devices.
:func:`make_parallel_train` wraps them in ``jax.pmap``.

n-step returns (``n_step > 1``): the last ``n_step`` one-step transitions of every environment are
kept in the runner state and aggregated (:func:`nstep_transition`) before insertion, so the replay
still stores two observation states per transition and the bootstrap factor ``gamma^n`` (or 0).

Variants: ``double`` selects the greedy next action with the online network (van Hasselt 2016);
the dueling architecture is the network's ``head="dueling"`` (Wang 2016). :func:`variant` maps the
published names to those two switches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import rlax
from flax import struct

from jaxmed.agents import core
from jaxmed.agents import hparams as hparams_lib
from jaxmed.agents.core import (
    TrainFns,
    descend,
    device_key,
    episode_sums,
    epsilon,
    learning_rate,
    make_parallel,
    reduce_chunk_metrics,
    render_batch,
)
from jaxmed.agents.her import HERConfig
from jaxmed.agents.replay import BufferState, ReplayBuffer
from jaxmed.config import bounded, check_fields
from jaxmed.errors import ConfigError

VARIANTS = {"dqn": (False, "q"), "double": (True, "q"), "dueling": (False, "dueling"), "dueling-double": (True, "dueling")}


def variant(name: str) -> tuple[bool, str]:
    """``(double, head)`` for a published variant name: dqn | double | dueling | dueling-double."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown DQN variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Learner hyperparameters (the network and environment are configured separately).

    Step counts are in *vector* environment steps (one step of all ``n_envs`` environments).
    """

    n_envs: int = bounded(16, 1)
    chunk_steps: int = bounded(100, 1)
    batch_size: int = bounded(48, 1)
    gamma: float = bounded(0.9, 0.0, 1.0, low_open=True)
    learning_rate: float = bounded(1e-4, 0.0, low_open=True)
    lr_decay_steps: int = bounded(0, 0)  # linear decay to lr_final_fraction * lr over this many updates (0: constant)
    lr_final_fraction: float = bounded(0.1, 0.0, 1.0)
    replay_capacity: int = bounded(100_000, 1)
    learning_starts: int = bounded(1_000, 0)  # transitions in the replay (per device) before updates begin
    updates_per_step: int = bounded(1, 1)
    eps_start: float = 1.0
    eps_end: float = 0.1
    eps_decay_steps: int = bounded(10_000, 0)
    target_update_period: int = bounded(500, 1)  # updates between hard target copies (used when tau == 1)
    tau: float = bounded(1.0, 0.0, 1.0, low_open=True)  # Polyak factor per update when < 1
    double: bool = True
    n_step: int = bounded(1, 1)  # n-step returns, aggregated on the actor side before insertion
    huber_delta: float = 1.0
    max_grad_norm: float = 10.0
    her: HERConfig = HERConfig()  # hindsight relabelling of sampled batches (goal-conditioned envs; fraction 0: off)

    @property
    def env_steps_per_chunk(self) -> int:
        """Single-environment steps one ``run_chunk`` takes (per device)."""
        return self.chunk_steps * self.n_envs

    def __post_init__(self):
        check_fields(self)
        if not isinstance(self.her, HERConfig):
            raise ConfigError(f"DQNConfig.her must be a HERConfig (YAML: dqn.her: {{fraction, strategy, radius_mm}}), got {self.her!r}")
        if self.her.fraction > 0 and self.n_step != 1:
            raise ConfigError(f"DQNConfig: hindsight relabelling (her.fraction > 0) needs one-step transitions, got n_step = {self.n_step}")


#: Hparams fields held as int32 (the others are float32).
_INT_HPARAMS = ("target_update_period", "learning_starts")


@struct.dataclass
class Hparams:
    """The numeric hyperparameters carried in the runner state (scalars; a leading population axis
    when vmapped). Same meaning and units as the :class:`DQNConfig` fields of the same names."""

    learning_rate: jax.Array
    lr_final_fraction: jax.Array
    gamma: jax.Array
    eps_start: jax.Array
    eps_end: jax.Array
    eps_decay_steps: jax.Array  # vector env steps (float32)
    target_update_period: jax.Array  # int32, updates between hard target copies
    tau: jax.Array  # Polyak factor (used when the config's tau < 1)
    huber_delta: jax.Array
    learning_starts: jax.Array  # int32, transitions in the replay before updates begin


#: DQNConfig fields that are pytree leaves of the runner state (sweepable inside one compiled program).
HPARAM_FIELDS, default_hparams, stack_hparams = hparams_lib.learner_hparams(Hparams, int_fields=_INT_HPARAMS, validate=False)


@struct.dataclass
class RunnerState:
    """Everything the training loop carries (a pytree; per device under pmap)."""

    params: Any
    target_params: Any
    opt_state: Any
    buffer: BufferState
    window: Any  # the last n_step one-step transitions of every env, (n_step, n_envs, ...), oldest first
    env_state: Any
    obs: jax.Array
    key: jax.Array
    steps: jax.Array  # vector env steps taken
    updates: jax.Array  # gradient updates taken
    hparams: Hparams  # the numeric hyperparameters of this run (leaves; see :class:`Hparams`)


def make_optimizer(config: DQNConfig) -> optax.GradientTransformation:
    """Adam with global-norm clipping and an optional linear learning-rate decay (the config's
    fixed learning rate; :func:`make_train` uses :func:`make_direction` and the runner state's
    :class:`Hparams` learning rate instead, which gives the same updates)."""
    lr = config.learning_rate
    if config.lr_decay_steps > 0:
        lr = optax.linear_schedule(lr, lr * config.lr_final_fraction, config.lr_decay_steps)
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr))


def make_direction(config: DQNConfig) -> optax.GradientTransformation:
    """Global-norm clipping and Adam's scaling without the learning rate: the update direction that
    :func:`make_train` multiplies by ``-learning_rate(config, hparams, updates)``."""
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.scale_by_adam())


def td_loss(network: nn.Module, params, target_params, obs, next_obs, batch, gamma: float, double: bool, huber_delta: float):
    """Mean Huber TD loss over the valid (live) agents of a batch.

    Shapes: ``obs``/``next_obs`` ``(B, A, k, D, D, D)``; ``batch["action"]`` ``(B, A)``; ``reward``,
    ``valid`` and either ``discount`` (the bootstrap factor, e.g. ``gamma**n`` or 0 at a terminal) or
    ``terminal`` (then the factor is ``gamma * (1 - terminal)``), all ``(B, A)``.
    Returns ``(loss, mean |TD error|)``.
    """
    q = network.apply(params, obs)  # (B, A, n_actions)
    q_next_target = network.apply(target_params, next_obs)
    q_next_select = network.apply(params, next_obs) if double else q_next_target
    flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731  (B, A, ...) -> (B*A, ...)
    if "discount" in batch:
        discount = flat(batch["discount"]).astype(jnp.float32)
    else:
        discount = gamma * (1.0 - flat(batch["terminal"]).astype(jnp.float32))
    td = jax.vmap(rlax.double_q_learning)(
        flat(q), flat(batch["action"]).astype(jnp.int32), flat(batch["reward"]), discount,
        jax.lax.stop_gradient(flat(q_next_target)), jax.lax.stop_gradient(flat(q_next_select)),
    )
    valid = flat(batch["valid"]).astype(jnp.float32)
    n = jnp.maximum(valid.sum(), 1.0)
    loss = jnp.sum(rlax.huber_loss(td, huber_delta) * valid) / n
    return loss, jnp.sum(jnp.abs(td) * valid) / n


def nstep_transition(window, gamma: float):
    """Aggregate a window of ``n`` consecutive one-step transitions of one environment into one.

    ``window`` leaves have a leading time axis ``n`` (oldest first): ``obs_state``,
    ``next_obs_state``, ``action`` ``(n, A)``, ``reward`` ``(n, A)``, ``terminal`` ``(n, A)`` (agent done
    after the step), ``ended`` ``(n,)`` (the episode ended after the step: terminated or truncated),
    ``valid`` ``(n, A)``. The result starts at the oldest step and runs to step ``j``, the first
    step after which the episode ended (or ``n - 1``): reward ``sum_i gamma^i r_i`` over ``i <= j``,
    ``next_obs_state`` of step ``j`` and bootstrap factor ``gamma^(j+1) * (1 - terminal_j)``. A
    truncated episode still bootstraps (from its final state).
    """
    n = window["reward"].shape[0]
    ended_before = jnp.concatenate([jnp.zeros((1,), bool), jnp.cumsum(window["ended"][:-1]) > 0])  # (n,)
    alive = (~ended_before).astype(jnp.float32)
    j = jnp.where(window["ended"].any(), jnp.argmax(window["ended"]), n - 1)
    powers = gamma ** jnp.arange(n, dtype=jnp.float32)
    reward = jnp.sum((powers * alive)[:, None] * window["reward"], axis=0)
    last = jax.tree.map(lambda x: x[j], window)
    return {
        "obs_state": jax.tree.map(lambda x: x[0], window["obs_state"]),
        "next_obs_state": last["next_obs_state"],
        "action": window["action"][0],
        "reward": reward,
        "discount": gamma ** (j + 1.0) * (1.0 - last["terminal"].astype(jnp.float32)),
        "valid": window["valid"][0],
    }


def greedy_action(network: nn.Module, params, obs) -> jax.Array:
    """``(..., A)`` int32: the action of highest Q-value for every agent."""
    return jnp.argmax(network.apply(params, obs), axis=-1).astype(jnp.int32)


def make_train(config: DQNConfig, env, env_params, network: nn.Module, axis_name: str | None = None,
               batch_transform: Callable | None = None) -> TrainFns:
    """Build the pure training functions for ``env`` (a jaxmed environment with ``obs_state`` /
    ``render``) and a Q-network mapping ``(..., A, k, D, D, D)`` to ``(..., A, n_actions)``.

    With ``axis_name`` the functions must run under ``jax.pmap``/``shard_map`` with that axis:
    gradients are ``lax.pmean``-ed over it and environment keys differ per device.

    ``batch_transform(batch, key, bank) -> batch``, when given, rewrites every sampled replay batch
    before it is rendered (e.g. hindsight goal relabelling: new goals in the observation states, new
    ``reward`` / ``discount``); it must keep the batch's structure and shapes.
    """
    optimizer = make_direction(config)
    n_envs = config.n_envs
    v_reset = jax.vmap(env.reset, in_axes=(0, None, None))
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))

    n_step = config.n_step

    def transition(state, action, reward, final_state, ended):
        """One environment's one-step transition (states, not pixels)."""
        return {
            "obs_state": env.obs_state(state),
            "next_obs_state": env.obs_state(final_state),
            "action": action.astype(jnp.int8),
            "reward": reward.astype(jnp.float32),
            "terminal": final_state.done,
            "ended": ended,
            "valid": ~state.done,
        }

    v_nstep = jax.vmap(nstep_transition, in_axes=(1, None))  # window leaves (n, n_envs, ...)

    def init(key, bank, hparams: Hparams | None = None) -> RunnerState:
        hparams = default_hparams(config) if hparams is None else hparams
        net_key, env_key = jax.random.split(key)  # the network key is shared by every device
        obs, env_state = v_reset(jax.random.split(device_key(env_key, axis_name), n_envs), env_params, bank)
        params = core.init_network(network, net_key, obs[:1], env)
        zero_action = jnp.zeros((n_envs, env.n_agents), jnp.int32)
        one_step = jax.vmap(transition)(env_state, zero_action, zero_action.astype(jnp.float32), env_state, jnp.zeros((n_envs,), bool))
        window = jax.tree.map(lambda x: jnp.zeros((n_step,) + x.shape, x.dtype), one_step)
        example = jax.tree.map(lambda x: x[0], v_nstep(window, config.gamma))
        return RunnerState(
            params=params, target_params=params, opt_state=optimizer.init(params),
            buffer=ReplayBuffer.init(example, config.replay_capacity), window=window, env_state=env_state, obs=obs,
            key=device_key(jax.random.fold_in(key, 1), axis_name), steps=jnp.zeros((), jnp.int32), updates=jnp.zeros((), jnp.int32),
            hparams=hparams,
        )

    def update(rs: RunnerState, key, bank):
        key, k_transform = jax.random.split(key)
        batch = ReplayBuffer.sample(rs.buffer, key, config.batch_size)
        if batch_transform is not None:
            batch = batch_transform(batch, k_transform, bank)
        # materialised before the network (see core.in_chunks: ~3x faster on XLA:CPU)
        obs, next_obs = render_batch(env, batch["obs_state"], bank), render_batch(env, batch["next_obs_state"], bank)
        grad_fn = jax.value_and_grad(td_loss, argnums=1, has_aux=True)
        hp = rs.hparams
        (loss, abs_td), grads = grad_fn(network, rs.params, rs.target_params, obs, next_obs, batch, hp.gamma, config.double, hp.huber_delta)
        if axis_name is not None:
            grads, loss, abs_td = jax.lax.pmean((grads, loss, abs_td), axis_name)
        direction, opt_state = optimizer.update(grads, rs.opt_state, rs.params)
        lr = learning_rate(config, hp, rs.updates)
        params = descend(rs.params, direction, lr)
        updates = rs.updates + 1
        if config.tau < 1.0:
            target = optax.incremental_update(params, rs.target_params, hp.tau)
        else:
            copy = updates % hp.target_update_period == 0
            target = jax.tree.map(lambda p, t: jnp.where(copy, p, t), params, rs.target_params)
        return rs.replace(params=params, target_params=target, opt_state=opt_state, updates=updates), loss, abs_td

    def step(rs: RunnerState, bank):
        key, k_eps, k_act, k_env, k_upd = jax.random.split(rs.key, 5)
        q = network.apply(rs.params, rs.obs)  # (n_envs, A, n_actions)
        greedy = jnp.argmax(q, axis=-1)
        explore = jax.random.uniform(k_eps, greedy.shape) < epsilon(rs.hparams, rs.steps)
        action = jnp.where(explore, jax.random.randint(k_act, greedy.shape, 0, env.num_actions), greedy).astype(jnp.int32)
        keys = jax.random.split(k_env, n_envs)
        obs, env_state, reward, terminated, truncated, info = v_step(keys, rs.env_state, action, env_params, bank)
        ended = terminated | truncated
        new = jax.vmap(transition)(rs.env_state, action, reward, info["final_state"], ended)
        window = jax.tree.map(lambda w, x: jnp.concatenate([w[1:], x[None]], axis=0), rs.window, new)
        aggregated = v_nstep(window, rs.hparams.gamma)
        # the oldest window entry is a real transition only once n steps have been taken
        aggregated["valid"] = aggregated["valid"] & (rs.steps + 1 >= n_step)
        buffer = ReplayBuffer.add_batch(rs.buffer, aggregated)
        rs = rs.replace(buffer=buffer, window=window, env_state=env_state, obs=obs, key=key, steps=rs.steps + 1)

        def learn(rs):
            losses = []
            for k in jax.random.split(k_upd, config.updates_per_step):
                rs, loss, abs_td = update(rs, k, bank)
                losses.append((loss, abs_td))
            return rs, jnp.mean(jnp.array(losses), axis=0)

        can_learn = buffer.size >= rs.hparams.learning_starts
        rs, (loss, abs_td) = jax.lax.cond(can_learn, learn, lambda rs: (rs, jnp.full((2,), jnp.nan)), rs)
        return rs, (episode_sums(info, ended), {"reward": reward.mean(), "loss": loss, "abs_td": abs_td})

    def run_chunk(rs: RunnerState, bank):
        rs, (sums, m) = jax.lax.scan(lambda rs, _: step(rs, bank), rs, None, length=config.chunk_steps)
        means = {"reward": m["reward"].mean(), "loss": jnp.nanmean(m["loss"]), "abs_td": jnp.nanmean(m["abs_td"]),
                 "epsilon": epsilon(rs.hparams, rs.steps)}
        metrics = reduce_chunk_metrics(jax.tree.map(lambda x: x.sum(0), sums), means, axis_name)
        metrics.update(core.chunk_counters(rs.steps, rs.updates, axis_name))
        return rs, metrics

    return TrainFns(init=init, run_chunk=run_chunk, network=network, optimizer=optimizer)


def make_parallel_train(config: DQNConfig, env, env_params, network: nn.Module, n_devices: int | None = None, axis_name: str = "devices",
                        batch_transform: Callable | None = None):
    """:func:`make_train` data-parallel over ``n_devices`` local devices with ``jax.pmap``
    (:func:`jaxmed.agents.core.make_parallel`): ``(init, run_chunk)``, ``init(key, bank)`` giving a
    :class:`RunnerState` with a leading device axis; the bank is broadcast to every device."""
    return make_parallel(make_train, config, env, env_params, network, n_devices, axis_name, batch_transform=batch_transform)
