"""Multi-host (multi-process) data-parallel DQN training over ``jax.distributed``.

One Python process runs per host (or, for tests, several per machine); every process calls
:func:`initialize` first, then builds the *same* learner with :func:`make_multihost_train` and runs
the *same* sequence of calls (multi-controller SPMD: every process traces and runs every step).

Mechanism: ``jax.shard_map`` over a global one-axis :class:`jax.sharding.Mesh` of ``jax.devices()``
(the devices of *all* processes, process-major), wrapping the per-device functions of
:func:`jaxmed.agents.dqn.make_train` with ``axis_name="devices"``. Hence:

* **Sharded by device, hence by process**: the vectorised environments (``config.n_envs`` per
  device), the replay buffer (``config.replay_capacity`` per device), the PRNG key streams. A
  process only holds (and can read) the shards of its own devices.
* **Replicated**: the volume bank (every process loads the same bank; it is turned into a global,
  fully replicated array), the network, optimiser and target parameters.
* **Averaged over every device of every process**: gradients, loss and the logged metrics
  (``lax.pmean`` over the global ``"devices"`` axis; on CPU the cross-process collectives use Gloo).

Environment keys are folded with the *global* device index ``lax.axis_index("devices")``, which is
unique per (process, local device) pair (``process_index * local_device_count + local index`` for
the usual homogeneous cluster), so no two devices of any process explore the same environments;
the network is initialised from the part of the key that is not folded, so it is identical
everywhere. :func:`make_multihost_train`'s ``init`` broadcasts process 0's key to all processes, so
the initialisation is identical even if the processes were started with different seeds.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmed.agents.core import TrainFns
from jaxmed.agents.dqn import DQNConfig, make_train
from jaxmed.errors import ConfigError

AXIS = "devices"

ENV_COORDINATOR = "JAXMED_COORDINATOR"
ENV_NUM_PROCESSES = "JAXMED_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXMED_PROCESS_ID"
ENV_LOCAL_DEVICE_COUNT = "JAXMED_LOCAL_DEVICE_COUNT"
ENV_CPU_COLLECTIVES = "JAXMED_CPU_COLLECTIVES"


class ClusterInfo(NamedTuple):
    """What :func:`initialize` resolved (``None`` where JAX's cluster auto-detection decided)."""

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    local_device_count: int | None


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_count: int | None = None,
    cpu_collectives: str | None = None,
    **kwargs: Any,
) -> ClusterInfo:
    """Join this process to a multi-process JAX cluster (a thin wrapper of ``jax.distributed.initialize``).

    Call it once per process, *before* any other JAX call (creating arrays, ``jax.devices()``...).
    Each argument left ``None`` is read from an environment variable:

    ======================  ============================  ===========================================
    argument                environment variable          meaning
    ======================  ============================  ===========================================
    coordinator_address     ``JAXMED_COORDINATOR``        ``host:port`` of process 0 (reachable by all)
    num_processes           ``JAXMED_NUM_PROCESSES``      total number of processes
    process_id              ``JAXMED_PROCESS_ID``         this process, ``0 .. num_processes - 1``
    local_device_count      ``JAXMED_LOCAL_DEVICE_COUNT`` CPU devices per process (CPU runs only)
    cpu_collectives         ``JAXMED_CPU_COLLECTIVES``    ``gloo`` (default) or ``mpi``
    ======================  ============================  ===========================================

    If none of the first three is given anywhere, ``jax.distributed.initialize()`` is called
    without them so that JAX's own cluster detection (SLURM, Open MPI, Kubernetes, Cloud TPU) fills
    them in. ``local_device_count`` sets ``jax_num_cpu_devices`` (the CPU backend only; accelerator
    hosts use all their local devices; pass ``local_device_ids=...`` to restrict them). Cross-process
    collectives on the CPU backend need ``jax_cpu_collectives_implementation`` (``gloo`` is built into
    jaxlib; ``mpi`` needs an MPI library). Extra keyword arguments (``initialization_timeout``,
    ``local_device_ids``, ...) go to ``jax.distributed.initialize`` unchanged.

    Calling it again after a successful initialisation is a no-op. Raises :class:`ConfigError` for
    inconsistent settings.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    local_device_count = local_device_count if local_device_count is not None else _env_int(ENV_LOCAL_DEVICE_COUNT)
    cpu_collectives = cpu_collectives or os.environ.get(ENV_CPU_COLLECTIVES) or "gloo"
    info = ClusterInfo(coordinator_address, num_processes, process_id, local_device_count)

    if num_processes is not None and num_processes < 1:
        raise ConfigError(f"num_processes must be >= 1, got {num_processes}")
    if process_id is not None and (process_id < 0 or (num_processes is not None and process_id >= num_processes)):
        raise ConfigError(f"process_id must be in [0, {num_processes}), got {process_id}")
    if local_device_count is not None and local_device_count < 1:
        raise ConfigError(f"local_device_count must be >= 1, got {local_device_count}")
    given = [x is not None for x in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given) and coordinator_address is None:
        raise ConfigError(
            f"multi-host set-up needs a coordinator address (argument or {ENV_COORDINATOR}=host:port) "
            f"when num_processes / process_id are given"
        )
    if cpu_collectives not in ("gloo", "mpi"):
        raise ConfigError(f"cpu_collectives must be 'gloo' or 'mpi', got {cpu_collectives!r}")

    if jax.distributed.is_initialized():
        return info
    if local_device_count is not None:
        jax.config.update("jax_num_cpu_devices", int(local_device_count))
    if "jax_cpu_collectives_implementation" in jax.config.values:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id, **kwargs
        )
    except ValueError as e:
        if coordinator_address is None:
            raise ConfigError(
                f"no multi-host cluster found ({e}): set {ENV_COORDINATOR}=host:port, {ENV_NUM_PROCESSES} and "
                f"{ENV_PROCESS_ID} in every process (or pass them), or launch under SLURM / Open MPI"
            ) from e
        raise
    return info


class MultihostTrain(NamedTuple):
    """Training functions over every device of every process.

    ``init(key, bank) -> RunnerState`` and ``run_chunk(state, bank) -> (state, metrics)`` take and
    return *global* arrays: each leaf of the state has a leading axis of ``jax.device_count()``
    devices, sharded over the mesh (a process sees only its own devices' rows: use
    :func:`local_rows`); the metrics are global fully replicated scalars, already averaged over all
    devices (``float(m["loss"])`` works in every process). ``bank`` may be the ordinary host-local
    :class:`~jaxmed.data.VolumeBank` (it is made global on each call) or, cheaper, the result of
    ``replicate(bank)`` done once. ``run_chunk`` donates the state it is given (the replay buffers
    are large): use only the state it returns.
    """

    init: Callable
    run_chunk: Callable
    replicate: Callable
    mesh: Mesh
    fns: TrainFns


def local_rows(tree):
    """The process-local part of a state returned by :class:`MultihostTrain`: numpy arrays whose
    leading axis runs over this process's devices (in mesh order). Typed PRNG keys become key data."""

    def rows(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
        return np.concatenate([np.asarray(s.data) for s in shards], axis=0)

    return jax.tree.map(rows, tree)


def make_multihost_train(config: DQNConfig, env, env_params, network, devices=None) -> MultihostTrain:
    """The DQN training step data-parallel over all global devices (all processes) with ``shard_map``.

    Call after :func:`initialize` in every process, with the same ``config``, environment, network
    and bank everywhere. ``devices`` defaults to ``jax.devices()`` (every device of every process);
    a single-process run works too (then it is :func:`jaxmed.agents.dqn.make_parallel_train` written
    with ``shard_map``). Every process must call ``init`` / ``run_chunk`` the same number of times.
    """
    devices = list(jax.devices() if devices is None else devices)
    mesh = Mesh(np.array(devices), (AXIS,))
    replicated = NamedSharding(mesh, P())
    fns = make_train(config, env, env_params, network, axis_name=AXIS)

    def replicate(tree):
        """Turn a host-local pytree (identical in every process) into global replicated arrays."""

        def one(x):
            if isinstance(x, jax.Array) and x.sharding == replicated:
                return x
            return jax.make_array_from_process_local_data(replicated, np.asarray(x))

        return jax.tree.map(one, tree)

    def block_init(key_data, bank, impl):
        key = jax.random.wrap_key_data(key_data[0], impl=impl)
        return jax.tree.map(lambda x: x[None], fns.init(key, bank))

    def block_chunk(rs, bank):
        rs, metrics = fns.run_chunk(jax.tree.map(lambda x: x[0], rs), bank)
        return jax.tree.map(lambda x: x[None], rs), metrics

    sharded_inits = {}  # one compiled init per PRNG implementation

    def sharded_init(key_data, bank, impl):
        if impl not in sharded_inits:
            body = lambda k, b: block_init(k, b, impl)  # noqa: E731
            sharded_inits[impl] = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P()), out_specs=P(AXIS)))
        return sharded_inits[impl](key_data, bank)
    sharded_chunk = jax.jit(
        jax.shard_map(block_chunk, mesh=mesh, in_specs=(P(AXIS), P()), out_specs=(P(AXIS), P())),
        donate_argnums=0,
    )

    def init(key, bank):
        if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)
        impl = str(jax.random.key_impl(key))
        key_data = np.asarray(jax.random.key_data(key))[None]
        if jax.process_count() > 1:  # one network initialisation everywhere, whatever each process was given
            from jax.experimental import multihost_utils

            key_data = np.asarray(multihost_utils.broadcast_one_to_all(key_data))
        return sharded_init(replicate(key_data), replicate(bank), impl)

    def run_chunk(state, bank):
        return sharded_chunk(state, replicate(bank))

    return MultihostTrain(init=init, run_chunk=run_chunk, replicate=replicate, mesh=mesh, fns=fns)
