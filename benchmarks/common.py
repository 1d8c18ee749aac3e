"""Helpers shared by the benchmark scripts: machine description, memcpy bandwidth, number
formatting, and writing a result (JSON + PNG + Markdown table). The machine description, number
formatting and figure saving live in :mod:`jaxmed.bench` (shared with ``jaxmed bench``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from jaxmed.bench import fmt, machine_info, machine_line, save_figure

__all__ = ["fmt", "machine_info", "machine_line", "memcpy_bandwidth", "replot", "run_and_write", "save_figure"]


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
