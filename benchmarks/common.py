"""Helpers shared by the benchmark scripts: the options every throughput script has, memcpy
bandwidth, the start, result and Markdown table of a throughput sweep, compiling an experiment's
DQN, and writing a result (JSON + PNG + Markdown table). The machine description, number
formatting, figure saving, timing and the random-policy rollout live in :mod:`jaxmed.bench`
(shared with ``jaxmed bench``, the one way to measure throughput; ``benchmarks/grids/*.yaml`` are its
grids and :func:`run_grid_script` runs one of them as a script)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from jaxmed.bench import compile_timed, fmt, load_avg, machine_info, machine_line, make_random_rollout, reset_batch, save_figure, timed

__all__ = ["compile_dqn", "compile_timed", "fmt", "load_avg", "machine_info", "machine_line", "make_random_rollout", "memcpy_bandwidth",
           "parser", "replot", "replot_or_run", "reset_batch", "rows_markdown", "run_and_write", "run_grid_script", "save_figure",
           "start_sweep", "sweep_result", "timed", "write_result"]

RESULTS = Path(__file__).resolve().parent / "results"
GRIDS = Path(__file__).resolve().parent / "grids"


def parser(doc: str, out_name: str, *, min_time: float, max_call_s: float, n_volumes: int, min_reps: int | None = 3,
           max_reps: int | None = None, steps: int | None = None, spacing: float | None = 2.0, replot: bool = True,
           quick_help: str = "few sizes, short timing (smoke test)") -> argparse.ArgumentParser:
    """The options the throughput scripts share (``--quick``, ``--out``, ``--replot``, timing caps,
    bank size), with each script's defaults; options whose default is ``None`` are left out."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--out", type=Path, default=RESULTS / out_name)
    if replot:
        p.add_argument("--replot", type=Path, default=None, help="only redraw the PNG and table from this JSON")
    p.add_argument("--min-time", type=float, default=min_time, help="seconds of timed calls per measurement")
    if min_reps is not None:
        p.add_argument("--min-reps", type=int, default=min_reps)
    if max_reps is not None:
        p.add_argument("--max-reps", type=int, default=max_reps)
    p.add_argument("--max-call-s", type=float, default=max_call_s, help="skip sizes predicted to take longer per call")
    p.add_argument("--n-volumes", type=int, default=n_volumes, help="bank volumes")
    if spacing is not None:
        p.add_argument("--spacing", type=float, default=spacing, help="template resampling (mm)")
    if steps is not None:
        p.add_argument("--steps", type=int, default=steps, help="steps per jitted lax.scan call")
    return p


def run_grid_script(grid: str, out_name: str, argv=None) -> int:
    """A thin wrapper script: ``jaxmed bench benchmarks/grids/GRID`` writing ``results/OUT_NAME`` by
    default; ``argv`` takes every ``jaxmed bench`` option (e.g. ``--n-envs 1 16``, ``--out``)."""
    from jaxmed.commands.bench import main

    return main([str(GRIDS / grid), *(sys.argv[1:] if argv is None else argv)], out=str(RESULTS / out_name))


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


def start_sweep(memcpy_mb: int) -> tuple[dict, float]:
    """``(machine_info(), memcpy GB/s)`` at the start of a throughput sweep, both printed as ``#`` lines;
    the bandwidth is :func:`memcpy_bandwidth` of a ``memcpy_mb`` MiB copy."""
    info = machine_info()
    print(f"# machine: {info['cpu']}, {info['cores']} cores, {info['device']}, jax {info['jax']}", flush=True)
    bw = memcpy_bandwidth(memcpy_mb * 2**20)
    print(f"# memcpy (numpy copy of {memcpy_mb} MiB): {bw:.2f} GB/s", flush=True)
    return info, bw


def sweep_result(info: dict, bw: float, settings: dict, rows: list) -> dict:
    """The result of a throughput sweep started by :func:`start_sweep`: ``machine`` (``info`` with the
    load average at the end), ``memcpy_GBps``, ``settings`` and ``rows``."""
    info["load_avg_1m_at_end"] = load_avg()
    return {"machine": info, "memcpy_GBps": bw, "settings": settings, "rows": rows}


def rows_markdown(machine: dict, intro: str, header: str, rows: list, format_row: Callable, skipped_name: Callable) -> str:
    """The Markdown of a throughput sweep: a ``Machine: ...;`` line on ``machine`` (:func:`machine_info`)
    continued by ``intro``, a blank line, the table (``header``, then ``format_row(row)`` of every
    measured row) and, if any row carries a ``skipped`` reason, a ``Skipped:`` line listing
    ``skipped_name(row) (reason)`` of those rows."""
    m = machine
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['device']}; jax {m['jax']}; {m['date']}; commit {m['git_commit'] or 'n/a'}; " + intro,
        "",
        header,
    ]
    lines += [format_row(r) for r in rows if "skipped" not in r]
    skipped = [r for r in rows if "skipped" in r]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{skipped_name(r)} ({r['skipped']})" for r in skipped)]
    return "\n".join(lines)


def compile_dqn(cfg, bank):
    """The DQN of the experiment config ``cfg`` (:func:`jaxmed.agents.dqn.make_train` on the env and
    network the config names) ready to train on ``bank``: ``(env, env params, network, initial train
    state (seed ``cfg.train.seed``), compiled ``run_chunk``, seconds to initialise and compile)``."""
    import jax

    from jaxmed import experiment as ex
    from jaxmed.agents.dqn import make_train

    env, params, _ = ex.make_env(cfg, bank.labels)
    network = ex.make_network(cfg, env)
    fns = make_train(cfg.dqn, env, params, network)
    t0 = time.perf_counter()
    rs = jax.jit(fns.init)(jax.random.key(cfg.train.seed), bank)
    chunk = jax.jit(fns.run_chunk).lower(rs, bank).compile()
    return env, params, network, rs, chunk, time.perf_counter() - t0


def replot(path: Path, plot: Callable, markdown: Callable) -> dict:
    """Redraw the PNG and reprint the table of a saved result JSON."""
    result = json.loads(Path(path).read_text())
    plot(result, Path(path).with_suffix(".png"))
    print(markdown(result))
    return result


def write_result(out: Path, result: dict, markdown: Callable, argv=None) -> str:
    """Stamp ``result`` with the machine (:func:`machine_info`) and the command line that made it
    (``argv``, default ``sys.argv[1:]``), write it to ``out`` (JSON) and its Markdown table beside it
    (``.md``), print the table and return it."""
    import shlex

    result.update(machine=machine_info(), command="python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    table = markdown(result)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return table


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


def replot_or_run(run: Callable, args, plot: Callable, markdown: Callable) -> dict:
    """A throughput script's ``main``: :func:`replot` ``args.replot`` when given, else :func:`run_and_write`."""
    if args.replot is not None:
        return replot(args.replot, plot, markdown)
    return run_and_write(run, args, plot, markdown)
