"""Typed run configurations: YAML files and ``key.sub=value`` overrides -> frozen dataclasses.

One way to declare and check a config section: a frozen dataclass with typed fields, each numeric
one declaring the interval it must lie in with :func:`bounded`, checked by :func:`check_fields`
from its ``__post_init__`` (cross-field rules stay there too), instantiated from a mapping with
:func:`build`. Unknown keys, wrong types and values outside their interval raise
:class:`ConfigError` naming the key path (``config.dqn.gamma``, ``config.network.trunk.width``)
and the allowed keys or values, before anything is compiled. Learner
sections, env options (the env's config and params dataclasses) and the network section (trunk and
head options: the fields of the flax modules) all go through it.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from jaxmed.errors import ConfigError


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """Read a YAML mapping; :class:`ConfigError` for a missing file, bad YAML or a non-mapping.

    A top-level ``base: OTHER.yaml`` (relative to this file) is loaded first and this file's
    sections are merged into it key by key, so a variant config states only what it changes.
    """
    data = _read_yaml(Path(path))
    if "base" in data:
        base = Path(path).parent / str(data.pop("base"))
        if base.resolve() in _seen:
            raise ConfigError(f"{path}: circular 'base' chain through {base}")
        data = _merge(load_yaml(base, _seen + (Path(path).resolve(),)), data)
    return data


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested dict copy."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k!r} is not a section")
        node[keys[-1]] = yaml.safe_load(raw)
    return out


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against type ``hint`` (bool, int, float, str, tuples / sequences, unions,
    mappings, nested dataclasses built with :func:`build`); integral floats become ints, ints
    become floats, lists become tuples. :class:`ConfigError` names ``where``, e.g.
    ``config.network.trunk.width: expected a number, got 'a'``."""
    return _coerce(value, hint, where)


#: Types a value must already have (no conversion), and how messages name them.
_EXACT = {bool: "true/false", str: "a string"}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or hint in (dict,):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint in _EXACT:
        if not isinstance(value, hint):
            raise ConfigError(f"{where}: expected {_EXACT[hint]}, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        from_mapping = getattr(hint, "from_mapping", None)  # sections with keys of their own (data:)
        return from_mapping(value, where) if from_mapping is not None else build(hint, value, where)
    return value


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The interval a numeric config field must lie in: ``low`` / ``high`` (``±inf``: unbounded),
    each end closed unless ``low_open`` / ``high_open``."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return bool(above and below)

    def describe(self, kind: str) -> str:
        """What a value must be, e.g. ``"a positive int"``, ``"an int >= 0"``, ``"a number in (0, 1]"``."""
        noun = "an int" if kind == "int" else "a number"
        if kind == "int" and self.low == 1 and not self.low_open and self.high == math.inf:
            return "a positive int"
        if self.high == math.inf:
            return noun if self.low == -math.inf else f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        if self.low == -math.inf:
            return f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
        return f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


#: The ``dataclasses.field`` metadata key of a field's :class:`Bounds`.
BOUNDS = "jaxmed.bounds"


def bounded(default, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = False) -> Any:
    """A config dataclass field with a default and the interval :func:`check_fields` holds it to::

        gamma: float = bounded(0.9, 0.0, 1.0, low_open=True)   # (0, 1]
        n_envs: int = bounded(16, 1)                            # a positive int
    """
    return dataclasses.field(default=default, metadata={BOUNDS: Bounds(low, high, low_open, high_open)})


def field_bounds(cls, name: str) -> Bounds | None:
    """The :class:`Bounds` of field ``name`` of dataclass ``cls``, declared by ``cls`` or, when a
    subclass only changes the default (``num_steps: int = 5``), by the nearest base class that
    declared it with :func:`bounded`; ``None`` for a field without bounds."""
    for klass in cls.__mro__:
        field = getattr(klass, "__dataclass_fields__", {}).get(name)
        if field is not None and BOUNDS in field.metadata:
            return field.metadata[BOUNDS]
    return None


_SCALARS = (int, float, bool, str)


@functools.lru_cache(maxsize=None)
def _scalar_fields(cls) -> tuple[tuple[str, type, bool, Bounds | None], ...]:
    """``(name, type, optional, bounds)`` of the fields of dataclass ``cls`` annotated int, float,
    bool or str, or one of those ``| None`` (``optional``)."""
    hints, out = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
        optional = len(args) == 2 and type(None) in args
        kind = next(a for a in args if a is not type(None)) if optional else hint
        if kind in _SCALARS:
            out.append((f.name, kind, optional, field_bounds(cls, f.name)))
    return tuple(out)


def check_value(value, kind: type, bounds: Bounds | None, where: str):
    """``value`` as a plain Python ``kind`` (int, float, bool or str) inside ``bounds``; else
    :class:`ConfigError` ``"<where> must be <what>, got <value>"``. An int is an int (NumPy ints too,
    never a bool); a float a finite number (ints converted)."""
    if kind is int:
        ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        value = int(value) if ok else value
    elif kind is float:
        ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
              and bool(np.isfinite(value)))
        value = float(value) if ok else value
    elif kind is bool:
        ok = isinstance(value, (bool, np.bool_))
        value = bool(value) if ok else value
    else:
        ok = isinstance(value, str)
    if ok and (bounds is None or value in bounds):
        return value
    what = {bool: "true or false", str: "a string"}.get(kind)
    if what is None:
        what = (bounds or Bounds()).describe("int" if kind is int else "float")
        what = "a finite number" if what == "a number" else what
    raise ConfigError(f"{where} must be {what}, got {value!r}")


def check_fields(config, where: str | None = None) -> None:
    """Check the scalar fields of a config dataclass instance against their annotations and declared
    :func:`bounded` intervals (:func:`check_value`), and store them as plain Python values (host
    side: call it from ``__post_init__`` of a static config, or on a params instance built from user
    options). A field annotated ``X | None`` may also be ``None``.

    Raise :class:`ConfigError` ``"<where>.<name> must be <what>, got <value>"`` (``where``: the class
    name by default), e.g. ``DQNConfig.gamma must be a number in (0, 1], got 2.0`` or
    ``env.max_steps must be a positive int, got 0``; :func:`build` turns a message that starts with
    the class name into one that names the key path (``config.dqn.gamma must be ...``).
    """
    where = type(config).__name__ if where is None else where
    for name, kind, optional, bounds in _scalar_fields(type(config)):
        value = getattr(config, name)
        if not (optional and value is None):
            object.__setattr__(config, name, check_value(value, kind, bounds, f"{where}.{name}"))


def build(cls, data: Mapping[str, Any] | None, where: str = "config"):
    """Instantiate dataclass ``cls`` from a mapping, checking keys and types recursively."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a field check naming the class (check_fields) names the key path instead
        prefix = f"{cls.__name__}."
        if str(e).startswith(prefix):
            raise ConfigError(f"{where}.{str(e)[len(prefix):]}") from None
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


def to_dict(obj) -> Any:
    """A dataclass (nested) as plain YAML-able Python data (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and hasattr(obj, "to_mapping"):
        return obj.to_mapping()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
