"""Running a study: every point in a fresh subprocess (fake CPU devices for the device axis, a local
``jax.distributed`` cluster for the processes axis) or in-process / as one host of a cluster; the
result JSON rewritten after every point; the child entry point ``python -m jaxmed.bench``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jaxmed.bench.grid import load_grid, points
from jaxmed.bench.measure import measure_point
from jaxmed.bench.report import plot
from jaxmed.bench.timing import fmt, machine_info
from jaxmed.errors import ConfigError
from jaxmed.local_cluster import launch_local_processes


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
