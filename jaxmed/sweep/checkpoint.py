"""Population checkpoints written shard by shard: every process saves the trial rows it holds.

A population state is a pytree whose every leaf has a leading trial axis sharded over a 1-D device
mesh (:class:`jaxmed.sweep.population.Population`). A checkpoint is a directory::

    <dir>/process<i>.npz    process i's rows of every leaf (tree order; typed PRNG keys as key data)
    <dir>/process<i>.json   {"process_count", "device_count" (of the mesh), "rows", "local_rows", "leaves"}

written atomically (``.part`` then rename), so a kill leaves either the old or the new file. No
process reads another's file: on a cluster without a shared filesystem each host keeps its own
shards; restoring needs the same process count and device count (checked, :class:`ConfigError`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np

from jaxmed.errors import ConfigError


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global array sharded on its leading axis (in global row order;
    typed PRNG keys as their key data)."""
    if _is_key(x):
        x = jax.random.key_data(x)
    shards = sorted({(s.index[0].start or 0): s for s in x.addressable_shards}.items())  # replicas once
    return np.concatenate([np.asarray(s.data) for _, s in shards], axis=0)


def _names(directory: Path) -> tuple[Path, Path]:
    i = jax.process_index()
    return directory / f"process{i}.npz", directory / f"process{i}.json"


def save(directory: str | Path, state) -> None:
    """Write this process's rows of ``state`` under ``directory`` (created)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree.leaves(state)
    arrays = {f"leaf{i}": local_rows(x) for i, x in enumerate(leaves)}
    meta = {"process_count": jax.process_count(), "device_count": len(leaves[0].sharding.device_set),
            "rows": int(leaves[0].shape[0]), "local_rows": int(arrays["leaf0"].shape[0]), "leaves": len(leaves)}
    npz, js = _names(directory)
    tmp = npz.with_name(npz.name + ".part")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, npz)
    tmp = js.with_name(js.name + ".part")
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, js)


def restore(directory: str | Path, abstract, sharding, key_impl: str) -> object:
    """The state saved by :func:`save` in ``directory``, as global arrays with ``sharding`` (leading
    axis). ``abstract``: a pytree of ``jax.ShapeDtypeStruct`` (e.g. ``jax.eval_shape`` of the
    population's ``init``) giving the structure, global shapes and dtypes; ``key_impl``: the PRNG
    implementation of its typed key leaves (``str(jax.random.key_impl(key))``)."""
    directory = Path(directory)
    npz, js = _names(directory)
    if not npz.exists() or not js.exists():
        raise ConfigError(f"{directory}: no checkpoint of process {jax.process_index()} ({npz.name}); resuming needs "
                          f"every process's files")
    meta = json.loads(js.read_text())
    leaves, treedef = jax.tree.flatten(abstract)
    now = {"process_count": jax.process_count(), "device_count": len(sharding.device_set), "rows": int(leaves[0].shape[0]),
           "leaves": len(leaves)}
    diff = {k: (meta.get(k), v) for k, v in now.items() if meta.get(k) != v}
    if diff:
        raise ConfigError(f"{directory}: checkpoint written with " + ", ".join(f"{k}={a}" for k, (a, _) in diff.items())
                          + "; this run has " + ", ".join(f"{k}={b}" for k, (_, b) in diff.items())
                          + " (resume with the same processes and devices)")
    out = []
    with np.load(npz) as data:
        for i, leaf in enumerate(leaves):
            local = data[f"leaf{i}"]
            if _is_key(leaf):
                kd_shape = jax.eval_shape(jax.random.key_data, leaf).shape
                kd = jax.make_array_from_process_local_data(sharding, local, kd_shape)
                out.append(_wrap(kd, key_impl, sharding))
            else:
                if local.dtype != leaf.dtype:
                    raise ConfigError(f"{npz}: leaf {i} has dtype {local.dtype}, expected {leaf.dtype}")
                out.append(jax.make_array_from_process_local_data(sharding, local, leaf.shape))
    return jax.tree.unflatten(treedef, out)


_WRAPS: dict = {}


def _wrap(key_data: jax.Array, impl: str, sharding) -> jax.Array:
    fn = _WRAPS.get((impl, sharding))
    if fn is None:
        fn = _WRAPS[(impl, sharding)] = jax.jit(lambda kd: jax.random.wrap_key_data(kd, impl=impl), out_shardings=sharding)
    return fn(key_data)
