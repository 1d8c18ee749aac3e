"""Helpers shared by the benchmark scripts: machine description, memcpy bandwidth, number
formatting, and writing a result (JSON + PNG + Markdown table)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np


def machine_info() -> dict:
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


def memcpy_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """GB/s (1e9 bytes copied per second) of ``np.copyto`` between two pre-touched arrays."""
    src = np.ones(nbytes, np.uint8)
    dst = np.zeros_like(src)
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return nbytes / float(np.median(times[1:])) / 1e9


def fmt(x, digits=3) -> str:
    """A number for a Markdown table: thousands separators from 100 up, ``digits`` significant below."""
    if x is None:
        return "—"
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


def replot(path: Path, plot: Callable, markdown: Callable) -> dict:
    """Redraw the PNG and reprint the table of a saved result JSON."""
    result = json.loads(Path(path).read_text())
    plot(result, Path(path).with_suffix(".png"))
    print(markdown(result))
    return result


def run_and_write(run: Callable, args, plot: Callable, markdown: Callable) -> dict:
    """``run(args)``, then write ``args.out`` (JSON) and its PNG, and print the Markdown table."""
    t0 = time.perf_counter()
    result = run(args)
    result["wall_seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    png = args.out.with_suffix(".png")
    plot(result, png)
    print()
    print(markdown(result))
    print(f"\nwrote {args.out} and {png} ({result['wall_seconds']:.0f} s)")
    return result
