"""What training writes into a run directory, and reads back to resume it.

``checkpoints/`` (:class:`Checkpoints`: orbax checkpoints of the whole training state),
``metrics.csv`` and ``tb/`` (:class:`MetricsLog`: one row per chunk), ``network.msgpack``
(:func:`save_network`: the network parameters alone, what evaluation and detection load) and
``snapshots/`` (:func:`save_snapshot`, :func:`average_snapshots`: the late networks a weight-averaged
run keeps, ``train.average_from``). Reading a run back as an experiment is :mod:`jaxmed.runs`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.fetch import write_atomic
from jaxmed.errors import ConfigError


def _host_tree(rs):
    """RunnerState -> numpy pytree (typed PRNG keys stored as their raw key data)."""
    rs = rs.replace(key=jax.random.key_data(rs.key))
    return jax.tree.map(np.asarray, jax.device_get(rs))


def _device_tree(tree, template):
    rs = jax.tree.map(lambda x, t: jnp.asarray(x, dtype=t.dtype), tree, template.replace(key=jax.random.key_data(template.key)))
    return rs.replace(key=jax.random.wrap_key_data(rs.key))


class Checkpoints:
    """Orbax checkpoints of the whole training state (network, optimiser, replay, envs, keys)."""

    def __init__(self, directory: Path, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.manager = ocp.CheckpointManager(directory.absolute(), options=options)

    def save(self, chunk: int, rs) -> None:
        self.manager.save(chunk, args=self._ocp.args.StandardSave(_host_tree(rs)))
        self.manager.wait_until_finished()

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, chunk: int, template):
        tree = self.manager.restore(chunk, args=self._ocp.args.StandardRestore(_host_tree(template)))
        return _device_tree(tree, template)

    def close(self):
        self.manager.close()


class MetricsLog:
    """Appends one row per chunk to ``metrics.csv`` and to TensorBoard (``tb/``) when tensorboardX is installed.

    ``wall_before``: seconds of training the kept rows of a resumed run already took (the ``wall_s`` of
    the last kept row; 0 for a new run), so that wall times stay cumulative across resumes.
    """

    def __init__(self, run_dir: Path, resume_chunk: int = 0):
        self.path = run_dir / "metrics.csv"
        self._fields: list[str] | None = None
        self.wall_before = 0.0
        if self.path.exists():
            with open(self.path) as f:
                rows = list(csv.reader(f))
            self._fields = rows[0] if rows else None
            # rows written after the checkpoint we resume from are replayed: drop them
            kept = [r for r in rows[1:] if r and int(float(r[0])) <= resume_chunk]
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows(rows[:1] + kept)
            if kept and self._fields and "wall_s" in self._fields:
                self.wall_before = float(kept[-1][self._fields.index("wall_s")] or 0.0)
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # logging to TensorBoard is optional
            self.tb = None

    def write(self, row: dict[str, float]) -> None:
        if self._fields is None:
            self._fields = list(row)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self._fields)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self._fields])
        if self.tb is not None:
            for k, v in row.items():
                # a chunk in which no episode ended has no final distance (NaN): TensorBoard gets no point
                if k not in ("chunk", "steps") and math.isfinite(v):
                    self.tb.add_scalar(k, v, int(row["steps"]))

    def close(self):
        if self.tb is not None:
            self.tb.close()


def save_network(run_dir: Path, params) -> None:
    """Write the network parameters alone (``network.msgpack``; with a leading seed axis when the run
    trained several seeds), for evaluation and detection: the last parameters, or with
    ``train.average_from`` the mean of the late snapshots (:func:`average_snapshots`)."""
    _write_params(Path(run_dir) / "network.msgpack", params)


def _write_params(path: Path, params) -> None:
    """Write ``params`` to ``path`` atomically (:func:`jaxmed.data.fetch.write_atomic`)."""
    from flax import serialization

    blob = serialization.to_bytes(jax.device_get(params))
    write_atomic(path, lambda f: f.write(blob))


def snapshot_path(run_dir: Path, chunk: int) -> Path:
    """Where :func:`save_snapshot` keeps the network of ``chunk``: ``RUN/snapshots/chunk_000120.msgpack``."""
    return Path(run_dir) / "snapshots" / f"chunk_{int(chunk):06d}.msgpack"


def save_snapshot(run_dir: Path, chunk: int, params) -> Path:
    """Keep the network parameters of ``chunk`` (same layout as ``network.msgpack``) for weight averaging."""
    path = snapshot_path(run_dir, chunk)
    _write_params(path, params)  # write_atomic makes snapshots/
    return path


def average_snapshots(run_dir: Path, first: int, last: int, like):
    """``(mean, chunks)``: the element-wise mean of the snapshots saved at chunks ``first <= c <= last``
    (stochastic weight averaging of late snapshots, Izmailov et al. 2018) and the chunks averaged.

    ``like`` is a parameter tree of the saved layout (e.g. the current parameters); the mean is float32
    like the parameters. Raises :class:`ConfigError` when no snapshot lies in the range.
    """
    from flax import serialization

    folder = Path(run_dir) / "snapshots"
    chunks = sorted(int(p.stem.split("_")[1]) for p in folder.glob("chunk_*.msgpack")) if folder.is_dir() else []
    chunks = [c for c in chunks if first <= c <= last]
    if not chunks:
        raise ConfigError(f"{folder}: no network snapshot between chunks {first} and {last} to average")
    like = jax.device_get(like)
    total = jax.tree.map(lambda x: np.zeros(np.shape(x), np.float64), like)
    for c in chunks:
        snap = serialization.from_bytes(like, snapshot_path(run_dir, c).read_bytes())
        total = jax.tree.map(lambda t, x: t + np.asarray(x, np.float64), total, snap)
    return jax.tree.map(lambda t, x: (t / len(chunks)).astype(np.asarray(x).dtype), total, like), chunks


def network_to_save(run_dir: Path, average_from: int, chunk: int, params):
    """``(params to save as network.msgpack, chunks averaged)`` at the checkpoint of ``chunk``: the
    last parameters, or from chunk ``average_from`` on (``train.average_from``; ``0``: never) the mean
    of the snapshots of chunks ``average_from .. chunk`` (this chunk's snapshot written first)."""
    if not average_from or chunk < average_from:
        return params, []
    save_snapshot(run_dir, chunk, params)
    return average_snapshots(run_dir, average_from, chunk, params)
