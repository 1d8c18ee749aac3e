"""Shared measuring helpers of ``jaxmed bench`` and the ``benchmarks/`` scripts: machine facts,
number formatting, figure saving, repeated timing, compile timing and the random-policy rollout."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


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
