"""Find trained landmarks in a new image: load any NIfTI, run the greedy agents, write a Slicer .fcsv."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed import experiment as ex
from jaxmed.errors import LandmarkError


def robust_mean(points: np.ndarray) -> np.ndarray:
    """Coordinate-wise median of end points ``(n, 3)`` -> ``(3,)``: ignores a minority of lost agents."""
    return np.median(np.asarray(points), axis=0)


def detect(run_dir: str | Path, image: str | Path, labels: Sequence[str] | None = None, n_starts: int = 27):
    """Detect the run's landmarks in ``image``.

    Every agent starts from ``n_starts`` fixed points (27 = the 3x3x3 grid), the episodes run greedily
    until oscillation or ``env.eval_max_steps``, and each landmark's answer is the robust mean of its
    agents' end points. Returns :class:`jaxmed.data.Landmarks` in world RAS mm.
    """
    from jaxmed.agents.dqn import greedy_rollout
    from jaxmed.data import Landmarks, build_bank, conform, load_image
    from jaxmed.train import load_params

    cfg, network, params = load_params(run_dir)
    trained = tuple(dict.fromkeys(cfg.env.targets))
    labels = tuple(labels) if labels else trained
    missing = [l for l in labels if l not in trained]
    if missing:
        raise LandmarkError(f"{run_dir}: the model was trained for {', '.join(trained)}; it cannot detect {', '.join(missing)}")
    volume = conform(load_image(image), cfg.data.spacing)
    # The bank needs target positions; detection never reads them (no reward, no target stop).
    placeholder = Landmarks(trained, np.repeat(volume.voxel_to_world((np.array(volume.shape) - 1) / 2)[None], len(trained), 0), source=str(image))
    bank = build_bank([(volume, placeholder)], trained, factors=cfg.data.factors, max_crop=cfg.env.crop_size, dtype=cfg.data.dtype)
    env, _, eval_params = ex.make_env(cfg, bank.labels)
    vols, starts = ex.eval_starts(env, bank, n_starts)
    res = jax.jit(lambda p, b, v, s: greedy_rollout(network, p, env, eval_params, b, v, s))(params, bank, jnp.asarray(vols), jnp.asarray(starts))
    final = np.asarray(res["final_pos"], dtype=np.float64)  # (E, A, 3) level-0 voxels
    world = volume.voxel_to_world(final)
    positions = []
    for label in labels:
        agents = [i for i, t in enumerate(cfg.env.targets) if t == label]
        positions.append(robust_mean(world[:, agents].reshape(-1, 3)))
    return Landmarks(labels, np.array(positions), source=f"jaxmed detect {image}")
