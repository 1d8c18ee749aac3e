"""Data sources: where a run's labelled subjects come from, chosen by ``data.source``.

===============  ==================================================================================
``afids``        synthetic subjects from the AFIDs MNI T1 template (32 landmarks; ``structures``)
``phantom``      synthetic subjects from a blob phantom (``L0..L3``), for tests and smoke runs
``ellipsoid``    synthetic subjects from an ellipsoid organ phantom (``organ#i``, box targets)
``files``        your own labelled scans on disk (:mod:`jaxmed.data.sources.files`)
``colin27``      Colin27 with / without skull and its 32 AFIDs (test split only; real anatomy)
``mni-t2w``      the T2w MNI template with the AFIDs and synthetic subjects made from it
===============  ==================================================================================

::

    from jaxmed.data import sources
    src = sources.make(data_cfg)                       # a DataConfig
    train = src.subjects("train", ["AC", "PC"])        # [LabelledSubject(name, volume, landmarks, meta)]
    more = src.subjects("train", ["AC", "PC"], epoch=1)  # fresh augmented / synthesised copies
    prior = src.template(["AC", "PC"])                 # the atlas (template prior), or None
    src = sources.from_spec("colin27", spacing=2.0)    # a name, a folder, a manifest or a data YAML

A new source subclasses :class:`Source` with a ``name``, an ``Options`` frozen dataclass (its own
``data.*`` keys, optionally with ``check(cfg, where)``) and :meth:`Source.subjects`, and is
registered with :func:`register`.
"""

from __future__ import annotations  # noqa: I001  (built-in sources register in this order)

import functools
from pathlib import Path

from jaxmed.data.sources.base import LabelledSubject, Source, names, option_fields, register, source_class
from jaxmed.data.sources import afids, phantom, ellipsoid, files, colin27, mni_t2w  # noqa: F401,E402  (register the built-ins)
from jaxmed.data.sources.config import DataConfig  # noqa: E402
from jaxmed.errors import ConfigError  # noqa: E402

__all__ = ["DataConfig", "LabelledSubject", "Source", "datasets", "from_spec", "make", "names", "option_fields", "register", "source_class"]


@functools.lru_cache(maxsize=8)
def make(cfg: DataConfig) -> Source:
    """The source of ``cfg`` (one object per distinct config in a process: its template is loaded once)."""
    if not isinstance(cfg, DataConfig):
        raise ConfigError(f"sources.make: expected a DataConfig, got {type(cfg).__name__}")
    return source_class(cfg.source)(cfg)


def datasets() -> dict:
    """The downloadable data sets by ``jaxmed data fetch`` name: ``{name: jaxmed.data.fetch.Dataset}``."""
    from jaxmed.data import afids as afids_data
    from jaxmed.data import colin27 as colin27_data
    from jaxmed.data import mni_t2w as mni_t2w_data

    return {"afids": afids_data.DATASET, "colin27": colin27_data.DATASET, "mni-t2w": mni_t2w_data.DATASET}


def from_spec(spec: str, spacing: float, **overrides) -> Source:
    """A source from a command-line ``--data SPEC``.

    ``spec`` is a registered source name (``colin27``, ``mni-t2w``, ...), a directory of subject
    folders or a manifest ``.csv`` / ``.tsv`` (the files source; every subject in the test split
    unless ``overrides`` or the manifest's split column say otherwise), or a data YAML file (a
    ``data:`` section, or a mapping of data keys). ``spacing`` (mm) and ``overrides`` (data keys)
    replace the spec's own values.
    """
    from jaxmed.config import load_yaml

    spec = str(spec)
    path = Path(spec).expanduser()
    if spec in names():
        data = {"source": spec}
    elif path.suffix.lower() in (".yaml", ".yml"):
        loaded = load_yaml(path)
        data = dict(loaded.get("data", loaded))
        if not isinstance(data, dict) or "source" not in data:
            raise ConfigError(f"{path}: a data YAML needs a 'data:' section (or top-level data keys) with 'source'")
    elif path.is_dir() or (path.is_file() and path.suffix.lower() in files.MANIFEST_SUFFIXES):
        data = {"source": "files", "root": str(path), "split_ratio": [0.0, 0.0, 1.0]}
    else:
        raise ConfigError(f"--data {spec!r}: not a registered source ({', '.join(names())}), an existing directory, "
                          f"a manifest .csv/.tsv or a data .yaml")
    data.update(overrides)
    data["spacing"] = spacing
    return make(DataConfig.from_mapping(data, "data"))
