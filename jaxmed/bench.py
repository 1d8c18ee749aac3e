"""Scaling studies (``jaxmed bench``): a grid over experiment configs, named config variants,
learners, parallel environments, devices, processes, agents, crop size, bank dtype and trunk; per
grid point the environment's agent-steps/s, the training program's env-steps/s and updates/s, its
compile time and the peak memory, into JSON, a Markdown table and throughput curves with
ideal-scaling lines. This module is the one place where jaxmed measures throughput: the
``benchmarks/`` scripts are grid files over it (``benchmarks/grids/*.yaml``) or use its timing
helpers (:func:`timed`, :func:`compile_timed`, :func:`make_random_rollout`) for what a grid cannot
express (the NumPy reference env, the Python-loop DQN, single kernels against NumPy/SciPy).

Every grid point runs in a fresh subprocess (``python -m jaxmed.bench --point JSON``) so that the
device axis can use fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N`` must be
set before JAX is imported) and the peak memory is that point's alone. The JSON is rewritten after
every point, so a killed study keeps what it measured.

Grid YAML (every key optional; ``axes`` values are lists; paths relative to the working directory)::

    config: configs/phantom_dqn.yaml    # base experiment (the ``config`` axis replaces it per point)
    overrides: [data.n_train=2]         # section.key=value applied to it first
    variants:                           # named override sets, chosen per point by the ``variant`` axis
      shared: [network.share_trunk=true]
      independent: [network.share_trunk=false]
    measure: [env, train]               # what to time (default both)
    chunks: 3                           # timed training chunks per point (after one warm-up chunk)
    env_steps: 50                       # steps per timed call of the random-action environment rollout
    min_time: 0.0                       # seconds of repeated env rollout calls (median; at least one)
    axes: {config: [...], variant: [shared, independent], learner: [dqn, ppo], n_envs: [16, 64],
           devices: [1, 2, 4], processes: [1, 2], agents: [1, 2], crop_size: [15, 25],
           dtype: [uint8, float16], trunk: [patch, strided]}

Units: ``env_agent_steps_per_s`` = single-agent environment steps per second of the random-action
rollout (``n_envs x devices x processes x agents`` per vector step, reset excluded);
``train_env_steps_per_s`` = environment steps per second of the whole training program (acting,
env, replay, updates) over every device of every process; ``updates_per_s`` = gradient updates per
second (synchronous data-parallel updates count once); ``compile_s`` = first chunk's time minus a
steady chunk's; ``peak_memory_bytes`` = the device's ``peak_bytes_in_use`` where the backend reports
it, else the process's peak RSS (``memory_source`` says which; process 0's under several processes).

**Devices and processes.** ``devices`` is the number of data-parallel devices *per process*
(``n_envs`` environments each). Without a ``processes`` axis a point trains with the learner's own
single-process program (``pmap`` over ``devices``). With a ``processes`` axis every point (also
``processes: 1``) trains DQN with :func:`jaxmed.agents.distributed.make_multihost_train`
(``shard_map`` over the global mesh of ``processes x devices`` devices, gradients averaged over all
of them): ``processes`` local Python processes are launched per point, each with ``devices`` fake
CPU devices, joined by ``jax.distributed`` on ``localhost`` (the ``JAXMED_*`` variables of
:func:`jaxmed.agents.distributed.initialize`; ``processes: 1`` runs the same program without
``jax.distributed``, whose Gloo CPU collectives also carry a process's own all-reduces and cost
tens of milliseconds each on a small CPU). On a real cluster, start one process per host
running the same command with ``--cluster`` (see :func:`run_grid`): each process reads
``JAXMED_COORDINATOR`` / ``JAXMED_NUM_PROCESSES`` / ``JAXMED_PROCESS_ID`` (or SLURM / Open MPI
detection), measures every point in-process over all devices of all hosts, and process 0 writes
the results.

Shared helpers of the ``benchmarks/`` scripts (:func:`machine_info`, :func:`fmt`,
:func:`save_figure`, :func:`machine_line`, :func:`timed`, :func:`compile_timed`,
:func:`make_random_rollout`) live here too.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from jaxmed.errors import ConfigError
from jaxmed.local_cluster import launch_local_processes

AXES = ("config", "variant", "learner", "n_envs", "devices", "processes", "agents", "crop_size", "dtype", "trunk")
GRID_KEYS = ("config", "overrides", "variants", "measure", "chunks", "env_steps", "min_time", "axes")
MEASURES = ("env", "train")
RESULT_KEYS = ("env_agent_steps_per_s", "train_env_steps_per_s", "updates_per_s", "compile_s", "peak_memory_bytes", "memory_source")
MESH_AXIS = "devices"


# ------------------------------------------------------------------ shared benchmark helpers


def machine_info() -> dict:
    """CPU, cores, load, versions, JAX device and the git commit of the checkout (for result files)."""
    import jax

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    dev = jax.devices()[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_avg_1m_at_start": load_avg(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "numpy": np.__version__,
        "device": f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}",
        "n_devices": jax.device_count(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": commit,
    }


def load_avg() -> float | None:
    """The 1-minute load average (``None`` where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def fmt(x, digits=3) -> str:
    """A number for a Markdown table: thousands separators from 100 up, ``digits`` significant below."""
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def machine_line(m: dict) -> str:
    """One line naming the machine of a result (for figure titles)."""
    return f"{m['cpu']}, {m['cores']} cores, {m['device']}, jax {m['jax']}, {m['date'][:10]}, {m.get('git_commit') or ''}"


def save_figure(fig, path: Path, title: str) -> None:
    """Title, lay out, write (PNG, 110 dpi) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timed(call: Callable[[], Any], min_time: float, min_reps: int = 1, max_reps: int = 50, warmup: bool = True,
          max_total: float | None = None) -> tuple[float, int]:
    """``(median seconds, repeats)`` of ``call()`` (which must block until its result is ready):
    at least ``min_reps`` calls and at least ``min_time`` seconds in all (at most ``max_reps``
    calls; stopping early once ``max_total`` seconds are spent, after at least one call), after one
    untimed warm-up call unless ``warmup=False``."""
    if warmup:
        call()
    times: list[float] = []
    while not times or ((len(times) < min_reps or (sum(times) < min_time and len(times) < max_reps))
                        and not (max_total is not None and sum(times) >= max_total)):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), len(times)


def compile_timed(fn, *example):
    """``(compiled, seconds)``: ``fn`` (jitted here unless it already is) lowered and compiled for the
    example arguments, and the seconds that took."""
    import jax

    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    t = time.perf_counter()
    compiled = jitted.lower(*example).compile()
    return compiled, time.perf_counter() - t


def make_random_rollout(env, n_envs: int, n_steps: int):
    """``rollout(key, state, obs, params, bank) -> (key, state, obs, episode_ends)``: ``n_steps``
    steps of ``n_envs`` vmapped environments under uniformly random actions drawn inside a
    ``lax.scan`` (auto-reset included; the observation is carried so every step's is written).
    ``state`` / ``obs`` have a leading ``n_envs`` axis; ``episode_ends`` is an int32 scalar (episodes
    that ended, terminated or truncated). Not jitted: jit it (donating state and obs) or map it."""
    import jax
    import jax.numpy as jnp

    step = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))
    n_actions = env.num_actions

    def rollout(key, state, obs, params, bank):
        def body(carry, _):
            key, state, _, ends = carry
            key, k_act, k_step = jax.random.split(key, 3)
            actions = jax.random.randint(k_act, (n_envs, env.n_agents), 0, n_actions, dtype=jnp.int32)
            obs, state, _, terminated, truncated, _ = step(jax.random.split(k_step, n_envs), state, actions, params, bank)
            return (key, state, obs, ends + jnp.sum(terminated | truncated)), None

        (key, state, obs, ends), _ = jax.lax.scan(body, (key, state, obs, jnp.zeros((), jnp.int32)), None, length=n_steps)
        return key, state, obs, ends

    return rollout


def reset_batch(env, n_envs: int, params, bank, key):
    """``(key, state, obs)``: ``n_envs`` freshly reset environments and a key for what follows."""
    import jax

    keys = jax.random.split(key, n_envs + 1)
    obs, state = jax.vmap(env.reset, in_axes=(0, None, None))(keys[1:], params, bank)
    return keys[0], state, obs


# ------------------------------------------------------------------ the grid


def load_grid(data: dict | None, where: str = "grid") -> dict:
    """Validate a grid mapping and fill the defaults (:class:`ConfigError` naming ``where``)."""
    data = dict(data or {})
    unknown = set(data) - set(GRID_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(GRID_KEYS)}")
    axes = data.get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}.axes: expected a mapping of axis -> list of values")
    bad = set(axes) - set(AXES)
    if bad:
        raise ConfigError(f"{where}.axes: unknown axis {sorted(bad)}; axes: {', '.join(AXES)}")
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}.axes.{k}: expected a non-empty list, got {v!r}")
    for k in ("n_envs", "devices", "processes", "agents", "crop_size"):
        if any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in axes.get(k, [])):
            raise ConfigError(f"{where}.axes.{k}: values must be integers >= 1, got {axes[k]!r}")
    variants = data.get("variants") or {}
    if not isinstance(variants, dict) or any(not isinstance(v, list) for v in variants.values()):
        raise ConfigError(f"{where}.variants: expected a mapping of name -> list of section.key=value overrides")
    missing = [v for v in axes.get("variant", []) if v not in variants]
    if missing:
        raise ConfigError(f"{where}.axes.variant: {missing} not defined under variants (defined: {sorted(variants)})")
    measure = data.get("measure", list(MEASURES))
    if isinstance(measure, str):
        measure = [measure]
    if not measure or any(m not in MEASURES for m in measure):
        raise ConfigError(f"{where}.measure: expected a non-empty list of {', '.join(MEASURES)}, got {measure!r}")
    if "processes" in axes and "train" not in measure:
        raise ConfigError(f"{where}: the processes axis measures multi-host training; add 'train' to measure")
    grid = {"config": str(data.get("config", "configs/phantom_dqn.yaml")), "overrides": list(data.get("overrides") or []),
            "variants": {str(k): list(v) for k, v in variants.items()}, "measure": list(measure),
            "chunks": int(data.get("chunks", 3)), "env_steps": int(data.get("env_steps", 50)),
            "min_time": float(data.get("min_time", 0.0)), "axes": axes}
    if grid["chunks"] < 1 or grid["env_steps"] < 1 or grid["min_time"] < 0:
        raise ConfigError(f"{where}: chunks and env_steps must be >= 1 and min_time >= 0")
    return grid


def points(grid: dict) -> list[dict]:
    """The grid points (cartesian product of the axes, in :data:`AXES` order, the first slowest)."""
    axes = grid["axes"]
    names = [a for a in AXES if a in axes]
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[a] for a in names))]


def point_config(grid: dict, point: dict):
    """The experiment config of one grid point (validated)."""
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.experiment import ExperimentConfig, template

    data = apply_overrides(load_yaml(point.get("config", grid["config"])), grid["overrides"])
    if "variant" in point:
        data = apply_overrides(data, grid["variants"][point["variant"]])
    data.setdefault("train", {})
    learner = point.get("learner", data["train"].get("learner", "dqn"))
    multihost = "processes" in point
    if multihost and learner != "dqn" and "train" in grid["measure"]:
        raise ConfigError(f"processes={point['processes']}: multi-host training exists for the dqn learner only, not {learner}")
    over = [f"train.learner={learner}", "train.seeds=1", f"train.devices={1 if multihost else point.get('devices', 1)}"]
    if "n_envs" in point:
        over.append(f"{learner}.n_envs={point['n_envs']}")
    if "crop_size" in point:
        over.append(f"env.crop_size={point['crop_size']}")
    if "dtype" in point:
        over.append(f"data.dtype={point['dtype']}")
    if "trunk" in point:
        # another trunk replaces the whole trunk section (its options belong to the old trunk);
        # the same trunk keeps its options
        trunk = (data.get("network") or {}).get("trunk")
        same = isinstance(trunk, dict) and trunk.get("name") == point["trunk"]
        if not same:
            over.append(f"network.trunk={point['trunk']}")
    data = apply_overrides(data, over)
    if learner == "dqn" and "train" in grid["measure"]:  # every timed step trains
        batch = int((data.get("dqn") or {}).get("batch_size", 48))
        data = apply_overrides(data, [f"dqn.learning_starts={batch}"])
    if "agents" in point:
        cfg = ExperimentConfig.from_dict(data, "grid point")
        labels = list(template(cfg.data)[1].labels)
        if point["agents"] > len(labels):
            raise ConfigError(f"agents={point['agents']}: the {cfg.data.source} template has {len(labels)} landmarks")
        data = apply_overrides(data, [f"env.targets={json.dumps(labels[: point['agents']])}"])
        if "n_agents" in (data.get("network") or {}):
            data = apply_overrides(data, [f"network.n_agents={point['agents']}"])
    return ExperimentConfig.from_dict(data, f"grid point {point}")


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
    from jax.sharding import NamedSharding, PartitionSpec as P

    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def measure_env(env, params, bank, n_envs: int, devices, n_steps: int, min_time: float = 0.0) -> dict:
    """Random-action environment throughput on ``devices`` (``n_envs`` environments each, every
    process of a cluster at once): ``shard_map`` of :func:`make_random_rollout` over a one-axis mesh.
    Returns ``env_agent_steps_per_s`` (reset and compilation excluded), ``env_seconds_per_call``,
    ``env_compile_s``."""
    import jax
    from jax.sharding import Mesh, PartitionSpec as P

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
        from jaxmed.train import _trainer

        init, chunk = _trainer(cfg, env, params, network)
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


# ------------------------------------------------------------------ processes


def _result_line(text: str) -> dict | None:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def _error_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines or ["no output"])[-1][:500]


def run_point_subprocess(grid: dict, point: dict, timeout_s: float = 600.0) -> dict:
    """Measure one point in fresh Python processes: one with ``point['devices']`` fake CPU devices
    (``python -m jaxmed.bench --point JSON``), or, for a ``processes`` point, that many forming a
    local CPU cluster, each running the grid of this one point in cluster mode exactly as every host
    of a real cluster runs ``jaxmed bench GRID --cluster`` (the result is the JSON process 0 writes)."""
    n = int(point.get("devices", 1))
    if "processes" in point:
        one = {**grid, "axes": {a: [v] for a, v in point.items() if a != "processes"}}
        with tempfile.TemporaryDirectory(prefix="jaxmed-bench-") as tmp:
            out = Path(tmp) / "point.json"
            cmd = [sys.executable, "-m", "jaxmed.bench", "--cluster-grid", json.dumps(one), "--out", str(out)]
            outs = launch_local_processes(cmd, int(point["processes"]), n, timeout_s)
            if outs[0][0] == 0 and out.exists():
                res = json.loads(out.read_text())["points"][0]
                return {k: v for k, v in res.items() if k not in point and k != "wall_s"}
        bad = next(((i, c, t) for i, (c, t) in enumerate(outs) if c not in (0, None)), None)
        if bad is None:
            return {"error": f"timed out after {timeout_s:.0f} s"}
        return {"error": f"process {bad[0]} (exit {bad[1]}): {_error_line(bad[2])}"}
    cmd = [sys.executable, "-m", "jaxmed.bench", "--point", json.dumps({"grid": grid, "point": point})]
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    res = _result_line(proc.stdout)
    if proc.returncode != 0 or res is None:
        return {"error": _error_line(proc.stderr)}
    return res


# ------------------------------------------------------------------ driver


def run_grid(grid: dict, out: str | Path, *, in_process: bool = False, cluster: bool = False, timeout_s: float = 600.0,
             progress: bool = True) -> dict:
    """Measure every grid point, rewriting ``out`` (JSON) after each; then the PNG beside it.

    ``in_process``: measure in this process (no subprocesses; the device axis cannot exceed the
    visible devices and the processes axis is not allowed). ``cluster``: this process is one of a
    multi-host cluster started by the user (one process per host, every one running the same
    command): :func:`jaxmed.agents.distributed.initialize` joins it, every point is measured in-process
    over the devices of all processes (the ``devices`` axis, if any, picks that many per process; no
    ``processes`` axis), and only process 0 writes ``out`` and prints.
    """
    if cluster:
        if "processes" in grid["axes"]:
            raise ConfigError("--cluster: the cluster's processes are given by the launch; drop the processes axis")
        from jaxmed.agents import distributed

        if distributed._env_int(distributed.ENV_NUM_PROCESSES) != 1:
            distributed.initialize()
        # (a one-process "cluster" skips jax.distributed: with it, the CPU backend runs even the
        # collectives between a process's own devices through Gloo, measured 15x slower on 2 cores)
        import jax

        grid = {**grid, "axes": {**grid["axes"], "processes": [jax.process_count()]}}
        in_process = True
        progress = progress and jax.process_index() == 0
        writer = jax.process_index() == 0
    else:
        if in_process and "processes" in grid["axes"]:
            raise ConfigError("the processes axis launches one process per cluster member; it cannot run in-process")
        writer = True
    out = Path(out)
    if not in_process:  # the points' subprocesses share the accelerator with this process
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    result = {"machine": machine_info(), "grid": grid, "points": []}
    if progress:
        m = result["machine"]
        print(f"jaxmed bench: {len(points(grid))} point(s) on {m['device']} ({m['n_devices']} device(s) visible; "
              f"jax {m['jax']})", flush=True)
    for p in points(grid):
        t0 = time.perf_counter()
        if in_process:
            try:
                m = measure_point(grid, p)
            except ConfigError as e:
                m = {"error": str(e)}
        else:
            m = run_point_subprocess(grid, p, timeout_s)
        result["points"].append({**p, **m, "wall_s": time.perf_counter() - t0})
        if writer:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".json.part")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(out)
        if progress:
            print(f"{p}: {_progress(m)}", flush=True)
    if writer:
        plot(result, out.with_suffix(".png"))
    return result


def _progress(m: dict) -> str:
    if "error" in m:
        return "error: " + m["error"]
    parts = []
    if "env_agent_steps_per_s" in m:
        parts.append(f"{fmt(m['env_agent_steps_per_s'])} env agent-steps/s")
    if "train_env_steps_per_s" in m:
        parts.append(f"{fmt(m['train_env_steps_per_s'])} train env-steps/s")
    return ", ".join(parts)


def _axis_label(value) -> str:
    return Path(value).stem if isinstance(value, str) and value.endswith((".yaml", ".yml")) else str(value)


def markdown(result: dict) -> str:
    """The result as a Markdown table (one row per point; ``—`` for what the grid did not measure)."""
    axes = [a for a in AXES if a in result["grid"]["axes"]]
    cols = ["env agent-steps/s", "train env-steps/s", "updates/s", "compile s", "peak memory MB", "load"]
    lines = ["| " + " | ".join(axes + cols) + " |", "|" + "---|" * (len(axes) + len(cols))]
    for r in result["points"]:
        if "error" in r:
            vals = [f"error: {r['error'][:80]}"] + [""] * (len(cols) - 1)
        else:
            mem = r.get("peak_memory_bytes")
            vals = [fmt(r.get("env_agent_steps_per_s")), fmt(r.get("train_env_steps_per_s")), fmt(r.get("updates_per_s")),
                    fmt(r.get("compile_s", r.get("env_compile_s"))), fmt(None if mem is None else mem / 2**20),
                    fmt(r.get("load_avg_1m"))]
        lines.append("| " + " | ".join([_axis_label(r.get(a, "")) for a in axes] + vals) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Throughput vs ``n_envs``, ``devices``, ``processes`` and ``agents`` (each axis with several
    values; one line per combination of the other axes) with dashed ideal-scaling lines from each
    line's smallest point: one panel per measured quantity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["points"] if "error" not in r]
    xs = [a for a in ("n_envs", "devices", "processes", "agents") if len(result["grid"]["axes"].get(a, [])) > 1]
    keys = [(k, lab) for k, lab in (("env_agent_steps_per_s", "env agent-steps/s"), ("train_env_steps_per_s", "training env-steps/s"))
            if any(r.get(k) is not None for r in rows)]
    if not rows or not keys:
        return
    if not xs:  # only categorical axes vary (configs, variants, learners, ...): bars per point
        _plot_bars(result, rows, keys)
        save_figure(plt.gcf(), path, machine_line(result["machine"]))
        return
    fig, axs = plt.subplots(len(xs), len(keys), figsize=(5 * len(keys), 3.6 * len(xs)), squeeze=False)
    for row_ax, x in zip(axs, xs):
        others = [a for a in AXES if a in result["grid"]["axes"] and a != x]
        series: dict[tuple, list] = {}
        for r in rows:
            series.setdefault(tuple(r.get(a) for a in others), []).append(r)
        for ax, (key, label) in zip(row_ax, keys):
            for name, rs in series.items():
                rs = sorted((r for r in rs if r.get(key) is not None), key=lambda r: r[x])
                if not rs:
                    continue
                xv = np.array([r[x] for r in rs], float)
                yv = np.array([r[key] for r in rs], float)
                tag = ", ".join(f"{a}={_axis_label(v)}" for a, v in zip(others, name))
                line, = ax.plot(xv, yv, "o-", label=tag or None)
                ax.plot(xv, yv[0] * xv / xv[0], "--", color=line.get_color(), alpha=0.5, lw=1)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(x + (" (per device)" if x == "n_envs" else " (per process)" if x == "devices" and "processes" in others else ""))
            ax.set_ylabel(label)
            ax.set_title(f"{label} vs {x} (dashed: ideal scaling)", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if len(series) > 1:
                ax.legend(fontsize=7)
    save_figure(fig, path, machine_line(result["machine"]))


def _plot_bars(result: dict, rows: list[dict], keys: list[tuple[str, str]]) -> None:
    """One bar per grid point for each measured quantity, labelled by its axis values."""
    import matplotlib.pyplot as plt

    axes = [a for a in AXES if a in result["grid"]["axes"]]
    labels = ["\n".join(_axis_label(r.get(a)) for a in axes if len(result["grid"]["axes"][a]) > 1) or "point" for r in rows]
    fig, axs = plt.subplots(1, len(keys), figsize=(max(4.0, 1.4 * len(rows)) * len(keys), 4.2), squeeze=False)
    for ax, (key, label) in zip(axs[0], keys):
        vals = [r.get(key) or 0.0 for r in rows]
        ax.bar(range(len(rows)), vals, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), labels, fontsize=7)
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=9)
        ax.grid(True, axis="y", which="both", alpha=0.3)


def _child(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="measure jaxmed bench grid points (run by jaxmed bench)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--point", help="JSON {grid, point}: measure it here and print the result JSON")
    what.add_argument("--cluster-grid", help="JSON grid: run it as one process of a cluster (run_grid(cluster=True))")
    p.add_argument("--out", help="result JSON of --cluster-grid (written by process 0)")
    args = p.parse_args(argv)
    if args.cluster_grid:
        if not args.out:
            p.error("--cluster-grid needs --out")
        run_grid(load_grid(json.loads(args.cluster_grid)), args.out, cluster=True, progress=False)
        import jax

        if jax.distributed.is_initialized():
            jax.distributed.shutdown()
        return 0
    spec = json.loads(args.point)
    try:
        res = measure_point(spec["grid"], spec["point"])
    except ConfigError as e:
        res = {"error": str(e)}
    print(json.dumps(res), flush=True)
    return 0


def grid_from_args(args) -> dict:
    """The grid of ``jaxmed bench``: the YAML file (if any) with the command-line axes replacing its own."""
    data = yaml.safe_load(Path(args.grid).read_text()) if args.grid else {}
    if args.grid and not isinstance(data, dict):
        raise ConfigError(f"{args.grid}: a grid must be a mapping")
    data = dict(data or {})
    axes = dict(data.get("axes") or {})
    for a in AXES:
        v = getattr(args, a, None) if a != "config" else args.configs  # --config is the base experiment
        if v:
            axes[a] = v
    data["axes"] = axes
    for k in ("config", "chunks", "env_steps", "min_time", "measure"):
        if getattr(args, k, None) is not None:
            data[k] = getattr(args, k)
    if args.overrides:
        data["overrides"] = list(data.get("overrides") or []) + args.overrides
    return load_grid(data, args.grid or "jaxmed bench")


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
