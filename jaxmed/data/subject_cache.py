"""On-disk cache of conformed subject images.

Loading a real scan means decompressing it, reorienting it to RAS, resampling it to the run's
isotropic spacing and normalising its intensities: seconds per subject. The result is stored once
under ``<jaxmed data cache>/subjects/<key>.npy`` + ``.json`` (the data root is ``$JAXMED_DATA`` or
the user cache, :func:`jaxmed.data.fetch.data_root`), keyed by a SHA-256 of the image file's bytes
(every file of a DICOM series directory) together with the conform settings, so an edited file or
a different spacing is a different entry and a stale entry is never used. Entries are written to
temporary files and renamed into place (the image array first, its JSON record last; an entry
counts only when both exist), so a crash never leaves an entry that would be read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np

from jaxmed.data.fetch import data_root, write_atomic
from jaxmed.data.volume import Volume

#: bump when the conform pipeline changes, so older entries are not used
CACHE_VERSION = 1


def cache_dir() -> Path:
    """``<data root>/subjects``."""
    return data_root() / "subjects"


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of every file under a directory (relative names and bytes, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def entry_key(path: str | Path, settings: dict) -> str:
    """Cache key of ``path`` conformed with ``settings`` (JSON-able: spacing, normalisation, ...)."""
    blob = json.dumps({"version": CACHE_VERSION, "content": content_hash(path), "settings": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _paths(key: str) -> tuple[Path, Path]:
    d = cache_dir()
    return d / f"{key}.npy", d / f"{key}.json"


def lookup(key: str, source: str) -> Volume | None:
    """The cached volume of ``key`` (its ``source`` set to ``source``), or ``None``."""
    data_path, record_path = _paths(key)
    if not (data_path.exists() and record_path.exists()):
        return None
    try:
        record = json.loads(record_path.read_text())
        data = np.load(data_path, allow_pickle=False)
        if list(data.shape) != record["shape"] or str(data.dtype) != "float32":
            return None
        return Volume(data, np.asarray(record["affine"], np.float64), source=source, normalisation=record["normalisation"])
    except (OSError, ValueError, KeyError):
        return None  # an unreadable entry is rebuilt


def store(key: str, volume: Volume) -> Path:
    """Write ``volume`` under ``key`` atomically; returns the data file's path."""
    data_path, record_path = _paths(key)
    write_atomic(data_path, lambda f: np.save(f, np.ascontiguousarray(volume.data, np.float32), allow_pickle=False))
    record = {"shape": list(volume.shape), "affine": np.asarray(volume.affine).tolist(), "normalisation": volume.normalisation,
              "source": volume.source}
    write_atomic(record_path, lambda f: f.write(json.dumps(record).encode()))
    return data_path


def cached_volume(path: str | Path, settings: dict, load: Callable[[], Volume],
                  validate: Callable[[Volume], None] | None = None, enabled: bool = True) -> tuple[Volume, bool]:
    """``(volume, hit)``: the cached result of ``load()`` for image ``path`` under ``settings``, or
    ``load()`` run now, checked by ``validate`` (which raises on a bad subject) and only then stored.

    ``enabled=False`` skips the cache entirely."""
    if not enabled:
        volume = load()
        if validate is not None:
            validate(volume)
        return volume, False
    key = entry_key(path, settings)
    hit = lookup(key, str(path))
    if hit is not None:
        if validate is not None:
            validate(hit)
        return hit, True
    volume = load()
    if validate is not None:
        validate(volume)
    store(key, volume)
    return volume, False
