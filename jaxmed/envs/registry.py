"""Named environment configurations: ``jaxmed.make(name, bank_labels=..., **overrides) -> (env, params)``.

Registered names (``registered()`` lists them):

* ``"landmark-v0"``: one agent on one landmark (default: the first of ``bank_labels``), level 0.
* ``"landmark-multiscale-v0"``: one agent, coarse-to-fine over pyramid levels ``(0, 1, 2)``.
* ``"landmark-multiagent-v0"``: one agent per landmark (default: the first ``min(4, K)`` labels).
* ``"registration-v0"``: rigid registration (:mod:`jaxmed.envs.registration`), coarse-to-fine over
  levels ``(0, 1, 2)`` with steps ``(1, 2, 4)`` mm / degrees; TRE over ``landmarks`` (default: all
  of ``bank_labels``).
* ``"box-v0"``: one box agent (:mod:`jaxmed.envs.box`, Navarro 2020); ``"corner-pair-v0"``: two corner
  agents (:mod:`jaxmed.envs.corner_pair`, Zheng 2021); both take ``structure=NAME`` (points
  ``"<structure>#<i>"`` in the bank; default: the first such group of ``bank_labels``).
* ``"plane-v0"``: view-plane search (:mod:`jaxmed.envs.plane`, Alansary 2018); ``target=NAME`` a
  registered plane (:data:`jaxmed.data.planes.PLANES`, default ``"acpc_axial"``), multi-scale over
  ``levels`` / ``angle_steps`` / ``offset_steps``.
* ``"goal-landmark-v0"``: goal-conditioned landmark navigation (:mod:`jaxmed.envs.goal_landmark`,
  Amadou 2024): one agent, the goal image of ``goals`` (default: all of ``bank_labels``) in an
  extra observation channel.
* ``"goal-plane-v0"``: goal-conditioned view-plane search (:mod:`jaxmed.envs.goal_plane`): one
  agent, ``goals`` (default ``("acpc_axial", "midsagittal", "coronal_ac")``) shown as the goal
  plane's slab in the reference volume, an extra observation channel.

The landmark factories also take ``agents_per_target=n``: ``n`` agents hunt each target (targets
``(AC, PC)`` become ``(AC, AC, AC, PC, PC, PC)`` for ``n = 3``); evaluation starts them from
different points and detection answers the robust mean of their end points.

``overrides`` may name any field of the env's static config (e.g. ``targets``, ``crop_size``,
``frames``, ``levels``, ``osc_window``) or of its numeric ``LandmarkParams`` (``max_steps``,
``reward_clip``, ...); anything else is a :class:`jaxmed.errors.ConfigError` listing the valid keys,
and so is a value of the wrong type or outside the interval its field declares
(:func:`jaxmed.config.bounded`).
"""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any, Callable, Sequence

from jaxmed.config import check_fields, check_value, coerce, field_bounds
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
    try:
        return _REGISTRY[name](name, bank_labels, **overrides)
    except ConfigError as e:  # a field of the env's static config (jaxmed.config.check_fields) named as an env option
        field = re.match(r"[A-Z]\w*Config\.(\w+ must be .*)", str(e), re.S)
        if field is None:
            raise
        raise ConfigError(f"{name}: env.{field.group(1)}") from None


def make_for_run(name: str, bank_labels: Sequence[str] | None, options: dict, *, eval_max_steps: int | None = None,
                 level_step_limit: int | None = None) -> tuple[Any, Any, Any]:
    """``(env, params, eval_params)`` of a run's ``env:`` section: :func:`make` with ``options``, and
    the env's :meth:`eval_params` with ``max_steps = eval_max_steps`` and ``level_step_limit`` when
    given (``eval.level_step_limit``; :func:`with_level_step_limit`)."""
    env, params = make(name, bank_labels, **options)
    eval_params = env.eval_params(params)
    if eval_max_steps is not None:
        eval_params = eval_params.replace(max_steps=int(eval_max_steps))
    return env, params, with_level_step_limit(eval_params, level_step_limit, "eval.level_step_limit")


def with_level_step_limit(params, limit, where: str):
    """``params`` (an env's params) with ``level_step_limit = limit``; unchanged for ``None``;
    :class:`ConfigError` naming ``where`` when the env has no such parameter or the value is not an
    int in the interval the params declare (>= 0)."""
    if limit is None:
        return params
    if not hasattr(params, "level_step_limit"):
        raise ConfigError(f"{where}: {type(params).__name__} has no level_step_limit (an option of the landmark search)")
    return params.replace(level_step_limit=check_value(limit, int, field_bounds(type(params), "level_step_limit"), where))


def _split_overrides(name: str, config_cls, params_cls, overrides: dict) -> tuple[dict, dict]:
    config_keys = {f.name for f in dataclasses.fields(config_cls)}
    params_keys = {f.name for f in dataclasses.fields(params_cls)}
    unknown = sorted(set(overrides) - config_keys - params_keys)
    if unknown:
        raise ConfigError(
            f"{name}: unknown option(s) {', '.join(unknown)}; config options: {', '.join(sorted(config_keys))}; "
            f"parameters: {', '.join(sorted(params_keys))}"
        )
    config = _typed(config_cls, {k: v for k, v in overrides.items() if k in config_keys})
    params = _typed(params_cls, {k: v for k, v in overrides.items() if k in params_keys})
    check_fields(params_cls(**params), f"{name}: env")  # declared ranges, e.g. "landmark-v0: env.max_steps must be ..."
    return config, params


def _typed(cls, options: dict) -> dict:
    """``options`` checked against the field types of dataclass ``cls`` (:func:`jaxmed.config.coerce`:
    a wrong type names its key, e.g. ``env.crop_size: expected an integer, got 'a'``)."""
    hints = typing.get_type_hints(cls)
    return {k: coerce(v, hints[k], f"env.{k}") for k, v in options.items()}


def _landmark_factory(levels: tuple[int, ...], n_default_targets: int | None):
    def factory(name: str, bank_labels, **overrides):
        from jaxmed.envs.landmark import LandmarkConfig, LandmarkEnv, LandmarkParams

        copies = overrides.pop("agents_per_target", 1)
        if not isinstance(copies, int) or isinstance(copies, bool) or copies < 1:
            raise ConfigError(f"{name}: agents_per_target must be a positive int, got {copies!r}")
        config_kw, params_kw = _split_overrides(name, LandmarkConfig, LandmarkParams, overrides)
        config_kw.setdefault("levels", levels)
        if "targets" not in config_kw:
            if not bank_labels:
                raise ConfigError(f"{name}: give targets=(label, ...) or bank_labels=bank.labels to choose the landmarks")
            n = len(bank_labels) if n_default_targets is None else min(n_default_targets, len(bank_labels))
            config_kw["targets"] = tuple(bank_labels[:n])
        if copies > 1:  # several agents hunting each landmark: targets (AC, PC) -> (AC, AC, AC, PC, PC, PC)
            targets = (config_kw["targets"],) if isinstance(config_kw["targets"], str) else tuple(config_kw["targets"])
            config_kw["targets"] = tuple(t for t in targets for _ in range(copies))
        env = LandmarkEnv(LandmarkConfig(**config_kw), labels=bank_labels, name=name)
        params = LandmarkParams(**params_kw)
        _check_intensity_tables(name, env.config, params)
        return env, params

    return factory


register("landmark-v0", _landmark_factory((0,), 1))
register("landmark-multiscale-v0", _landmark_factory((0, 1, 2), 1))
register("landmark-multiagent-v0", _landmark_factory((0,), 4))


def _check_intensity_tables(name: str, config, params) -> None:
    """Random contrast and gain need the episode's intensity table (``contrast_knots > 0``); a gain
    range is ``0 < gain_min <= gain_max``."""
    for key in ("contrast_prob", "gain_prob"):
        if float(getattr(params, key)) > 0 and not config.contrast_knots:
            raise ConfigError(f"{name}: env.{key} > 0 needs env.contrast_knots (the episode's intensity table), e.g. 6")
    _check_gain_range(name, params)


def _check_gain_range(name: str, params) -> None:
    """A random gain's bounds satisfy ``0 < gain_min <= gain_max``."""
    lo, hi = float(params.gain_min), float(params.gain_max)
    if not 0 < lo <= hi:
        raise ConfigError(f"{name}: env.gain_min / env.gain_max must satisfy 0 < gain_min <= gain_max, got {lo}, {hi}")


def _labels_from_bank(name: str, config_kw: dict, key: str, bank_labels, what: str) -> None:
    """Default ``config_kw[key]`` to every bank label (:class:`ConfigError` when neither is given)."""
    if key not in config_kw:
        if not bank_labels:
            raise ConfigError(f"{name}: give {key}=(label, ...) or bank_labels=bank.labels to choose {what}")
        config_kw[key] = tuple(bank_labels)


def _registration_factory(name: str, bank_labels, **overrides):
    from jaxmed.envs.registration import RegistrationConfig, RegistrationEnv, RegistrationParams

    config_kw, params_kw = _split_overrides(name, RegistrationConfig, RegistrationParams, overrides)
    config_kw.setdefault("levels", (0, 1, 2))
    config_kw.setdefault("steps", (1.0, 2.0, 4.0))
    _labels_from_bank(name, config_kw, "landmarks", bank_labels, "the TRE landmarks")
    env = RegistrationEnv(RegistrationConfig(**config_kw), labels=bank_labels, name=name)
    params = RegistrationParams(**params_kw)
    _check_gain_range(name, params)
    return env, params


register("registration-v0", _registration_factory)


def _box_factory(kind: str):
    """Factory of the box envs: ``kind`` ``"box"`` (:class:`jaxmed.envs.box.BoxEnv`) or ``"corner-pair"``
    (:class:`jaxmed.envs.corner_pair.CornerPairEnv`); ``structure`` names the target (points
    ``"<structure>#<i>"`` among ``bank_labels``; default: the first such group)."""

    def factory(name: str, bank_labels, **overrides):
        if kind == "box":
            from jaxmed.envs.box import BoxConfig as Config
            from jaxmed.envs.box import BoxEnv as Env
            from jaxmed.envs.box import BoxParams as Params
        else:
            from jaxmed.envs.corner_pair import CornerPairConfig as Config
            from jaxmed.envs.corner_pair import CornerPairEnv as Env
            from jaxmed.envs.corner_pair import CornerPairParams as Params

        config_kw, params_kw = _split_overrides(name, Config, Params, overrides)
        if "structure" not in config_kw:
            groups = [l.split("#", 1)[0] for l in (bank_labels or ()) if "#" in l]
            if not groups:
                raise ConfigError(f"{name}: give structure=NAME, or bank_labels with '<structure>#<i>' points "
                                  "(jaxmed.data.anatomy.structure_landmarks)")
            config_kw["structure"] = groups[0]
        env = Env(Config(**config_kw), labels=bank_labels, name=name)
        return env, Params(**params_kw)

    return factory


register("box-v0", _box_factory("box"))
register("corner-pair-v0", _box_factory("corner-pair"))


def _plane_factory(name: str, bank_labels, **overrides):
    """The view-plane env (:class:`jaxmed.envs.plane.PlaneEnv`); ``target`` names a registered plane
    (:data:`jaxmed.data.planes.PLANES`, default ``"acpc_axial"``)."""
    from jaxmed.envs.plane import PlaneConfig, PlaneEnv, PlaneParams

    config_kw, params_kw = _split_overrides(name, PlaneConfig, PlaneParams, overrides)
    env = PlaneEnv(PlaneConfig(**config_kw), labels=bank_labels, name=name)
    return env, PlaneParams(**params_kw)


register("plane-v0", _plane_factory)


def _goal_landmark_factory(name: str, bank_labels, **overrides):
    """Goal-conditioned landmark navigation (:mod:`jaxmed.envs.goal_landmark`); ``goals`` default:
    every label of ``bank_labels``."""
    from jaxmed.envs.goal_landmark import GoalLandmarkConfig, GoalLandmarkEnv
    from jaxmed.envs.landmark import LandmarkParams

    config_kw, params_kw = _split_overrides(name, GoalLandmarkConfig, LandmarkParams, overrides)
    _labels_from_bank(name, config_kw, "goals", bank_labels, "the goal landmarks")
    env = GoalLandmarkEnv(GoalLandmarkConfig(**config_kw), labels=bank_labels, name=name)
    return env, LandmarkParams(**params_kw)


register("goal-landmark-v0", _goal_landmark_factory)


def _goal_plane_factory(name: str, bank_labels, **overrides):
    """Goal-conditioned view planes (:mod:`jaxmed.envs.goal_plane`); ``goals`` default: ACPC axial,
    mid-sagittal and the coronal plane through AC."""
    from jaxmed.envs.goal_plane import GoalPlaneConfig, GoalPlaneEnv
    from jaxmed.envs.plane import PlaneParams

    config_kw, params_kw = _split_overrides(name, GoalPlaneConfig, PlaneParams, overrides)
    config_kw.setdefault("goals", ("acpc_axial", "midsagittal", "coronal_ac"))
    env = GoalPlaneEnv(GoalPlaneConfig(**config_kw), labels=bank_labels, name=name)
    return env, PlaneParams(**params_kw)


register("goal-plane-v0", _goal_plane_factory)


def _seg_factory(kind: str):
    """Factory of the segmentation envs on a :class:`jaxmed.data.structures.SegBank`: ``kind``
    ``"threshold"`` (:mod:`jaxmed.envs.threshold_seg`, Sahba 2006) or ``"voxel"``
    (:mod:`jaxmed.envs.voxel_seg`, Liao 2020)."""

    def factory(name: str, bank_labels, **overrides):
        if kind == "threshold":
            from jaxmed.envs.threshold_seg import ThresholdSegConfig as Config
            from jaxmed.envs.threshold_seg import ThresholdSegEnv as Env
            from jaxmed.envs.threshold_seg import ThresholdSegParams as Params
        else:
            from jaxmed.envs.voxel_seg import VoxelSegConfig as Config
            from jaxmed.envs.voxel_seg import VoxelSegEnv as Env
            from jaxmed.envs.voxel_seg import VoxelSegParams as Params

        config_kw, params_kw = _split_overrides(name, Config, Params, overrides)
        return Env(Config(**config_kw), labels=bank_labels, name=name), Params(**params_kw)

    return factory


register("threshold-seg-v0", _seg_factory("threshold"))
register("voxel-seg-v0", _seg_factory("voxel"))
