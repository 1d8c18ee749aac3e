"""Find trained landmarks in a new image: load any NIfTI, run every trained agent in one pass, write a
Slicer ``.fcsv``.

All agents of the run (one per landmark, or several per landmark with ``agents_per_target``) start
from ``n_starts`` fixed points and run greedily in one jitted, vmapped rollout; each landmark's answer
aggregates the end points of every agent that hunts it, from every start (the "several agents, one
landmark" estimate of multi-agent landmark detection).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmed import experiment as ex
from jaxmed.errors import ConfigError, LandmarkError

AGGREGATES = ("median", "mean", "trimmed")


def robust_mean(points: np.ndarray, method: str = "median", trim: float = 0.2) -> np.ndarray:
    """Aggregate end points ``(n, 3)`` (mm) into one ``(3,)`` answer.

    ``median``: coordinate-wise median (ignores a minority of lost agents); ``mean``: plain mean;
    ``trimmed``: mean of the points within the ``1 - trim`` fraction closest to the median.
    """
    points = np.asarray(points, np.float64)
    if method == "median":
        return np.median(points, axis=0)
    if method == "mean":
        return points.mean(axis=0)
    if method == "trimmed":
        d = np.linalg.norm(points - np.median(points, axis=0), axis=1)
        keep = d <= np.quantile(d, 1.0 - trim)
        return points[keep].mean(axis=0)
    raise ConfigError(f"unknown aggregate {method!r}; choose one of {', '.join(AGGREGATES)}")


def detect(run_dir: str | Path, image: str | Path, labels: Sequence[str] | None = None, n_starts: int = 27,
           aggregate: str = "median", seed: int = 0):
    """Detect the run's landmarks in ``image`` (all of them, or ``labels``) in one pass.

    Returns :class:`jaxmed.data.Landmarks` in world RAS mm.
    """
    import jax

    from jaxmed.data import Landmarks, build_bank, conform, load_image
    from jaxmed.envs.landmark import LandmarkEnv
    from jaxmed.train import load_params, make_policy_rollout, seed_params

    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    if n_starts < 1:
        raise ConfigError(f"n_starts must be >= 1, got {n_starts}")
    cfg, network, params = load_params(run_dir)
    env, _, eval_params = ex.make_env(cfg)
    if type(env) is not LandmarkEnv:
        raise ConfigError(f"{run_dir}: a {cfg.env_name} run does not detect landmarks (use the command for that task)")
    targets = env.config.targets
    trained = env.required_labels
    labels = tuple(labels) if labels else trained
    missing = [l for l in labels if l not in trained]
    if missing:
        raise LandmarkError(f"{run_dir}: the model was trained for {', '.join(trained)}; it cannot detect {', '.join(missing)}")
    volume = conform(load_image(image), cfg.data.spacing)
    # The bank needs target positions; detection never reads them (no reward, no target stop).
    placeholder = Landmarks(trained, np.repeat(volume.voxel_to_world((np.array(volume.shape) - 1) / 2)[None], len(trained), 0), source=str(image))
    bank = build_bank([(volume, placeholder)], trained, factors=cfg.data.factors, max_crop=env.max_crop, dtype=cfg.data.dtype)
    env.check_bank(bank)
    states = env.eval_states(eval_params, bank, n_starts, seed=seed)
    rollout = make_policy_rollout(cfg, env, eval_params, network)
    res = jax.device_get(rollout(seed_params(cfg, params, 0), bank, states))
    world = volume.voxel_to_world(np.asarray(res["final_state"].pos, dtype=np.float64))  # (E, A, 3) mm
    positions = [robust_mean(world[:, [i for i, t in enumerate(targets) if t == label]].reshape(-1, 3), aggregate) for label in labels]
    return Landmarks(labels, np.array(positions), source=f"jaxmed detect {image}")


def detect_goal(run_dir: str | Path, image: str | Path, goal: str | None = None, goal_patch: str | Path | None = None,
                n_starts: int = 27, aggregate: str = "median", seed: int = 0):
    """Walk a goal-conditioned run's agent (``goal-landmark-v0``) to a goal in ``image``.

    The goal is given by example, never by training: ``goal`` names a landmark of the run's template
    (any of its labels, trained or not; its goal image is the template's crop there) or
    ``goal_patch`` is a ``.npy`` cube of ``crop_size * f`` voxels at the run's spacing centred on
    the goal (``f``: pyramid factor of the coarsest level used). Returns
    :class:`jaxmed.data.Landmarks` with one point (label ``goal`` or ``"goal"``), world RAS mm.
    """
    import jax

    from jaxmed.data import Landmarks, build_bank, conform, load_image
    from jaxmed.envs.goal_landmark import GoalLandmarkConfig, GoalLandmarkEnv, goal_example
    from jaxmed.train import load_params, make_policy_rollout, seed_params

    if (goal is None) == (goal_patch is None):
        raise ConfigError("give exactly one of a goal label (--goal) or a goal patch file (--goal-patch)")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    cfg, network, params = load_params(run_dir)
    env, _, eval_params = ex.make_env(cfg)
    if not isinstance(env, GoalLandmarkEnv):
        raise ConfigError(f"{run_dir}: a {cfg.env_name} run is not goal-conditioned; --goal / --goal-patch need a goal-landmark-v0 run")
    label = goal if goal is not None else "goal"
    if goal is not None:
        tpl_volume, tpl_landmarks = ex.template(cfg.data)
        if goal not in tpl_landmarks.labels:
            raise LandmarkError(f"unknown goal {goal!r}: the template of this run has {', '.join(tpl_landmarks.labels)}")
        reference = (conform(tpl_volume, cfg.data.spacing), tpl_landmarks.select([goal]))
    else:
        path = Path(goal_patch)
        try:
            patch = np.load(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: cannot read a goal patch (.npy array): {err}") from None
        edge = env.config.crop_size * max(cfg.data.factors[l] for l in env.config.levels)
        reference = goal_example(patch, cfg.data.spacing, edge, label)
    volume = conform(load_image(image), cfg.data.spacing)
    # the subject's goal position is unknown and never read (no reward, no target stop)
    placeholder = Landmarks((label,), volume.voxel_to_world((np.array(volume.shape) - 1) / 2)[None], source=str(image))
    bank = build_bank([reference, (volume, placeholder)], (label,), factors=cfg.data.factors, max_crop=env.max_crop, dtype=cfg.data.dtype)
    c = env.config
    denv = GoalLandmarkEnv(GoalLandmarkConfig(goals=(label,), n_agents=c.n_agents, crop_size=c.crop_size, frames=c.frames,
                                              levels=c.levels, osc_window=c.osc_window, reference_volume=0), labels=bank.labels, name=env.name)
    states = denv.eval_states(eval_params, bank, n_starts, seed=seed)
    rollout = make_policy_rollout(cfg, denv, eval_params, network)
    res = jax.device_get(rollout(seed_params(cfg, params, 0), bank, states))
    world = volume.voxel_to_world(np.asarray(res["final_state"].nav.pos, dtype=np.float64).reshape(-1, 3))
    return Landmarks((label,), robust_mean(world, aggregate)[None], source=f"jaxmed detect --goal {label} {image}")
