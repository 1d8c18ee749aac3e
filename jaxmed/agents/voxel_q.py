"""Fully-convolutional Q-learning for the voxel agents of ``voxel-seg-v0`` (:mod:`jaxmed.envs.voxel_seg`):
the learner ``train.learner: voxel_q`` (YAML section ``voxel_q:``).

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

The network (:class:`VoxelQNetwork`) takes either observation form: the dense ``(..., 2, D, D, D)``
map (training) or the env's own per-voxel patches ``(..., A, 2, p, p, p)`` (what
:func:`jaxmed.agents.rollout.greedy_rollout` renders for evaluation, ``jaxmed evaluate`` and
``jaxmed segment``); the same parameters give the same Q-values on both. Its ``network:`` section
sets only the hidden widths (``network: {head: {hidden: [32, 32]}}``); the patch size and the
action count come from the env.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxmed.agents import hparams as hparams_lib
from jaxmed.agents.core import (
    TrainFns,
    chunk_counters,
    descend,
    device_key,
    episode_sums,
    epsilon,
    make_parallel,
    pmean_if,
    reduce_chunk_metrics,
)
from jaxmed.config import bounded, check_fields
from jaxmed.errors import ConfigError

DEFAULT_HIDDEN = (32, 32)


class VoxelQNetwork(nn.Module):
    """Q-values of every voxel agent: a ``patch_size``³ convolution then ``1 x 1 x 1`` layers (a per-voxel
    MLP on ``patch_size``³ patches). Input (uint8 scaled by 1/255, or float):

    * dense ``(..., 2, D, D, D)`` -> ``(..., D, D, D, n_actions)`` float32 (``SAME`` padding: zeros
      outside the crop);
    * patches ``(..., A, 2, p, p, p)`` with ``p = patch_size`` and ``A = n_agents`` (when set) ->
      ``(..., A, n_actions)`` float32 (the same kernel on each patch, ``VALID``).
    """

    n_actions: int = 5
    patch_size: int = 3
    hidden: Sequence[int] = DEFAULT_HIDDEN
    n_agents: int | None = None  # A = D^3 of the env: tells the patch form apart from the dense one

    def _is_patches(self, shape) -> bool:
        p = self.patch_size
        if len(shape) < 5 or tuple(shape[-4:]) != (2, p, p, p):
            return False
        return self.n_agents is None or shape[-5] == self.n_agents

    @nn.compact
    def __call__(self, obs):
        x = obs.astype(jnp.float32) / (255.0 if obs.dtype == jnp.uint8 else 1.0)
        p = self.patch_size
        patch_form = self._is_patches(x.shape)
        lead = x.shape[:-5] + x.shape[-5:-4] if patch_form else x.shape[:-4]
        x = jnp.moveaxis(x.reshape((-1,) + x.shape[-4:]), 1, -1)  # (B, D, D, D, 2) or (B*A, p, p, p, 2)
        # one name, two paddings: the same kernel as a convolution (dense) or a dot product per patch
        x = nn.relu(nn.Conv(self.hidden[0], (p, p, p), padding="VALID" if patch_form else "SAME", name="Conv_0")(x))
        for i, h in enumerate(self.hidden[1:], start=1):
            x = nn.relu(nn.Conv(h, (1, 1, 1), name=f"Conv_{i}")(x))
        q = nn.Conv(self.n_actions, (1, 1, 1), name=f"Conv_{len(self.hidden)}")(x)
        return q.reshape(lead + q.shape[-1:]) if patch_form else q.reshape(lead + q.shape[1:])


@dataclasses.dataclass(frozen=True)
class VoxelQConfig:
    """Hyperparameters (steps are vector env steps of all ``n_envs``; one update per step)."""

    n_envs: int = bounded(4, 1)
    chunk_steps: int = bounded(20, 1)
    gamma: float = bounded(0.5, 0.0, 1.0, high_open=True)
    learning_rate: float = bounded(3e-3, 0.0, low_open=True)
    eps_start: float = bounded(1.0, 0.0, 1.0)
    eps_end: float = bounded(0.05, 0.0, 1.0)
    eps_decay_steps: int = bounded(200, 1)
    target_update_period: int = bounded(25, 1)
    huber_delta: float = bounded(1.0, 0.0, low_open=True)

    def __post_init__(self):
        check_fields(self)

    @property
    def env_steps_per_chunk(self) -> int:
        """Single-environment steps one ``run_chunk`` takes (per device)."""
        return self.chunk_steps * self.n_envs


#: Hparams fields held as int32 (the others are float32).
_INT_HPARAMS = ("target_update_period",)


@struct.dataclass
class Hparams:
    """The numeric hyperparameters carried in the runner state (same meaning as the :class:`VoxelQConfig` fields)."""

    learning_rate: jax.Array
    gamma: jax.Array
    eps_start: jax.Array
    eps_end: jax.Array
    eps_decay_steps: jax.Array  # vector env steps (float32)
    target_update_period: jax.Array  # int32, updates between hard target copies
    huber_delta: jax.Array


#: VoxelQConfig fields that are pytree leaves of the runner state (sweepable inside one compiled program).
HPARAM_FIELDS, default_hparams, stack_hparams = hparams_lib.learner_hparams(Hparams, int_fields=_INT_HPARAMS)


@struct.dataclass
class VoxelQState:
    params: Any
    target_params: Any
    opt_state: Any
    env_state: Any
    key: jax.Array
    updates: jax.Array  # gradient updates = vector env steps taken
    hparams: Hparams


def network_for(env, hidden: Sequence[int] = DEFAULT_HIDDEN) -> VoxelQNetwork:
    """The network for a :class:`VoxelSegEnv` (its patch size, deltas and voxel count)."""
    if not hasattr(env, "dense_obs"):
        raise ConfigError(f"voxel_q trains voxel-seg envs (with dense_obs), not {env.name!r}")
    return VoxelQNetwork(n_actions=len(env.config.deltas), patch_size=env.config.patch_size, hidden=tuple(hidden),
                         n_agents=env.n_agents)


def network_from_config(cfg: Mapping[str, Any]) -> VoxelQNetwork:
    """The learner's network from a ``network:`` mapping as :func:`jaxmed.experiment.make_network` completes
    it (``n_actions``, ``n_agents`` and ``crop_size`` = the env's patch edge set from the env): only
    ``head.hidden`` is an option (the trunk is the per-voxel convolution)."""
    cfg = dict(cfg)
    trunk = cfg.pop("trunk", "patch")
    if trunk != "patch":  # "patch" is the section's default, also when no network section is given
        raise ConfigError("network.trunk: the voxel_q network is a per-voxel convolution of the env's patch_size; "
                          f"set only network.head.hidden, got trunk {trunk!r}")
    head = cfg.pop("head", None)
    hidden = DEFAULT_HIDDEN
    if isinstance(head, Mapping):
        extra = sorted(set(head) - {"name", "hidden"})
        if head.get("name", "q") != "q" or extra:
            raise ConfigError(f"network.head: the voxel_q network takes only {{hidden: [...]}}, got {dict(head)!r}")
        hidden = tuple(int(h) for h in head.get("hidden", DEFAULT_HIDDEN))
    elif head not in (None, "q"):
        raise ConfigError(f"network.head: the voxel_q network takes only {{hidden: [...]}}, got {head!r}")
    if not hidden or any(h < 1 for h in hidden):
        raise ConfigError(f"network.head.hidden: expected one or more positive widths, got {list(hidden)}")
    crop = cfg.pop("crop_size", None)
    patch = int(crop[0] if isinstance(crop, (tuple, list)) else (crop or 3))
    if cfg.pop("dtype", "float32") != "float32":
        raise ConfigError("network.dtype: the voxel_q network computes in float32")
    n_actions, n_agents = int(cfg.pop("n_actions", 5)), cfg.pop("n_agents", None)
    if cfg:
        raise ConfigError(f"network: option(s) {sorted(cfg)} do not apply to the voxel_q network (only head.hidden)")
    return VoxelQNetwork(n_actions=n_actions, patch_size=patch, hidden=hidden, n_agents=n_agents)


def make_train(config: VoxelQConfig, env, env_params, network: VoxelQNetwork, axis_name: str | None = None) -> TrainFns:
    """``init(key, bank, hparams=None) -> VoxelQState`` and ``run_chunk(state, bank) -> (state, metrics)``
    (pure, jittable, vmappable over seeds; ``axis_name``: gradients ``pmean``-ed over that device axis)."""
    if not hasattr(env, "dense_obs"):
        raise ConfigError(f"train.learner voxel_q trains voxel-seg envs (with dense_obs), not {env.name!r}")
    opt = optax.scale_by_adam()  # Adam's direction; the step is the runner state's learning rate
    v_dense = jax.vmap(env.dense_obs, in_axes=(0, None))
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))
    n, a_count = config.n_envs, env.n_agents

    def init(key, bank, hparams: Hparams | None = None) -> VoxelQState:
        hparams = default_hparams(config) if hparams is None else hparams
        k_net, k_env, key = jax.random.split(key, 3)  # k_net alike on every device: one network
        k_env, key = device_key(k_env, axis_name), device_key(key, axis_name)
        env_state = jax.vmap(env.reset_env, in_axes=(0, None, None))(jax.random.split(k_env, n), env_params, bank)
        params = network.init(k_net, v_dense(env_state, bank)[:1])
        return VoxelQState(params, params, opt.init(params), env_state, key, jnp.zeros((), jnp.int32), hparams)

    def step(state: VoxelQState, bank):
        hp = state.hparams
        key, k_eps, k_rand, k_env = jax.random.split(state.key, 4)
        obs = v_dense(state.env_state, bank)
        q = network.apply(state.params, obs).reshape(n, a_count, -1)
        eps = epsilon(hp, state.updates)
        random = jax.random.randint(k_rand, (n, a_count), 0, q.shape[-1])
        actions = jnp.where(jax.random.uniform(k_eps, (n, a_count)) < eps, random, jnp.argmax(q, -1)).astype(jnp.int32)
        _, env_state, reward, terminated, truncated, info = v_step(jax.random.split(k_env, n), state.env_state, actions,
                                                                   env_params, bank)
        next_q = network.apply(state.target_params, v_dense(info["final_state"], bank)).reshape(n, a_count, -1)
        target = reward + hp.gamma * (1.0 - terminated.astype(jnp.float32))[:, None] * jnp.max(next_q, -1)
        target = jax.lax.stop_gradient(target)

        def loss_fn(params):
            qa = jnp.take_along_axis(network.apply(params, obs).reshape(n, a_count, -1), actions[..., None], -1)[..., 0]
            return jnp.mean(optax.huber_loss(qa, target, delta=hp.huber_delta))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grads = pmean_if(grads, axis_name)
        direction, opt_state = opt.update(grads, state.opt_state, state.params)
        params = descend(state.params, direction, hp.learning_rate)
        count = state.updates + 1
        target_params = jax.tree.map(lambda t, p: jnp.where(count % hp.target_update_period == 0, p, t),
                                     state.target_params, params)
        sums = episode_sums(info, terminated | truncated)
        means = {"loss": loss, "reward": jnp.mean(reward), "dice": jnp.mean(info["dice"]), "epsilon": eps}
        return VoxelQState(params, target_params, opt_state, env_state, key, count, hp), (sums, means)

    def run_chunk(state, bank):
        state, (sums, means) = jax.lax.scan(lambda s, _: step(s, bank), state, None, length=config.chunk_steps)
        metrics = reduce_chunk_metrics(jax.tree.map(lambda x: x.sum(0), sums), jax.tree.map(jnp.mean, means), axis_name)
        metrics.update(chunk_counters(state.updates * n, state.updates, axis_name))
        return state, metrics

    return TrainFns(init, run_chunk, network, opt)


def make_parallel_train(config: VoxelQConfig, env, env_params, network: VoxelQNetwork, n_devices: int | None = None,
                        axis_name: str = "devices"):
    """:func:`make_train` data-parallel over ``n_devices`` local devices (``jax.pmap``, gradients ``pmean``-ed)."""
    return make_parallel(make_train, config, env, env_params, network, n_devices, axis_name)


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
