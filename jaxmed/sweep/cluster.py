"""What a sweep needs to run the same way in every process of a ``jax.distributed`` cluster.

Multi-controller SPMD: every process runs the same sweep program (same trials, same halving
decisions, same compiled calls). Process 0 alone reads and writes the sweep's JSON / CSV / Markdown /
PNG / YAML files and *broadcasts* what it read, so the other processes never need to see those
files; each process writes only its own rows of the population checkpoints
(:mod:`jaxmed.sweep.checkpoint`). In a single process every helper here is a no-op or an identity.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np

from jaxmed.errors import ConfigError, JaxmedError


def is_main() -> bool:
    """Whether this process writes the sweep's shared files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_json(value: Any) -> Any:
    """Process 0's ``value`` (anything ``json`` can encode, ``None`` included) in every process;
    the other processes' ``value`` is ignored. Identity in a single process."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_main() else np.zeros(0, np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.int64(raw.size)))
    buf = np.zeros(n, np.uint8)
    buf[: raw.size] = raw[:n]
    data = np.asarray(multihost_utils.broadcast_one_to_all(buf), np.uint8)
    return json.loads(data.tobytes().decode())


def raise_everywhere(error: JaxmedError | None) -> None:
    """Raise process 0's ``error`` (a jaxmed exception or ``None``) in every process, so that a check
    made by process 0 alone stops all processes together instead of leaving the others waiting in a
    collective."""
    payload = broadcast_json(None if error is None else [type(error).__name__, str(error)])
    if payload is None:
        return
    if error is not None:
        raise error
    from jaxmed import errors

    cls = getattr(errors, payload[0], None)
    raise (cls if isinstance(cls, type) and issubclass(cls, JaxmedError) else JaxmedError)(payload[1])


def sweep_devices(n: int | None = None) -> list:
    """The devices a sweep shards its trials over: every device of every process (``n=None``), or
    the first ``n`` devices of a single process. In a multi-process run every process must own some
    of the devices, so ``n`` must then be ``None`` or ``jax.device_count()``."""
    devices = jax.devices()
    if n is None or n == len(devices):
        return devices
    if n < 1 or n > len(devices):
        raise ConfigError(f"devices={n}: {len(devices)} devices are visible ({jax.devices()[0].platform})")
    if jax.process_count() > 1:
        raise ConfigError(f"devices={n}: a multi-process sweep shards its trials over every device of every process "
                          f"({len(devices)}); leave devices unset")
    return devices[:n]
