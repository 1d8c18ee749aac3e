"""Search spaces: a ``SPACE.yaml`` -> sampled trials -> per-trial experiment configs, grouped by
what must be compiled separately.

A space file::

    method: halving            # halving (one bracket of `trials`) | hyperband (all brackets)
    trials: 8                  # halving only: trials of the bracket (the default config counts)
    eta: 2                     # keep 1 / eta of the trials at each rung
    min_chunks: 2              # budget (cumulative training chunks) of the first rung
    max_chunks: 16             # budget of the last rung
    seed: 0                    # sampling seed
    include_default: true      # trial 0 is the base config itself (the baseline to beat)
    metric: {name: distance_mm, split: val, mode: min, n_val: 4, eval_starts: 8}
    params:
      dqn.learning_rate: {log_uniform: [1.0e-4, 3.0e-3]}
      dqn.gamma: {uniform: [0.8, 0.99]}
      dqn.target_update_period: {choice: [100, 250, 500]}
      network.trunk.width: {choice: [0.5, 1.0]}

Parameters are dotted paths into the experiment config. ``<learner>.<field>`` where ``field`` is
one of the learner's hyperparameter leaves (``HPARAM_FIELDS`` of the learner module:
``jaxmed.agents.dqn``, ``a2c``, ``ppo``, ``grpo``) vary *inside* one compiled program (a vmapped population);
every other path (trunk width, crop size, n-step,
``dqn.double``, ``network.head.name``, ...) changes the program and makes a separate compiled group.
Distributions: ``{uniform: [lo, hi]}``, ``{log_uniform: [lo, hi]}``, ``{int_uniform: [lo, hi]}``
(inclusive), ``{choice: [a, b, ...]}``, or a plain value (fixed).

``metric.split``: ``val`` (greedy evaluation rollout on ``n_val`` validation subjects from
``eval_starts`` starts each, metric ``name`` of the env's ``eval_metrics``, mean over episodes and
agents) or ``train`` (the training log's ``final_<name>`` of the last chunk).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any

import numpy as np

from jaxmed.config import bounded, build, check_fields
from jaxmed.errors import ConfigError

DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform", "choice")


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str = "distance_mm"
    split: str = "val"  # val | train
    mode: str = "min"  # min | max
    n_val: int = bounded(4, 1)  # validation subjects (split: val)
    eval_starts: int = bounded(8, 1)  # evaluation starts per validation subject

    def __post_init__(self):
        check_fields(self, "metric")
        if self.split not in ("val", "train"):
            raise ConfigError(f"metric.split must be 'val' or 'train', got {self.split!r}")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"metric.mode must be 'min' or 'max', got {self.mode!r}")


@dataclasses.dataclass(frozen=True)
class Space:
    params: dict
    method: str = "halving"
    trials: int = bounded(8, 1)
    eta: int = bounded(2, 2)
    min_chunks: int = bounded(1, 1)
    max_chunks: int = bounded(8, 1)
    seed: int = 0
    include_default: bool = True
    common_seed: bool = True  # every trial starts from train.seed's key (else the trial id is folded in)
    metric: Metric = Metric()

    def __post_init__(self):
        check_fields(self, "space")
        if self.method not in ("halving", "hyperband"):
            raise ConfigError(f"space.method must be 'halving' or 'hyperband', got {self.method!r}")
        if not isinstance(self.params, dict) or not self.params:
            raise ConfigError("space.params: expected a non-empty mapping of dotted config paths to distributions")
        for path, spec in self.params.items():
            _check_spec(path, spec)

    @staticmethod
    def from_dict(data: Any, where: str = "space") -> "Space":
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: a search space must be a mapping, got {type(data).__name__}")
        data = dict(data)
        metric = build(Metric, data.pop("metric", None), f"{where}.metric")
        params = data.pop("params", None)
        fields = {f.name for f in dataclasses.fields(Space)} - {"params", "metric"}
        unknown = set(data) - fields
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: params, metric, {', '.join(sorted(fields))}")
        try:
            return Space(params=params, metric=metric, **data)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _check_spec(path: str, spec: Any) -> None:
    if not isinstance(path, str) or "." not in path:
        raise ConfigError(f"space.params: {path!r} is not a dotted config path like dqn.learning_rate")
    if not isinstance(spec, dict):
        return  # a fixed value
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"space.params.{path}: expected one of {{{', '.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"space.params.{path}: choice needs a non-empty list")
        return
    if not (isinstance(arg, list) and len(arg) == 2 and all(isinstance(a, (int, float)) for a in arg) and arg[0] <= arg[1]):
        raise ConfigError(f"space.params.{path}: {kind} needs [low, high] with low <= high, got {arg!r}")
    if kind == "log_uniform" and arg[0] <= 0:
        raise ConfigError(f"space.params.{path}: log_uniform needs low > 0, got {arg!r}")


def _draw(spec: Any, rng: np.random.Generator) -> Any:
    if not isinstance(spec, dict):
        return spec
    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        return arg[int(rng.integers(len(arg)))]
    lo, hi = arg
    if kind == "uniform":
        return float(rng.uniform(lo, hi))
    if kind == "log_uniform":
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return int(rng.integers(int(lo), int(hi) + 1))


def sample(space: Space, n: int, rng: np.random.Generator) -> list[dict]:
    """``n`` trials, each ``{dotted path: value}`` over every parameter of the space."""
    return [{path: _draw(spec, rng) for path, spec in space.params.items()} for _ in range(n)]


def base_values(space: Space, base: dict) -> dict:
    """The base config's value of every parameter of the space (the default trial)."""
    return {path: get_path(base, path) for path in space.params}


def get_path(data: dict, path: str) -> Any:
    node = data
    for k in path.split("."):
        if not isinstance(node, dict) or k not in node:
            return _default_value(path)
        node = node[k]
    return node


def _default_value(path: str) -> Any:
    """The dataclass default of a learner field the YAML leaves out (``None`` when there is none)."""
    from jaxmed.agents import learners

    section, _, field = path.partition(".")
    if section in learners.LEARNERS and "." not in field:
        cls = learners.config_class(section)
        for f in dataclasses.fields(cls):
            if f.name == field:
                return f.default
    return None


def set_path(data: dict, path: str, value: Any) -> dict:
    """A deep copy of ``data`` with the dotted ``path`` set to ``value`` (sections created as needed).

    A string where a section is needed (``trunk: patch``) becomes ``{name: patch}`` first."""
    out = copy.deepcopy(data)
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        nxt = node.get(k)
        if nxt is None:
            nxt = node[k] = {}
        elif isinstance(nxt, str):
            nxt = node[k] = {"name": nxt}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"space parameter {path}: {k!r} is not a config section (it is {nxt!r})")
        node = nxt
    node[keys[-1]] = value
    return out


def leaf_fields(learner: str) -> tuple[str, ...]:
    """The learner's hyperparameters that are pytree leaves (``()`` when it has no hparams plumbing)."""
    from jaxmed.agents import learners

    return tuple(getattr(learners.module(learner), "HPARAM_FIELDS", ()))


def is_leaf(path: str, learner: str) -> bool:
    section, _, field = path.partition(".")
    return section == learner and field in leaf_fields(learner)


@dataclasses.dataclass
class Trial:
    """One sampled configuration. ``group`` names its compiled program (equal static settings)."""

    id: int
    bracket: int
    values: dict  # dotted path -> value
    config: Any  # the trial's full ExperimentConfig
    group: str  # key of the group config (leaf hyperparameters reset to the base values)


def make_trials(space: Space, base: dict, n: int, bracket: int, first_id: int, rng: np.random.Generator, with_default: bool) -> list[Trial]:
    """``n`` trials of one bracket (the first is the base config when ``with_default``); each
    trial's config is validated by :meth:`ExperimentConfig.from_dict`."""
    values = sample(space, n, rng)
    if with_default:
        values[0] = base_values(space, base)
    return [make_trial(base, v, bracket, first_id + i) for i, v in enumerate(values)]


def make_trial(base: dict, values: dict, bracket: int, trial_id: int) -> Trial:
    from jaxmed.experiment import ExperimentConfig

    data = base
    for path, v in values.items():
        data = set_path(data, path, v)
    cfg = ExperimentConfig.from_dict(data, f"trial {trial_id}")
    learner = cfg.train.learner
    static = {p: v for p, v in values.items() if not is_leaf(p, learner)}
    leaves = [p for p in values if is_leaf(p, learner)]
    if leaves and not leaf_fields(learner):
        raise ConfigError(f"learner {learner!r} has no hyperparameter leaves (HPARAM_FIELDS): its trials cannot be vmapped")
    if "dqn.tau" in values and learner == "dqn" and float(get_path(base, "dqn.tau")) >= 1.0:
        raise ConfigError("space parameter dqn.tau: set dqn.tau < 1 in the base config (Polyak averaging instead of hard "
                          "target copies is chosen statically, by the base config)")
    group = json.dumps({"learner": learner, **{p: static[p] for p in sorted(static)}}, default=str)
    return Trial(trial_id, bracket, dict(values), cfg, group)


def group_config(trial: Trial, base: dict):
    """The compiled program's config of a trial: its static settings, the base leaf values."""
    from jaxmed.experiment import ExperimentConfig

    learner = trial.config.train.learner
    data = base
    for path, v in trial.values.items():
        if not is_leaf(path, learner):
            data = set_path(data, path, v)
    return ExperimentConfig.from_dict(data, f"group of trial {trial.id}")
