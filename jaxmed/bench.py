"""Scaling studies (``jaxmed bench``): a grid over parallel environments, agents, devices, crop size,
bank dtype, trunk and learner; per grid point the environment's agent-steps/s, the training
program's env-steps/s and updates/s, its compile time and the peak memory, into JSON, a Markdown
table and throughput curves with ideal-scaling lines.

Every grid point runs in a fresh subprocess (``python -m jaxmed.bench --point JSON``) so that the
device axis can use fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N`` must be
set before JAX is imported) and the peak memory is that point's alone. The JSON is rewritten after
every point, so a killed study keeps what it measured.

Grid YAML (every key optional; ``axes`` values are lists)::

    config: configs/phantom_dqn.yaml    # base experiment
    overrides: [data.n_train=2]         # section.key=value applied to it first
    chunks: 3                           # timed training chunks per point (after one warm-up chunk)
    env_steps: 50                       # steps of the timed random-action environment rollout
    axes: {n_envs: [16, 64], devices: [1, 2, 4], agents: [1, 2], crop_size: [15, 25],
           dtype: [uint8, float16], trunk: [patch, strided], learner: [dqn, ppo]}

Units: ``env_agent_steps_per_s`` = single-agent environment steps per second of the random-action
rollout (``n_envs x devices x agents`` per vector step); ``train_env_steps_per_s`` = environment
steps per second of the whole training program (acting, env, replay, updates); ``updates_per_s`` =
gradient updates per second (synchronous data-parallel updates count once); ``compile_s`` = first
chunk's time minus a steady chunk's; ``peak_memory_bytes`` = the device's ``peak_bytes_in_use``
where the backend reports it, else the process's peak RSS (``memory_source`` says which).

Shared helpers of the ``benchmarks/`` scripts (:func:`machine_info`, :func:`fmt`,
:func:`save_figure`, :func:`machine_line`) live here too.
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
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from jaxmed.errors import ConfigError

AXES = ("n_envs", "devices", "agents", "crop_size", "dtype", "trunk", "learner")
RESULT_KEYS = ("env_agent_steps_per_s", "train_env_steps_per_s", "updates_per_s", "compile_s", "peak_memory_bytes", "memory_source")


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
        "load_avg_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "numpy": np.__version__,
        "device": f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}",
        "n_devices": jax.device_count(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": commit,
    }


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


# ------------------------------------------------------------------ the grid


def load_grid(data: dict | None, where: str = "grid") -> dict:
    """Validate a grid mapping and fill the defaults."""
    data = dict(data or {})
    unknown = set(data) - {"config", "overrides", "chunks", "env_steps", "axes"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: config, overrides, chunks, env_steps, axes")
    axes = data.get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}.axes: expected a mapping of axis -> list of values")
    bad = set(axes) - set(AXES)
    if bad:
        raise ConfigError(f"{where}.axes: unknown axis {sorted(bad)}; axes: {', '.join(AXES)}")
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}.axes.{k}: expected a non-empty list, got {v!r}")
    for k in ("n_envs", "devices", "agents", "crop_size"):
        if any(not isinstance(x, int) or x < 1 for x in axes.get(k, [])):
            raise ConfigError(f"{where}.axes.{k}: values must be integers >= 1, got {axes[k]!r}")
    grid = {"config": str(data.get("config", "configs/phantom_dqn.yaml")), "overrides": list(data.get("overrides") or []),
            "chunks": int(data.get("chunks", 3)), "env_steps": int(data.get("env_steps", 50)), "axes": axes}
    if grid["chunks"] < 1 or grid["env_steps"] < 1:
        raise ConfigError(f"{where}: chunks and env_steps must be >= 1")
    return grid


def points(grid: dict) -> list[dict]:
    """The grid points (cartesian product of the axes, in axis order)."""
    axes = grid["axes"]
    names = [a for a in AXES if a in axes]
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[a] for a in names))]


def point_config(grid: dict, point: dict):
    """The experiment config of one grid point (validated)."""
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.experiment import ExperimentConfig, template

    data = apply_overrides(load_yaml(grid["config"]), grid["overrides"])
    data.setdefault("train", {})
    learner = point.get("learner", data["train"].get("learner", "dqn"))
    over = [f"train.learner={learner}", "train.seeds=1", f"train.devices={point.get('devices', 1)}"]
    if "n_envs" in point:
        over.append(f"{learner}.n_envs={point['n_envs']}")
    if "crop_size" in point:
        over.append(f"env.crop_size={point['crop_size']}")
    if "dtype" in point:
        over.append(f"data.dtype={point['dtype']}")
    if "trunk" in point:
        trunk = data.get("network", {}).get("trunk")
        over.append(f"network.trunk.name={point['trunk']}" if isinstance(trunk, dict) else f"network.trunk={point['trunk']}")
    data = apply_overrides(data, over)
    if learner == "dqn":  # every timed step trains
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
        stats = jax.devices()[0].memory_stats()
    except Exception:  # backends without memory statistics
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS"


def measure_point(grid: dict, point: dict) -> dict:
    """Measure one grid point in this process (JAX must already see ``point['devices']`` devices)."""
    import jax

    from jaxmed import experiment as ex
    from jaxmed.train import _trainer

    cfg = point_config(grid, point)
    devices = cfg.train.devices
    if jax.local_device_count() < devices:
        raise ConfigError(f"devices={devices} but only {jax.local_device_count()} devices are visible")
    bank, _, _ = ex.make_bank(cfg, "train", cfg.data.n_train)
    env, params, _ = ex.make_env(cfg, bank.labels)
    n_envs = cfg.learner.n_envs
    out: dict[str, Any] = {"n_agents_per_env": env.n_agents, "n_envs_per_device": n_envs}

    # the environment alone: random actions, vmapped over n_envs, pmapped over devices
    def rollout(key, bank):
        keys = jax.random.split(key, n_envs)
        obs, state = jax.vmap(env.reset, in_axes=(0, None, None))(keys, params, bank)

        def body(carry, k):
            state, acc = carry
            ka, ks = jax.random.split(k)
            action = jax.random.randint(ka, (n_envs, env.n_agents), 0, env.num_actions)
            obs, state, reward, *_ = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))(jax.random.split(ks, n_envs), state, action, params, bank)
            return (state, acc + obs.astype("float32").mean() + reward.mean()), None

        (_, acc), _ = jax.lax.scan(body, (state, 0.0), jax.random.split(key, grid["env_steps"]))
        return acc

    if devices > 1:
        run = jax.pmap(rollout, in_axes=(0, None), devices=jax.local_devices()[:devices])
        key = jax.random.split(jax.random.key(1), devices)
    else:
        run, key = jax.jit(rollout), jax.random.key(1)
    jax.block_until_ready(run(key, bank))
    t0 = time.perf_counter()
    jax.block_until_ready(run(key, bank))
    out["env_agent_steps_per_s"] = grid["env_steps"] * n_envs * devices * env.n_agents / (time.perf_counter() - t0)

    # the whole training program
    network = ex.make_network(cfg, env)
    init, chunk = _trainer(cfg, env, params, network)
    rs = jax.block_until_ready(init(jax.random.key(0), bank))
    t0 = time.perf_counter()
    rs, m = chunk(rs, bank)
    jax.block_until_ready(rs)
    first = time.perf_counter() - t0
    before = _updates(m)
    t0 = time.perf_counter()
    for _ in range(grid["chunks"]):
        rs, m = chunk(rs, bank)
    jax.block_until_ready(rs)
    dt = time.perf_counter() - t0
    after = _updates(m)
    out["train_env_steps_per_s"] = cfg.learner.env_steps_per_chunk * devices * grid["chunks"] / dt
    out["updates_per_s"] = None if before is None else (after - before) / dt
    out["seconds_per_chunk"] = dt / grid["chunks"]
    out["compile_s"] = max(first - dt / grid["chunks"], 0.0)
    out["peak_memory_bytes"], out["memory_source"] = _peak_memory()
    out["device"] = f"{jax.devices()[0].platform}: {getattr(jax.devices()[0], 'device_kind', '')}"
    return out


def _updates(metrics) -> float | None:
    if "updates" not in metrics:
        return None
    return float(np.mean(np.asarray(metrics["updates"])))


# ------------------------------------------------------------------ driver


def run_point_subprocess(grid: dict, point: dict, timeout_s: float = 600.0) -> dict:
    """Measure one point in a fresh Python process with ``point['devices']`` fake CPU devices."""
    env = dict(os.environ)
    n = int(point.get("devices", 1))
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={max(n, 1)}"])
    cmd = [sys.executable, "-m", "jaxmed.bench", "--point", json.dumps({"grid": grid, "point": point})]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:500]}
    return json.loads(lines[-1])


def run_grid(grid: dict, out: str | Path, *, in_process: bool = False, timeout_s: float = 600.0, progress: bool = True) -> dict:
    """Measure every grid point, rewriting ``out`` (JSON) after each; then the PNG beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(), "grid": grid, "points": []}
    for p in points(grid):
        t0 = time.perf_counter()
        if in_process:
            try:
                m = measure_point(grid, p)
            except ConfigError as e:
                m = {"error": str(e)}
        else:
            m = run_point_subprocess(grid, p, timeout_s)
        row = {**p, **m, "wall_s": time.perf_counter() - t0}
        result["points"].append(row)
        tmp = out.with_suffix(".json.part")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(out)
        if progress:
            print(f"{p}: " + (m["error"] if "error" in m else f"{fmt(m['env_agent_steps_per_s'])} env agent-steps/s, "
                              f"{fmt(m['train_env_steps_per_s'])} train env-steps/s"), flush=True)
    plot(result, out.with_suffix(".png"))
    return result


def markdown(result: dict) -> str:
    axes = [a for a in AXES if a in result["grid"]["axes"]]
    cols = ["env agent-steps/s", "train env-steps/s", "updates/s", "compile s", "peak memory MB"]
    lines = ["| " + " | ".join(axes + cols) + " |", "|" + "---|" * (len(axes) + len(cols))]
    for r in result["points"]:
        if "error" in r:
            vals = [f"error: {r['error'][:80]}"] + [""] * (len(cols) - 1)
        else:
            vals = [fmt(r["env_agent_steps_per_s"]), fmt(r["train_env_steps_per_s"]), fmt(r["updates_per_s"]),
                    fmt(r["compile_s"]), fmt(r["peak_memory_bytes"] / 2**20)]
        lines.append("| " + " | ".join([str(r.get(a, "")) for a in axes] + vals) + " |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Throughput vs ``n_envs`` and vs ``devices`` (one line per combination of the other axes) with
    dashed ideal-scaling lines from each line's smallest point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["points"] if "error" not in r]
    xs = [a for a in ("n_envs", "devices", "agents") if len(result["grid"]["axes"].get(a, [])) > 1]
    if not rows or not xs:
        return
    fig, axs = plt.subplots(len(xs), 2, figsize=(10, 3.6 * len(xs)), squeeze=False)
    for row_ax, x in zip(axs, xs):
        others = [a for a in AXES if a in result["grid"]["axes"] and a != x]
        series: dict[tuple, list] = {}
        for r in rows:
            series.setdefault(tuple(r.get(a) for a in others), []).append(r)
        for ax, key, label in zip(row_ax, ("env_agent_steps_per_s", "train_env_steps_per_s"), ("env agent-steps/s", "training env-steps/s")):
            for name, rs in series.items():
                rs = sorted(rs, key=lambda r: r[x])
                xv = np.array([r[x] for r in rs], float)
                yv = np.array([r[key] for r in rs], float)
                tag = ", ".join(f"{a}={v}" for a, v in zip(others, name))
                line, = ax.plot(xv, yv, "o-", label=tag or None)
                ax.plot(xv, yv[0] * xv / xv[0], "--", color=line.get_color(), alpha=0.5, lw=1)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(x + (" (per device)" if x == "n_envs" else ""))
            ax.set_ylabel(label)
            ax.set_title(f"{label} vs {x} (dashed: ideal scaling)", fontsize=9)
            if len(series) > 1:
                ax.legend(fontsize=7)
    save_figure(fig, path, machine_line(result["machine"]))


def _child(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--point", required=True)
    args = p.parse_args(argv)
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
        v = getattr(args, a, None)
        if v:
            axes[a] = v
    data["axes"] = axes
    for k in ("config", "chunks", "env_steps"):
        if getattr(args, k, None) is not None:
            data[k] = getattr(args, k)
    if args.overrides:
        data["overrides"] = list(data.get("overrides") or []) + args.overrides
    return load_grid(data, args.grid or "jaxmed bench")


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
