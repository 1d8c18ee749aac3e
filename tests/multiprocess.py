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

import sys
from pathlib import Path
from typing import Callable, Sequence

import pytest

from jaxmed.local_cluster import launch_local_processes

REPO = Path(__file__).resolve().parent.parent


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
    outs = launch_local_processes(command, n_processes, local_devices, timeout_s, log_dir=log_dir, cwd=cwd)
    if any(code != 0 for code, _ in outs):
        report = "\n".join(f"--- process {i} (exit {code}, None = killed) ---\n{text[-6000:]}" for i, (code, text) in enumerate(outs))
        pytest.fail(f"multi-process run failed (a process failed, or the group ran past {timeout_s:.0f} s):\n{report}")
    return [text for _, text in outs]


def run_python_workers(script: Path, n_processes: int, out_dir: Path, *args, **kwargs) -> list[str]:
    """:func:`run_processes` for a worker script called as
    ``python SCRIPT PROCESS_ID NUM_PROCESSES PORT OUT_DIR *ARGS`` (logs in ``out_dir``)."""
    return run_processes(
        lambda i, port: [sys.executable, str(script), i, n_processes, port, out_dir, *args],
        n_processes, out_dir, **kwargs,
    )
