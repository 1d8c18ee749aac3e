"""Run several local Python processes as one ``jax.distributed`` cluster on the CPU backend.

Used by ``jaxmed bench`` (its ``processes`` axis) and by the multi-host tests: every process gets
``local_devices`` fake CPU devices and the ``JAXMED_*`` cluster variables read by
:func:`jaxmed.agents.distributed.initialize` (coordinator ``localhost:<port>``, process count and id).
The group is killed as soon as one process fails or the deadline passes, so a hung collective never
hangs the caller.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence


def free_port() -> int:
    """A TCP port on localhost that was free a moment ago (for a local coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def local_cluster_env(process_id: int, num_processes: int, port: int, local_devices: int, base: dict | None = None) -> dict:
    """Environment variables of one process of a local ``jax.distributed`` cluster on the CPU
    backend: ``local_devices`` fake CPU devices and the ``JAXMED_*`` cluster variables."""
    from jaxmed.agents import distributed as d

    env = dict(os.environ if base is None else base)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env.update({"XLA_FLAGS": " ".join(flags + [f"--xla_force_host_platform_device_count={local_devices}"]), "JAX_PLATFORMS": "cpu",
                d.ENV_COORDINATOR: f"localhost:{port}", d.ENV_NUM_PROCESSES: str(num_processes), d.ENV_PROCESS_ID: str(process_id),
                d.ENV_LOCAL_DEVICE_COUNT: str(local_devices)})
    return env


def launch_local_processes(command: Sequence[str] | Callable[[int, int], Sequence[str]], n_processes: int, local_devices: int,
                           timeout_s: float, log_dir: Path | None = None, cwd: Path | None = None) -> list[tuple[int | None, str]]:
    """Run ``n_processes`` local processes of one CPU cluster (:func:`local_cluster_env`) to completion.

    ``command`` is one argv for every process, or ``command(process_id, port) -> argv``. Output goes to
    ``log_dir/log_<i>.txt`` (a temporary folder when ``None``). Returns each process's ``(exit code,
    stdout + stderr)``; exit code ``None`` for a process killed because another failed or the group ran
    past ``timeout_s`` seconds.
    """
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="jaxmed-cluster-") as tmp:
        folder = Path(log_dir) if log_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        logs = [folder / f"log_{i}.txt" for i in range(n_processes)]
        procs = []
        for i in range(n_processes):
            argv = command(i, port) if callable(command) else command
            with open(logs[i], "w") as log:  # the child keeps its own copy of the descriptor
                procs.append(subprocess.Popen([str(a) for a in argv], env=local_cluster_env(i, n_processes, port, local_devices),
                                              stdout=log, stderr=subprocess.STDOUT, cwd=cwd))
        deadline = time.monotonic() + timeout_s
        killed = set()
        try:
            while True:
                codes = [p.poll() for p in procs]  # poll every process (no short-circuit)
                if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            for i, p in enumerate(procs):
                if p.poll() is None:
                    p.kill()
                    killed.add(i)
                p.wait()
        return [(None if i in killed else p.returncode, log.read_text()) for i, (p, log) in enumerate(zip(procs, logs))]
