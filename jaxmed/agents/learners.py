"""The learners a run can select (``train.learner``) and what each one needs from the outer loop.

Every learner module provides the same interface:

* a frozen config dataclass (the YAML section named after the learner, e.g. ``dqn:`` / ``ppo:``)
  with ``n_envs`` and ``env_steps_per_chunk`` (single-env steps one ``run_chunk`` takes per device);
* ``make_train(config, env, env_params, network, axis_name=None) -> TrainFns`` (``init(key, bank)``,
  ``run_chunk(state, bank) -> (state, metrics)``), pure and vmappable over seeds;
* ``make_parallel_train(config, env, env_params, network, n_devices)`` (data-parallel, ``pmap``);
* ``Hparams``, ``HPARAM_FIELDS``, ``default_hparams`` and ``stack_hparams`` (:mod:`jaxmed.agents.hparams`).

The network family differs: value learners use :func:`jaxmed.networks.network_from_config`
(Q-values), policy-gradient learners an actor-critic network (:func:`network_for` an env).
:func:`make_trainer` compiles any learner for the outer loop. :func:`policy_action` is the
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


def network_for(name: str, network_section: dict, env):
    """Learner ``name``'s network for ``env`` from a ``network:`` section: the env's action count, agent
    count and observation size fill the keys the section leaves out."""
    net_cfg = dict(network_section)
    net_cfg.setdefault("n_actions", env.num_actions)
    if env.n_agents > 1:
        net_cfg.setdefault("n_agents", env.n_agents)
    if "crop_size" not in net_cfg:
        net_cfg["crop_size"] = tuple(int(d) for d in env.observation_space(env.default_params).shape[-3:])
    return network_from_config(name, net_cfg)


def make_trainer(train, learner_config, env, env_params, network):
    """``(init(key, bank), run_chunk(state, bank))``, jitted, of the learner ``train.learner`` with
    ``learner_config``: for one device, for ``train.devices`` devices (``pmap``; state leaves get a
    leading device axis) or for ``train.seeds`` seeds trained at once (``vmap``ped init, chunks run by
    :func:`jaxmed.agents.core.over_members` with ``train.seed_batching``; leading seed axis), each
    member with its row of ``train.hparams`` (:func:`jaxmed.agents.hparams.member_rows`). A goal
    env's hindsight relabelling (``dqn.her``) is added as the learner's batch transform.

    ``train``: the run's ``train:`` section (``learner``, ``devices``, ``seeds``, ``seed_batching``,
    ``hparams``). ``run_chunk`` donates its state argument.
    """
    import jax

    from jaxmed.agents.core import over_members
    from jaxmed.agents.her import transform_for
    from jaxmed.agents.hparams import member_rows

    learner = module(train.learner)
    extra = {}
    relabel = transform_for(env, env_params, learner_config)
    if relabel is not None:
        extra["batch_transform"] = relabel
    if train.devices > 1:
        if jax.local_device_count() < train.devices:
            raise ConfigError(f"train.devices={train.devices} but only {jax.local_device_count()} devices are visible")
        return learner.make_parallel_train(learner_config, env, env_params, network, n_devices=train.devices, **extra)
    fns = learner.make_train(learner_config, env, env_params, network, **extra)
    rows = member_rows(train.hparams, train.seeds)
    hparams = learner.stack_hparams([learner.default_hparams(learner_config, **row) for row in rows])
    if train.seeds > 1:
        init = jax.jit(jax.vmap(fns.init, in_axes=(0, None, 0)))
        return ((lambda key, bank: init(jax.random.split(key, train.seeds), bank, hparams)),
                jax.jit(over_members(fns.run_chunk, train.seed_batching), donate_argnums=0))
    single = jax.tree.map(lambda x: x[0], hparams)
    return jax.jit(lambda key, bank: fns.init(key, bank, single)), jax.jit(fns.run_chunk, donate_argnums=0)


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


def policy_rollout(name: str, network, env, eval_params, record=None):
    """A jitted ``(params, bank, states) -> rollout`` of learner ``name``'s deterministic policy
    (:func:`policy_action`) from the given env states (:func:`jaxmed.agents.rollout.greedy_rollout`;
    ``record``: what to record each step, e.g. ``env.trajectory_of``)."""
    import jax

    from jaxmed.agents.rollout import greedy_rollout

    policy = lambda p: lambda o: policy_action(name, network, p, o)  # noqa: E731
    return jax.jit(lambda p, b, s: greedy_rollout(policy(p), env, eval_params, b, s, record=record))
