"""What every learner shares: the ``TrainFns`` type, the optimiser's config fields and step and its
learning-rate schedule, episode metrics, batch rendering, the data-parallel plumbing and what the outer loop does to a
runner state between chunks (a fresh bank, host-side metric rows).

The learners build on this module: the DQN family (:mod:`jaxmed.agents.dqn`) and the
policy-gradient family (:mod:`jaxmed.agents.policy_gradient` with A2C, PPO and GRPO on top).
Hyperparameter leaves (numbers a vmapped population varies) are in :mod:`jaxmed.agents.hparams`.

Shapes: ``N`` environments, ``A`` agents per environment, ``B`` a batch of samples.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmed.config import bounded, check_fields
from jaxmed.errors import ConfigError

#: Prefix of the per-episode metrics an env reports in ``info`` where an episode ended.
FINAL_PREFIX = "final_"


class TrainFns(NamedTuple):
    """A learner's pure training functions: ``init(key, bank, hparams=None) -> runner state``;
    ``run_chunk(state, bank) -> (state, metrics)``; the ``network`` and the ``optimizer``
    (an optax transformation whose state the runner state carries)."""

    init: Callable
    run_chunk: Callable
    network: nn.Module
    optimizer: optax.GradientTransformation


# ------------------------------------------------------------------ config checks


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The optimiser fields the policy-gradient learner configs share: Adam's ``learning_rate`` and
    ``adam_eps``, a linear decay of the learning rate to ``lr_final_fraction`` of it over
    ``lr_decay_steps`` gradient steps (0: constant), global-norm clipping to ``max_grad_norm``.
    Every field is checked against its type and declared interval (:func:`jaxmed.config.check_fields`)
    when a subclass is built."""

    learning_rate: float = bounded(3e-4, 0.0, low_open=True)
    lr_decay_steps: int = bounded(0, 0)
    lr_final_fraction: float = bounded(0.0, 0.0, 1.0)
    max_grad_norm: float = bounded(0.5, 0.0, low_open=True)
    adam_eps: float = bounded(1e-5, 0.0, low_open=True)

    def __post_init__(self):
        check_fields(self)


# ------------------------------------------------------------------ optimiser and schedule


def learning_rate(config, hp, updates) -> jax.Array:
    """The learning rate of gradient step number ``updates`` (0-based): ``hp.learning_rate``, decayed
    linearly to ``hp.lr_final_fraction`` of it over ``config.lr_decay_steps`` steps when that (a static
    config field) is > 0 (as ``optax.linear_schedule``), then constant."""
    if config.lr_decay_steps <= 0:
        return hp.learning_rate
    frac = jnp.clip(updates / config.lr_decay_steps, 0.0, 1.0)
    return hp.learning_rate * (1.0 + frac * (hp.lr_final_fraction - 1.0))


def epsilon(hp, steps) -> jax.Array:
    """The ε-greedy exploration rate after ``steps`` vector env steps: linear from ``hp.eps_start`` to
    ``hp.eps_end`` over ``hp.eps_decay_steps`` vector steps, then constant (``hp``: a learner config or
    the ``Hparams`` of a runner state with those fields, e.g. DQN's and voxel_q's)."""
    frac = jnp.clip(steps / jnp.maximum(hp.eps_decay_steps, 1), 0.0, 1.0)
    return hp.eps_start + frac * (hp.eps_end - hp.eps_start)


def clip_by_global_norm(grads, max_norm):
    """``grads`` scaled down to global norm ``max_norm`` when larger (``max_norm`` may be traced: a leaf
    of the runner state); the same arithmetic as ``optax.clip_by_global_norm``."""
    clipped, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    return clipped


def descend(params, direction, lr):
    """``params - lr * direction`` leaf by leaf, keeping every leaf's dtype (``direction``: an optimiser's
    update direction without the learning rate, e.g. ``optax.scale_by_adam``)."""
    return optax.apply_updates(params, jax.tree.map(lambda d: (-lr * d).astype(d.dtype), direction))


def make_optimizer(config) -> optax.GradientTransformation:
    """The optimiser's *direction* (Adam's scaling with ``adam_eps``, no learning rate): the learners
    clip the gradients to the runner state's ``max_grad_norm``, then step by the runner state's
    annealed learning rate (:func:`make_apply_gradients`)."""
    return optax.scale_by_adam(eps=config.adam_eps)


def make_apply_gradients(config, optimizer: optax.GradientTransformation) -> Callable:
    """``apply(params, opt_state, grads, hp, count) -> (params, opt_state)``: one Adam step with the
    hyperparameter leaves ``hp`` (global-norm clipping to ``hp.max_grad_norm``, then the learning rate
    ``hp.learning_rate`` annealed linearly to ``hp.lr_final_fraction`` of it over
    ``config.lr_decay_steps`` steps; ``count``: gradient steps taken before this one). With the
    config's values this is the step of ``optax.chain(clip_by_global_norm, adam(linear_schedule))``."""

    def apply(params, opt_state, grads, hp, count):
        grads = clip_by_global_norm(grads, hp.max_grad_norm)
        direction, opt_state = optimizer.update(grads, opt_state, params)
        return descend(params, direction, learning_rate(config, hp, count)), opt_state

    return apply


# ------------------------------------------------------------------ observations of batches


def in_chunks(fn, batch, n_chunks: int = 2):
    """``fn`` applied to the leading axis of ``batch`` (a pytree) in ``n_chunks`` sequential chunks
    (``lax.map``; a single chunk when the size does not divide), returning the concatenated result.

    Used to *materialise* observations before the network: rendered in the same fusion as the
    trunk's first layer (crop gather + cast + patch transpose), XLA:CPU recomputes the gather per
    element of the transposed operand, which measured 3-4x slower than rendering into a buffer
    first (batch of 2048 two-agent multi-scale observations, patch trunk: forward 0.93 s fused vs
    0.23 s); a loop boundary stops that fusion (``optimization_barrier`` does not: it is removed
    before fusion on CPU).
    """
    size = jax.tree.leaves(batch)[0].shape[0]
    if size < 2 or size % n_chunks:
        return fn(batch)
    chunks = jax.tree.map(lambda x: x.reshape((n_chunks, size // n_chunks) + x.shape[1:]), batch)
    out = jax.lax.map(fn, chunks)
    return jax.tree.map(lambda x: x.reshape((size,) + x.shape[2:]), out)


def render_batch(env, obs_state, bank):
    """``(B, ...)`` observations re-rendered from a batch of ``env.obs_state`` (see :func:`in_chunks`)."""
    return in_chunks(lambda o: jax.vmap(env.render, in_axes=(0, None))(o, bank), obs_state)


def observe(env, state, env_params, bank):
    """``(N, ...)`` observations ``env.get_obs`` of a batch of states (see :func:`in_chunks`)."""
    return in_chunks(lambda s: jax.vmap(env.get_obs, in_axes=(0, None, None))(s, env_params, bank), state)


# ------------------------------------------------------------------ episode metrics


def final_metric_names(info) -> tuple[str, ...]:
    """The ``info["final_<metric>"]`` keys an env reports (``final_state`` excluded), sorted."""
    return tuple(sorted(k for k in info if k.startswith(FINAL_PREFIX) and k != "final_state"))


def metric_sums(values: dict, include) -> dict:
    """``{"<key>/sum", "<key>/count"}`` for a NaN-mean over episodes: each episode's value is the NaN-mean
    over its agents of ``values[key]`` ``(N, ...)``; episodes count where ``include`` ``(N,)`` and the
    value is finite (:func:`reduce_chunk_metrics` turns the pairs into means)."""
    out = {}
    for name, value in values.items():
        n = include.shape[0]
        per_env = jnp.nanmean(jnp.asarray(value, jnp.float32).reshape(n, -1), axis=-1)
        ok = include & jnp.isfinite(per_env)
        out[name + "/sum"] = jnp.where(ok, per_env, 0.0).sum()
        out[name + "/count"] = ok.sum().astype(jnp.float32)
    return out


def episode_sums(info, ended) -> dict:
    """Per-step sums for the NaN-mean over ended episodes of every ``final_*`` metric of a vectorised
    step's ``info`` (leaves ``(N, ...)``; ``ended`` ``(N,)`` bool):
    ``{"episodes": ended count, "<key>/sum": ..., "<key>/count": ...}`` (every learner logs these)."""
    sums = metric_sums({k: info[k] for k in final_metric_names(info)}, ended)
    return {"episodes": ended.sum().astype(jnp.float32), **sums}


def reduce_chunk_metrics(sums: dict, means: dict, axis_name: str | None) -> dict:
    """Combine a chunk's metrics: ``sums`` (totals, incl. ``<key>/sum`` + ``<key>/count`` pairs, which
    become ``<key>`` = sum / count, NaN if no episode ended) and ``means`` (already averaged); with
    ``axis_name`` both are averaged over devices first (sums and counts separately)."""
    sums = {k: jnp.asarray(v, jnp.float32) for k, v in sums.items()}
    means = {k: jnp.asarray(v, jnp.float32) for k, v in means.items()}
    if axis_name is not None:
        sums, means = jax.lax.pmean((sums, means), axis_name)
    out = dict(means)
    for k, v in sums.items():
        if k.endswith("/sum"):
            name = k[: -len("/sum")]
            count = sums[name + "/count"]
            out[name] = jnp.where(count > 0, v / jnp.maximum(count, 1e-9), jnp.nan)
        elif not k.endswith("/count"):
            out[k] = v
    return out



def chunk_counters(steps, updates, axis_name: str | None) -> dict:
    """``{"steps", "updates"}`` of a chunk's metrics. They are equal on every device; with ``axis_name``
    a ``pmax`` makes that visible, so ``shard_map`` can return them as replicated outputs."""
    counters = {"steps": steps, "updates": updates}
    return counters if axis_name is None else jax.lax.pmax(counters, axis_name)


# ------------------------------------------------------------------ data parallelism


def device_key(key, axis_name: str | None):
    """``key`` folded with the device index along ``axis_name`` (unchanged without one)."""
    return key if axis_name is None else jax.random.fold_in(key, jax.lax.axis_index(axis_name))


def pmean_if(tree, axis_name: str | None):
    """``lax.pmean`` over ``axis_name`` when given."""
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


#: How the members of one program (the seeds of a ``train.seeds > 1`` run, the trials of a sweep
#: population) run: ``vmap`` side by side, ``map`` one after the other, ``auto`` by backend.
MEMBER_BATCHING = ("auto", "vmap", "map")


def over_members(fn: Callable, batching: str = "auto", in_axes: tuple = (0, None)) -> Callable:
    """``fn`` of one member -> the same function of arguments with a leading member axis ``M``
    (those whose ``in_axes`` entry is 0; an entry ``None`` is shared by every member, e.g. the bank).
    Every output gets the member axis.

    ``vmap`` batches the members into one computation; ``map`` runs them one after the other inside
    the same program (``lax.map``: per member the very program of a single member, so no batched
    convolutions with per-member kernels); ``auto``: ``map`` on CPU, where it is faster
    (BENCHMARKS.md, "Seeds in one program on CPU"), ``vmap`` on accelerators. The two give the same
    numbers up to the order of floating-point sums."""
    if batching not in MEMBER_BATCHING:
        raise ConfigError(f"member batching must be one of {', '.join(MEMBER_BATCHING)}, got {batching!r}")
    if batching == "auto":
        batching = "map" if jax.default_backend() == "cpu" else "vmap"
    if batching == "vmap":
        return jax.vmap(fn, in_axes=in_axes)

    def in_turn(*args):
        mapped = tuple(a for a, ax in zip(args, in_axes) if ax == 0)

        def one(member_args):
            it = iter(member_args)
            return fn(*(next(it) if ax == 0 else a for a, ax in zip(args, in_axes)))

        return jax.lax.map(one, mapped)

    return in_turn


def make_parallel(make_train: Callable, config, env, env_params, network, n_devices: int | None = None,
                  axis_name: str = "devices", **kwargs):
    """A learner's training functions (``make_train(config, env, env_params, network, axis_name=...,
    **kwargs)``) data-parallel over ``n_devices`` local devices with ``jax.pmap``: every device acts in
    its own environments and the gradients are ``lax.pmean``-ed over ``axis_name``. Returns
    ``(init, run_chunk)``: ``init(key, bank)`` gives a runner state with a leading device axis;
    ``run_chunk(state, bank)``. The bank is broadcast to every device."""
    n = n_devices or jax.local_device_count()
    fns = make_train(config, env, env_params, network, axis_name=axis_name, **kwargs)
    devices = jax.local_devices()[:n]
    p_init = jax.pmap(lambda _, key, bank: fns.init(key, bank), axis_name=axis_name, in_axes=(0, None, None), devices=devices)
    p_chunk = jax.pmap(fns.run_chunk, axis_name=axis_name, in_axes=(0, None), devices=devices)

    def init(key, bank):
        return p_init(jnp.arange(n), key, bank)

    return init, p_chunk


def init_network(network, key, obs, env):
    """``network.init(key, obs)``, refusing a network whose action outputs do not match the env
    (:class:`ConfigError` at trace time: e.g. a 6-output Q-network on the plane env's 8 actions would
    otherwise train without ever taking the missing actions). ``obs``: ``(B, ...)`` observations."""
    params = network.init(key, obs)
    out = jax.eval_shape(network.apply, params, obs)
    logits = out[0] if isinstance(out, tuple) else out  # actor-critic: (logits, value)
    if logits.shape[-1] != env.num_actions:
        raise ConfigError(f"the network has {logits.shape[-1]} action outputs but env {env.name!r} has {env.num_actions} "
                          f"actions; set network.n_actions (or build the network for this env)")
    return params


#: Runner-state fields that hold data about the bank's subjects: replayed transitions, in-flight
#: n-step windows, env states and their observations. Replay stores env states, not pixels, and
#: re-renders observations from the bank when it samples, so a transition is only valid with the
#: subjects it was collected on: after a bank refresh it would pair one subject's observation with
#: another subject's reward.
BANK_BOUND_FIELDS = ("buffer", "window", "env_state", "obs")


def restart_on_new_bank(rs, fresh):
    """``rs`` (a learner's runner state) with every :data:`BANK_BOUND_FIELDS` field it has taken
    from ``fresh``, a runner state initialised on the new bank: the replay buffer starts empty
    (learning pauses until it holds ``learning_starts`` again), episodes restart on the new subjects;
    parameters, optimiser state, counters, keys and hyperparameters carry on."""
    return rs.replace(**{f: getattr(fresh, f) for f in BANK_BOUND_FIELDS if hasattr(rs, f)})


def summarise_chunk_metrics(metrics: dict) -> dict[str, float]:
    """A chunk's metrics fetched to the host, with a device or seed axis or none -> their mean as
    floats, plus ``<name>_std`` across seeds / devices (counters ``steps`` and ``updates`` excepted);
    NaN where no value is finite (a chunk in which no episode ended)."""
    row = {}
    for k, v in metrics.items():
        v = np.asarray(v, np.float64)
        row[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        if v.ndim and v.size > 1 and k not in ("steps", "updates"):
            row[k + "_std"] = float(np.nanstd(v)) if np.isfinite(v).any() else float("nan")
    return row


def member_params(params, members: int, member: int = 0):
    """The parameters of member ``member`` of a run that trained ``members`` seeds at once (their
    leaves carry a leading seed axis when ``members > 1``; a single run's parameters are returned
    as they are). :class:`ConfigError` when ``member`` is out of range."""
    if members <= 1:
        return params
    if not 0 <= member < members:
        raise ConfigError(f"seed {member} out of range: the run trained {members} seeds")
    return jax.tree.map(lambda x: x[member], params)
