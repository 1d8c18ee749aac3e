"""The grid of a scaling study: validation of the grid mapping (YAML / command line), its points
(the cartesian product of the axes) and the experiment config of each point."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import yaml

from jaxmed.errors import ConfigError

AXES = ("config", "variant", "learner", "n_envs", "devices", "processes", "agents", "crop_size", "dtype", "trunk")
GRID_KEYS = ("config", "overrides", "variants", "measure", "chunks", "env_steps", "min_time", "axes")
MEASURES = ("env", "train")
RESULT_KEYS = ("env_agent_steps_per_s", "train_env_steps_per_s", "updates_per_s", "compile_s", "peak_memory_bytes", "memory_source")


def load_grid(data: dict | None, where: str = "grid") -> dict:
    """Validate a grid mapping and fill the defaults (:class:`ConfigError` naming ``where``)."""
    data = dict(data or {})
    unknown = set(data) - set(GRID_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(GRID_KEYS)}")
    axes = data.get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError(f"{where}.axes: expected a mapping of axis -> list of values")
    bad = set(axes) - set(AXES)
    if bad:
        raise ConfigError(f"{where}.axes: unknown axis {sorted(bad)}; axes: {', '.join(AXES)}")
    for k, v in axes.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}.axes.{k}: expected a non-empty list, got {v!r}")
    for k in ("n_envs", "devices", "processes", "agents", "crop_size"):
        if any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in axes.get(k, [])):
            raise ConfigError(f"{where}.axes.{k}: values must be integers >= 1, got {axes[k]!r}")
    variants = data.get("variants") or {}
    if not isinstance(variants, dict) or any(not isinstance(v, list) for v in variants.values()):
        raise ConfigError(f"{where}.variants: expected a mapping of name -> list of section.key=value overrides")
    missing = [v for v in axes.get("variant", []) if v not in variants]
    if missing:
        raise ConfigError(f"{where}.axes.variant: {missing} not defined under variants (defined: {sorted(variants)})")
    measure = data.get("measure", list(MEASURES))
    if isinstance(measure, str):
        measure = [measure]
    if not measure or any(m not in MEASURES for m in measure):
        raise ConfigError(f"{where}.measure: expected a non-empty list of {', '.join(MEASURES)}, got {measure!r}")
    if "processes" in axes and "train" not in measure:
        raise ConfigError(f"{where}: the processes axis measures multi-host training; add 'train' to measure")
    grid = {"config": str(data.get("config", "configs/phantom_dqn.yaml")), "overrides": list(data.get("overrides") or []),
            "variants": {str(k): list(v) for k, v in variants.items()}, "measure": list(measure),
            "chunks": int(data.get("chunks", 3)), "env_steps": int(data.get("env_steps", 50)),
            "min_time": float(data.get("min_time", 0.0)), "axes": axes}
    if grid["chunks"] < 1 or grid["env_steps"] < 1 or grid["min_time"] < 0:
        raise ConfigError(f"{where}: chunks and env_steps must be >= 1 and min_time >= 0")
    return grid


def points(grid: dict) -> list[dict]:
    """The grid points (cartesian product of the axes, in :data:`AXES` order, the first slowest)."""
    axes = grid["axes"]
    names = [a for a in AXES if a in axes]
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[a] for a in names))]


def point_config(grid: dict, point: dict):
    """The experiment config of one grid point (validated)."""
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.data.run_data import template
    from jaxmed.experiment import ExperimentConfig

    data = apply_overrides(load_yaml(point.get("config", grid["config"])), grid["overrides"])
    if "variant" in point:
        data = apply_overrides(data, grid["variants"][point["variant"]])
    data.setdefault("train", {})
    learner = point.get("learner", data["train"].get("learner", "dqn"))
    multihost = "processes" in point
    if multihost and learner != "dqn" and "train" in grid["measure"]:
        raise ConfigError(f"processes={point['processes']}: multi-host training exists for the dqn learner only, not {learner}")
    over = [f"train.learner={learner}", "train.seeds=1", f"train.devices={1 if multihost else point.get('devices', 1)}"]
    if "n_envs" in point:
        over.append(f"{learner}.n_envs={point['n_envs']}")
    if "crop_size" in point:
        over.append(f"env.crop_size={point['crop_size']}")
    if "dtype" in point:
        over.append(f"data.dtype={point['dtype']}")
    if "trunk" in point:
        # another trunk replaces the whole trunk section (its options belong to the old trunk);
        # the same trunk keeps its options
        trunk = (data.get("network") or {}).get("trunk")
        same = isinstance(trunk, dict) and trunk.get("name") == point["trunk"]
        if not same:
            over.append(f"network.trunk={point['trunk']}")
    data = apply_overrides(data, over)
    if learner == "dqn" and "train" in grid["measure"]:  # every timed step trains
        batch = int((data.get("dqn") or {}).get("batch_size", 48))
        data = apply_overrides(data, [f"dqn.learning_starts={batch}"])
    if "agents" in point:
        cfg = ExperimentConfig.from_dict(data, "grid point")
        labels = list(template(cfg.data)[1].labels)
        if point["agents"] > len(labels):
            raise ConfigError(f"agents={point['agents']}: the {cfg.data.source} template has {len(labels)} landmarks")
        data = apply_overrides(data, [f"env.targets={json.dumps(labels[: point['agents']])}"])
        if "n_agents" in (data.get("network") or {}):
            data = apply_overrides(data, [f"network.n_agents={point['agents']}"])
    return ExperimentConfig.from_dict(data, f"grid point {point}")


def grid_from_args(args) -> dict:
    """The grid of ``jaxmed bench``: the YAML file (if any) with the command-line axes replacing its own."""
    data = yaml.safe_load(Path(args.grid).read_text()) if args.grid else {}
    if args.grid and not isinstance(data, dict):
        raise ConfigError(f"{args.grid}: a grid must be a mapping")
    data = dict(data or {})
    axes = dict(data.get("axes") or {})
    for a in AXES:
        v = getattr(args, a, None) if a != "config" else args.configs  # --config is the base experiment
        if v:
            axes[a] = v
    data["axes"] = axes
    for k in ("config", "chunks", "env_steps", "min_time", "measure"):
        if getattr(args, k, None) is not None:
            data[k] = getattr(args, k)
    if args.overrides:
        data["overrides"] = list(data.get("overrides") or []) + args.overrides
    return load_grid(data, args.grid or "jaxmed bench")
