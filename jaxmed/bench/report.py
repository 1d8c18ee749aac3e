"""A study's results as a Markdown table and as throughput curves (or bars) with ideal scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmed.bench.grid import AXES
from jaxmed.bench.timing import fmt, machine_line, save_figure


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
