"""The ``data:`` section of a run config.

Common keys are typed fields of :class:`DataConfig`; every other key belongs to the chosen source
and is checked against that source's ``Options`` dataclass (:mod:`jaxmed.data.sources`), so an
unknown key raises :class:`~jaxmed.errors.ConfigError` naming ``data.<key>``. In YAML all keys sit
side by side::

    data:
      source: files            # afids | phantom | ellipsoid | files | colin27 | mni-t2w
      spacing: 2.0             # mm, isotropic, every subject is conformed to it
      root: /data/my_scans     # files-source keys from here on
      image: "*T1w.nii.gz"
      landmarks: "*.fcsv"
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Any, Mapping

from jaxmed.config import build, coerce, to_dict
from jaxmed.data.sources.base import source_class
from jaxmed.errors import ConfigError

#: Keys that every saved run config of earlier versions holds whatever its source (they were common
#: fields then): dropped when the source does not use them and they say nothing (``phantom_shape``
#: was ignored by non-phantom sources; ``structures`` empty), so those runs still load.
_LEGACY_KEYS = {"phantom_shape": lambda value: True, "structures": lambda value: not value}


@dataclasses.dataclass(frozen=True, init=False)
class DataConfig:
    """Which subjects a run trains and evaluates on, and how they are stored in the volume bank.

    Attributes:
      source: a registered source (:func:`jaxmed.data.sources.names`).
      spacing: every subject is conformed to RAS voxel order at this isotropic spacing (mm).
      n_train, n_test: subjects of the train / test split for sources that synthesise them
        (afids, phantom, ellipsoid, mni-t2w); sources of subjects on disk use what is there.
      seed: base seed: synthetic splits draw from disjoint seed ranges of it
        (:func:`jaxmed.data.synth.split_seeds`); the files source seeds its split, folds and
        augmentation with it.
      dtype: bank storage dtype (``uint8``, ``bfloat16``, ``float32``; checked when the bank is built).
      factors: pyramid downsampling factors of the bank.
      intensity_ceiling: uint8 banks store ``[0, intensity_ceiling]`` as ``0..255`` in training,
        evaluation and detection alike (:func:`jaxmed.data.build_bank` ``full_scale``). ``None``: each
        bank scales to its own maximum, so a network sees a real image (normalised to [0, 1]) in a
        bank of its own brighter than the synthetic subjects it trained on (up to
        ``synth.clip_max``); real-scan configs set it to the synthesis ceiling.
      options: the source's own keys (a frozen dataclass, ``sources.source_class(source).Options``);
        readable as attributes of the config too (``cfg.phantom_shape``).

    Construct with keyword arguments (``DataConfig(source="files", root="scans", ...)``: keys that
    are not common go to the source's options) or from a mapping with :meth:`from_mapping`.
    """

    source: str = "afids"
    spacing: float = 2.0
    n_train: int = 16
    n_test: int = 8
    seed: int = 0
    dtype: str = "uint8"
    factors: tuple[int, ...] = (1,)
    intensity_ceiling: float | None = None
    options: Any = None

    def __init__(self, source: str = "afids", spacing: float = 2.0, n_train: int = 16, n_test: int = 8, seed: int = 0,
                 dtype: str = "uint8", factors: tuple[int, ...] = (1,), intensity_ceiling: float | None = None,
                 options: Any = None, *, _where: str = "data", **source_options):
        cls = source_class(source)
        if options is None or isinstance(options, Mapping):
            opts = dict(options or {})
            opts.update(source_options)
        elif isinstance(options, cls.Options):
            if source_options:
                opts = dataclasses.replace(options, **source_options)
            else:
                opts = options
        else:
            raise ConfigError(f"{_where}: options of type {type(options).__name__} do not belong to data.source {source!r}")
        if isinstance(opts, dict):
            allowed = {f.name for f in dataclasses.fields(cls.Options)}
            for key, ignorable in _LEGACY_KEYS.items():
                if key in opts and key not in allowed and ignorable(opts[key]):
                    opts.pop(key)
            unknown = sorted(set(opts) - allowed)
            if unknown:
                common = [f.name for f in dataclasses.fields(DataConfig) if f.name != "options"]
                raise ConfigError(f"{_where}.{unknown[0]}: unknown key for data.source {source!r} "
                                  f"(unknown: {', '.join(unknown)}); allowed: {', '.join(common + sorted(allowed))}")
            opts = build(cls.Options, opts, _where)
        for name, value in (("source", source), ("spacing", float(spacing)), ("n_train", int(n_train)),
                            ("n_test", int(n_test)), ("seed", int(seed)), ("dtype", dtype),
                            ("factors", tuple(int(f) for f in factors)),
                            ("intensity_ceiling", None if intensity_ceiling is None else float(intensity_ceiling)),
                            ("options", opts)):
            object.__setattr__(self, name, value)
        if not self.spacing > 0:
            raise ConfigError(f"{_where}.spacing: must be > 0 mm, got {spacing!r}")
        if self.n_train < 1 or self.n_test < 1:
            raise ConfigError(f"{_where}.n_train and {_where}.n_test must be >= 1")
        if self.seed < 0:
            raise ConfigError(f"{_where}.seed: must be >= 0, got {seed!r}")
        if self.intensity_ceiling is not None and not (math.isfinite(self.intensity_ceiling) and self.intensity_ceiling > 0):
            raise ConfigError(f"{_where}.intensity_ceiling: must be a finite number > 0 (or null), got {intensity_ceiling!r}")
        check = getattr(opts, "check", None)
        if check is not None:
            check(self, _where)

    def __getattr__(self, name: str):
        opts = self.__dict__.get("options")
        if opts is not None and name in {f.name for f in dataclasses.fields(opts)}:
            return getattr(opts, name)
        raise AttributeError(f"{type(self).__name__} (source {self.__dict__.get('source')!r}) has no key {name!r}")

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_mapping(), sort_keys=True, default=str))

    def to_mapping(self) -> dict:
        """The flat ``data:`` mapping (common keys, then the source's keys) as plain YAML-able data."""
        out = {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "options"}
        out.update(to_dict(self.options))
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, where: str = "data") -> "DataConfig":
        """A config from a flat ``data:`` mapping; types of the common keys are checked here, the
        source's keys by its ``Options`` dataclass. Errors name ``<where>.<key>``."""
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        common = {f.name for f in dataclasses.fields(cls)} - {"options"}
        kwargs = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in data.items() if k in common}
        rest = {k: v for k, v in data.items() if k not in common and k != "options"}
        if isinstance(data.get("options"), Mapping):  # the nested form, as dataclasses.asdict writes it
            rest = {**data["options"], **rest}
        return cls(**kwargs, options=rest, _where=where)
