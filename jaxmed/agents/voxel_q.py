"""Fully-convolutional Q-learning for the voxel agents of ``voxel-seg-v0`` (:mod:`jaxmed.envs.voxel_seg`).

Why a dedicated learner: ``voxel-seg-v0`` has one agent per voxel (``A = D``³, 4 096 for ``D =
16``) sharing one policy. The generic learners give every agent its own head
(:class:`jaxmed.networks.q_network.MultiAgentQNetwork`) and render ``(A, 2, p, p, p)`` patches per
step; a shared per-voxel network is instead exactly a convolution: a ``p``³ convolution on the dense
``(2, D, D, D)`` observation (:meth:`VoxelSegEnv.dense_obs`) followed by ``1 x 1 x 1`` layers is the
same MLP applied to every voxel's ``p``³ patch, computed without materialising the patches. The
replay of the DQN learner would store a probability map per transition; with thousands of agent
transitions per step, on-policy Q-learning from ``n_envs`` parallel episodes suffices.

The loop (one jitted ``run_chunk`` = ``chunk_steps`` vector steps, like :mod:`jaxmed.agents.dqn`):
ε-greedy actions per voxel from ``Q(s) (n_envs, D, D, D, K)``, one env step (auto-reset), the
per-voxel TD target ``r + γ max_a Q_target(s', a)`` (``s'`` the pre-reset state; no bootstrap on
``terminated``), Huber loss averaged over voxels and envs, Adam; the target network is copied every
``target_update_period`` updates.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxmed.errors import ConfigError


class VoxelQNetwork(nn.Module):
    """``(..., 2, D, D, D)`` (uint8 scaled by 1/255, or float) -> ``(..., D, D, D, n_actions)`` float32:
    a ``patch_size``³ convolution then ``1 x 1 x 1`` layers (a per-voxel MLP on ``patch_size``³ patches)."""

    n_actions: int = 5
    patch_size: int = 3
    hidden: Sequence[int] = (32, 32)

    @nn.compact
    def __call__(self, obs):
        x = obs.astype(jnp.float32) / (255.0 if obs.dtype == jnp.uint8 else 1.0)
        lead = x.shape[:-4]
        x = jnp.moveaxis(x.reshape((-1,) + x.shape[-4:]), 1, -1)  # (B, D, D, D, 2)
        p = self.patch_size
        x = nn.relu(nn.Conv(self.hidden[0], (p, p, p), padding="SAME")(x))
        for h in self.hidden[1:]:
            x = nn.relu(nn.Conv(h, (1, 1, 1))(x))
        q = nn.Conv(self.n_actions, (1, 1, 1))(x)
        return q.reshape(lead + q.shape[1:])


@dataclasses.dataclass(frozen=True)
class VoxelQConfig:
    """Hyperparameters (steps are vector env steps of all ``n_envs``)."""

    n_envs: int = 4
    chunk_steps: int = 20
    gamma: float = 0.5
    learning_rate: float = 3e-3
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_decay_steps: int = 200
    target_update_period: int = 25
    huber_delta: float = 1.0
    hidden: tuple[int, ...] = (32, 32)

    def __post_init__(self):
        for name in ("n_envs", "chunk_steps", "eps_decay_steps", "target_update_period"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"VoxelQConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.gamma < 1:
            raise ConfigError(f"VoxelQConfig.gamma must be in [0, 1), got {self.gamma}")

    @property
    def env_steps_per_chunk(self) -> int:
        return self.chunk_steps * self.n_envs


@struct.dataclass
class VoxelQState:
    params: Any
    target_params: Any
    opt_state: Any
    env_state: Any
    key: jax.Array
    updates: jax.Array


class TrainFns(NamedTuple):
    init: Any
    run_chunk: Any


def network_for(env, config: VoxelQConfig) -> VoxelQNetwork:
    """The network for a :class:`VoxelSegEnv` (its patch size and deltas)."""
    if not hasattr(env, "dense_obs"):
        raise ConfigError(f"voxel_q trains voxel-seg envs (with dense_obs), not {env.name!r}")
    return VoxelQNetwork(n_actions=len(env.config.deltas), patch_size=env.config.patch_size, hidden=tuple(config.hidden))


def make_train(config: VoxelQConfig, env, env_params, network: VoxelQNetwork) -> TrainFns:
    """``init(key, bank) -> VoxelQState`` and ``run_chunk(state, bank) -> (state, metrics)`` (pure, jittable)."""
    opt = optax.adam(config.learning_rate)
    v_dense = jax.vmap(env.dense_obs, in_axes=(0, None))
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))
    n, a_count = config.n_envs, env.n_agents

    def init(key, bank):
        k_net, k_env, key = jax.random.split(key, 3)
        env_state = jax.vmap(env.reset_env, in_axes=(0, None, None))(jax.random.split(k_env, n), env_params, bank)
        params = network.init(k_net, v_dense(env_state, bank)[:1])
        return VoxelQState(params, params, opt.init(params), env_state, key, jnp.zeros((), jnp.int32))

    def step(state: VoxelQState, bank):
        key, k_eps, k_rand, k_env = jax.random.split(state.key, 4)
        obs = v_dense(state.env_state, bank)
        q = network.apply(state.params, obs).reshape(n, a_count, -1)
        frac = jnp.clip(state.updates.astype(jnp.float32) / config.eps_decay_steps, 0.0, 1.0)
        eps = config.eps_start + frac * (config.eps_end - config.eps_start)
        random = jax.random.randint(k_rand, (n, a_count), 0, q.shape[-1])
        actions = jnp.where(jax.random.uniform(k_eps, (n, a_count)) < eps, random, jnp.argmax(q, -1)).astype(jnp.int32)
        _, env_state, reward, terminated, truncated, info = v_step(jax.random.split(k_env, n), state.env_state, actions,
                                                                   env_params, bank)
        next_q = network.apply(state.target_params, v_dense(info["final_state"], bank)).reshape(n, a_count, -1)
        target = reward + config.gamma * (1.0 - terminated.astype(jnp.float32))[:, None] * jnp.max(next_q, -1)
        target = jax.lax.stop_gradient(target)

        def loss_fn(params):
            qa = jnp.take_along_axis(network.apply(params, obs).reshape(n, a_count, -1), actions[..., None], -1)[..., 0]
            return jnp.mean(optax.huber_loss(qa, target, delta=config.huber_delta))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        count = state.updates + 1
        target_params = jax.tree.map(lambda t, p: jnp.where(count % config.target_update_period == 0, p, t),
                                     state.target_params, params)
        metrics = {"loss": loss, "reward": jnp.mean(reward), "final_dice": jnp.nanmean(info["final_dice"]),
                   "dice": jnp.mean(info["dice"])}
        return VoxelQState(params, target_params, opt_state, env_state, key, count), metrics

    def run_chunk(state, bank):
        state, metrics = jax.lax.scan(lambda s, _: step(s, bank), state, None, length=config.chunk_steps)
        out = {k: jnp.nanmean(v) for k, v in metrics.items()}
        out["steps"] = state.updates * n
        return state, out

    return TrainFns(init, run_chunk)


def greedy_action(network: VoxelQNetwork, params, dense_obs) -> jax.Array:
    """``(..., A)`` int32 greedy actions per voxel from dense observations ``(..., 2, D, D, D)``."""
    q = network.apply(params, dense_obs)
    return jnp.argmax(q, -1).reshape(q.shape[: -4] + (-1,)).astype(jnp.int32)


def greedy_masks(network: VoxelQNetwork, params, env, env_params, bank, states, steps: int | None = None):
    """``(final states, dice (E,))``: greedy episodes of ``steps`` (default ``max_steps``) from ``states``."""
    steps = int(env_params.max_steps) if steps is None else int(steps)
    v_dense = jax.vmap(env.dense_obs, in_axes=(0, None))
    v_step = jax.vmap(env.step_env, in_axes=(None, 0, 0, None, None))

    def body(s, _):
        a = greedy_action(network, params, v_dense(s, bank))
        s, *_ = v_step(jax.random.key(0), s, a, env_params, bank)
        return s, None

    final, _ = jax.lax.scan(body, states, None, length=steps)
    dice = jax.vmap(lambda s: env.eval_metrics(s, env_params, bank)["dice"][0])(final)
    return final, dice
