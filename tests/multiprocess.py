"""Launch several local Python processes that form one ``jax.distributed`` cluster (a test utility).

Shared by the multi-host tests (tests/test_multihost.py, tests/test_sweep.py, the bench tests):
each test gives a function building the command line of process ``i`` and gets back every
process's output, or a ``pytest.fail`` carrying all outputs when one process fails or the group
runs past its deadline (the others are killed then, so a hung collective never hangs the suite).

Each process runs with ``JAX_PLATFORMS=cpu`` and ``XLA_FLAGS=--xla_force_host_platform_device_count=
<local_devices>``, plus the ``JAXMED_*`` cluster variables read by
:func:`jaxmed.agents.distributed.initialize` (coordinator ``localhost:<port>``, process count and id),
so a worker may either parse its argv or just call ``initialize()``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import pytest

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago (for the coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def cluster_env(process_id: int, num_processes: int, port: int, local_devices: int) -> dict[str, str]:
    """The environment of one local cluster process: CPU backend with ``local_devices`` devices and
    the ``JAXMED_COORDINATOR`` / ``JAXMED_NUM_PROCESSES`` / ``JAXMED_PROCESS_ID`` variables."""
    return dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={local_devices}",
        JAX_PLATFORMS="cpu",
        JAXMED_COORDINATOR=f"localhost:{port}",
        JAXMED_NUM_PROCESSES=str(num_processes),
        JAXMED_PROCESS_ID=str(process_id),
    )


def run_processes(
    command: Callable[[int, int], Sequence[str]],
    n_processes: int,
    log_dir: Path,
    *,
    local_devices: int = 2,
    timeout_s: float = 120.0,
    cwd: Path = REPO,
) -> list[str]:
    """Run ``n_processes`` processes to completion and return their combined stdout+stderr texts.

    ``command(process_id, port)`` gives the argv of process ``process_id`` (``port``: the
    coordinator's port on localhost). Logs go to ``log_dir/log_<i>.txt``. On a non-zero exit of any
    process or after ``timeout_s`` seconds the remaining processes are killed and the test fails
    with the tail of every log.
    """
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    logs = [log_dir / f"log_{i}.txt" for i in range(n_processes)]
    procs = []
    for i in range(n_processes):
        with open(logs[i], "w") as log:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen(
                [str(a) for a in command(i, port)], env=cluster_env(i, n_processes, port, local_devices),
                stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
            ))
    deadline = time.monotonic() + timeout_s
    failure = None
    try:
        while True:
            codes = [p.poll() for p in procs]  # poll every process (no short-circuit)
            if all(c is not None for c in codes):
                break
            if any(c not in (None, 0) for c in codes):
                failure = "a process failed"
                break
            if time.monotonic() > deadline:
                failure = f"timed out after {timeout_s:.0f} s"
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    outputs = [log.read_text() for log in logs]
    if failure or any(p.returncode != 0 for p in procs):
        report = "\n".join(f"--- process {i} (exit {p.returncode}) ---\n{out[-6000:]}"
                           for i, (p, out) in enumerate(zip(procs, outputs)))
        pytest.fail(f"multi-process run failed ({failure or 'non-zero exit'}):\n{report}")
    return outputs


def run_python_workers(script: Path, n_processes: int, out_dir: Path, *args, **kwargs) -> list[str]:
    """:func:`run_processes` for a worker script called as
    ``python SCRIPT PROCESS_ID NUM_PROCESSES PORT OUT_DIR *ARGS`` (logs in ``out_dir``)."""
    return run_processes(
        lambda i, port: [sys.executable, str(script), i, n_processes, port, out_dir, *args],
        n_processes, out_dir, **kwargs,
    )
