"""Named environment configurations: ``jaxmed.make(name, bank_labels=..., **overrides) -> (env, params)``.

Registered names (``registered()`` lists them):

* ``"landmark-v0"``: one agent on one landmark (default: the first of ``bank_labels``), level 0.
* ``"landmark-multiscale-v0"``: one agent, coarse-to-fine over pyramid levels ``(0, 1, 2)``.
* ``"landmark-multiagent-v0"``: one agent per landmark (default: the first ``min(4, K)`` labels).

``overrides`` may name any field of the env's static config (e.g. ``targets``, ``crop_size``,
``frames``, ``levels``, ``osc_window``) or of its numeric ``EnvParams`` (``max_steps``,
``reward_clip``, ...); anything else is a :class:`jaxmed.errors.ConfigError` listing the valid keys.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

from jaxmed.errors import ConfigError

_REGISTRY: dict[str, Callable[..., tuple[Any, Any]]] = {}


def register(name: str, factory: Callable[..., tuple[Any, Any]]) -> None:
    """Register ``factory(name, bank_labels, **overrides) -> (env, params)`` under ``name``."""
    if name in _REGISTRY:
        raise ConfigError(f"environment {name!r} is already registered")
    _REGISTRY[name] = factory


def registered() -> tuple[str, ...]:
    """The registered environment names, sorted."""
    return tuple(sorted(_REGISTRY))


def make(name: str, bank_labels: Sequence[str] | None = None, **overrides) -> tuple[Any, Any]:
    """Build a registered environment: ``(env, params)``.

    Args:
      name: a registered name (see :func:`registered`).
      bank_labels: the landmark labels of the bank the env will run on (``bank.labels``): default
        targets are taken from them and given targets are checked against them.
      overrides: config or parameter fields to change from the registered defaults.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown environment {name!r}; registered: {', '.join(registered())}")
    return _REGISTRY[name](name, bank_labels, **overrides)


def _split_overrides(name: str, config_cls, params_cls, overrides: dict) -> tuple[dict, dict]:
    config_keys = {f.name for f in dataclasses.fields(config_cls)}
    params_keys = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(overrides) - config_keys - params_keys)
    if unknown:
        raise ConfigError(
            f"{name}: unknown option(s) {', '.join(unknown)}; config options: {', '.join(sorted(config_keys))}; "
            f"parameters: {', '.join(sorted(params_keys))}"
        )
    config = {k: v for k, v in overrides.items() if k in config_keys}
    params = {k: v for k, v in overrides.items() if k in params_keys}
    return config, params


def _landmark_factory(levels: tuple[int, ...], n_default_targets: int | None):
    def factory(name: str, bank_labels, **overrides):
        from jaxmed.envs.landmark import EnvParams, LandmarkEnv, LandmarkEnvConfig

        config_kw, params_kw = _split_overrides(name, LandmarkEnvConfig, EnvParams, overrides)
        config_kw.setdefault("levels", levels)
        if "targets" not in config_kw:
            if not bank_labels:
                raise ConfigError(f"{name}: give targets=(label, ...) or bank_labels=bank.labels to choose the landmarks")
            n = len(bank_labels) if n_default_targets is None else min(n_default_targets, len(bank_labels))
            config_kw["targets"] = tuple(bank_labels[:n])
        env = LandmarkEnv(LandmarkEnvConfig(**config_kw), labels=bank_labels, name=name)
        return env, EnvParams(**params_kw)

    return factory


register("landmark-v0", _landmark_factory((0,), 1))
register("landmark-multiscale-v0", _landmark_factory((0, 1, 2), 1))
register("landmark-multiagent-v0", _landmark_factory((0,), 4))
