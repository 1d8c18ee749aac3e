"""Measuring one grid point in this process: the random-action environment rollout over a device
mesh, the training program's chunks, the peak memory."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from jaxmed.bench.grid import point_config
from jaxmed.bench.timing import compile_timed, load_avg, make_random_rollout, reset_batch, timed
from jaxmed.errors import ConfigError

MESH_AXIS = "devices"


def _peak_memory() -> tuple[int, str]:
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # backends without memory statistics
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS"


def point_devices(n_per_process: int | None):
    """The devices a point runs on: the first ``n_per_process`` local devices of every process
    (all of them if ``None``), process-major. :class:`ConfigError` if a process has fewer."""
    import jax

    groups: dict[int, list] = {}
    for d in jax.devices():
        groups.setdefault(d.process_index, []).append(d)
    n = n_per_process or min(len(g) for g in groups.values())
    short = [p for p, g in groups.items() if len(g) < n]
    if short:
        raise ConfigError(f"devices={n} per process but process(es) {short} have only {min(len(groups[p]) for p in short)}")
    return [d for p in sorted(groups) for d in groups[p][:n]]


def _replicate(mesh, tree):
    """A host-local pytree (identical in every process) as global arrays replicated over ``mesh``."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def measure_env(env, params, bank, n_envs: int, devices, n_steps: int, min_time: float = 0.0) -> dict:
    """Random-action environment throughput on ``devices`` (``n_envs`` environments each, every
    process of a cluster at once): ``shard_map`` of :func:`make_random_rollout` over a one-axis mesh.
    Returns ``env_agent_steps_per_s`` (reset and compilation excluded), ``env_seconds_per_call``,
    ``env_compile_s``."""
    import jax
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(devices), (MESH_AXIS,))
    rollout = make_random_rollout(env, n_envs, n_steps)
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)  # noqa: E731  (a device's block of a sharded state)
    lead = lambda tree: jax.tree.map(lambda x: x[None], tree)  # noqa: E731

    def reset_block(bank):
        key = jax.random.fold_in(jax.random.key(1), jax.lax.axis_index(MESH_AXIS))
        key, state, obs = reset_batch(env, n_envs, params, bank, key)
        return lead((jax.random.key_data(key), state, obs))

    def roll_block(key_data, state, obs, bank):
        key, state, obs, ends = rollout(jax.random.wrap_key_data(key_data[0]), first(state), first(obs), params, bank)
        return lead((jax.random.key_data(key), state, obs, ends))

    reset = jax.jit(jax.shard_map(reset_block, mesh=mesh, in_specs=P(), out_specs=P(MESH_AXIS), check_vma=False))
    roll = jax.jit(jax.shard_map(roll_block, mesh=mesh, in_specs=(P(MESH_AXIS),) * 3 + (P(),), out_specs=P(MESH_AXIS),
                                 check_vma=False),
                   donate_argnums=(1, 2))
    gbank = _replicate(mesh, bank)
    carry = list(jax.block_until_ready(reset(gbank)))
    compiled, compile_s = compile_timed(roll, *carry, gbank)

    def call():
        carry[:] = jax.block_until_ready(compiled(*carry, gbank))[:3]

    sec, reps = timed(call, min_time)
    return {"env_agent_steps_per_s": n_steps * n_envs * len(devices) * env.n_agents / sec, "env_seconds_per_call": sec,
            "env_repeats": reps, "env_compile_s": compile_s}


def measure_point(grid: dict, point: dict) -> dict:
    """Measure one grid point in this process. Without a ``processes`` axis JAX must see
    ``point['devices']`` local devices; with one, this process must be part of the cluster (already
    :func:`jaxmed.agents.distributed.initialize`-d when there are several processes)."""
    import jax

    from jaxmed import experiment as ex

    cfg = point_config(grid, point)
    multihost = "processes" in point
    if multihost:  # every process's first `devices` local devices (default: all of them)
        if jax.process_count() != point["processes"]:
            raise ConfigError(f"processes={point['processes']} but this cluster has {jax.process_count()} process(es)")
        devices = point_devices(point.get("devices"))
    else:
        per_process = int(point.get("devices", 1))
        if jax.local_device_count() < per_process:
            raise ConfigError(f"devices={per_process} but only {jax.local_device_count()} devices are visible")
        devices = jax.local_devices()[:per_process]
    bank, _, _ = ex.make_bank(cfg, "train", cfg.data.n_train)
    env, params, _ = ex.make_env(cfg, bank.labels)
    n_envs = cfg.learner.n_envs
    out: dict[str, Any] = {"n_agents_per_env": env.n_agents, "n_envs_per_device": n_envs, "global_devices": len(devices),
                           "processes": jax.process_count()}
    if "env" in grid["measure"]:
        out.update(measure_env(env, params, bank, n_envs, devices, grid["env_steps"], grid["min_time"]))
    if "train" in grid["measure"]:
        out.update(measure_train(cfg, env, params, bank, devices, multihost, grid["chunks"]))
    out["peak_memory_bytes"], out["memory_source"] = _peak_memory()
    out["device"] = f"{devices[0].platform}: {getattr(devices[0], 'device_kind', '')}"
    out["load_avg_1m"] = load_avg()
    return out


def measure_train(cfg, env, params, bank, devices, multihost: bool, chunks: int) -> dict:
    """Training throughput on ``devices``: ``chunks`` steady training chunks timed after one warm-up
    chunk (which also compiles). Returns ``train_env_steps_per_s``, ``updates_per_s`` (None for
    learners without an update counter), ``seconds_per_chunk`` and ``compile_s``."""
    import jax

    from jaxmed import experiment as ex

    network = ex.make_network(cfg, env)
    if multihost:
        from jaxmed.agents import distributed

        train = distributed.make_multihost_train(cfg.learner, env, params, network, devices=devices)
        bank = train.replicate(bank)
        init, chunk = train.init, train.run_chunk
    else:
        from jaxmed.agents.learners import make_trainer

        init, chunk = make_trainer(cfg.train, cfg.learner, env, params, network)
    rs = jax.block_until_ready(init(jax.random.key(0), bank))
    t0 = time.perf_counter()
    rs, m = chunk(rs, bank)
    jax.block_until_ready((rs, m))
    first = time.perf_counter() - t0
    before = _updates(m)
    t0 = time.perf_counter()
    for _ in range(chunks):
        rs, m = chunk(rs, bank)
    jax.block_until_ready((rs, m))
    dt = time.perf_counter() - t0
    after = _updates(m)
    return {"train_env_steps_per_s": cfg.learner.env_steps_per_chunk * len(devices) * chunks / dt,
            "updates_per_s": None if before is None else (after - before) / dt,
            "seconds_per_chunk": dt / chunks, "compile_s": max(first - dt / chunks, 0.0)}


def _updates(metrics) -> float | None:
    if "updates" not in metrics:
        return None
    return float(np.mean(np.asarray(metrics["updates"])))
