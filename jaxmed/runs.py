"""A trained run directory as the commands read it: its config built into an experiment, its network
parameters (``network.msgpack``, with a leading seed axis for multi-seed runs) and one seed's
parameters of them.

Used by evaluation, detection, the sweep and every command that takes ``--checkpoint RUN``; what
training writes there is :mod:`jaxmed.run_files`. It imports only the experiment set-up below it.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from jaxmed import experiment as ex
from jaxmed.errors import ConfigError


def run_env_name(run_dir) -> str | None:
    """The ``env.name`` a run directory's ``config.yaml`` trained, or ``None`` (no config, or no
    named env section); read as text, before anything is built."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return None
    env = (yaml.safe_load(path.read_text()) or {}).get("env") or {}
    return env.get("name") if isinstance(env, dict) else None


def load_run(run_dir: str | Path) -> tuple[ex.Experiment, object]:
    """``(experiment, params)`` of a run directory: its :class:`~jaxmed.experiment.Experiment` built
    once from its ``config.yaml`` without data (env, evaluation parameters, network), and the latest
    saved network's parameters.

    ``params`` has a leading seed axis when the run trained ``train.seeds > 1`` seeds (see
    :func:`seed_params`). Raises :class:`ConfigError` when the directory is not a run, has no saved
    network, or its parameters do not fit the configured network (a checkpoint from a different one).
    """
    from flax import serialization

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise ConfigError(f"{run_dir}: not a jaxmed run directory (no config.yaml)")
    cfg = ex.ExperimentConfig.from_dict(yaml.safe_load(cfg_path.read_text()), str(cfg_path))
    blob = run_dir / "network.msgpack"
    if not blob.exists():
        raise ConfigError(f"{run_dir}: no trained network (network.msgpack) in this run directory")
    exp = ex.build_experiment(cfg, with_data=False)
    template = jax.eval_shape(exp.network.init, jax.random.key(0), ex.dummy_observation(cfg, exp.env))
    seeds = cfg.train.seeds
    template = jax.tree.map(lambda s: np.zeros(((seeds,) if seeds > 1 else ()) + s.shape, s.dtype), template)
    try:
        params = serialization.from_bytes(template, blob.read_bytes())
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{blob}: parameters do not fit the network configured in {cfg_path} ({err})") from None
    for a, b in zip(jax.tree.leaves(template), jax.tree.leaves(params)):
        if np.shape(a) != np.shape(b):
            raise ConfigError(f"{blob}: parameter shapes {np.shape(b)} do not fit the configured network ({np.shape(a)}): "
                              "a checkpoint from a different network")
    return exp, jax.tree.map(jnp.asarray, params)


def load_params(run_dir: str | Path):
    """``(config, network, params)`` of a run directory's latest saved network (:func:`load_run`)."""
    exp, params = load_run(run_dir)
    return exp.cfg, exp.network, params


def seed_params(cfg: ex.ExperimentConfig, params, seed: int = 0):
    """The parameters of one seed of a (possibly multi-seed) run (:func:`jaxmed.agents.core.member_params`)."""
    from jaxmed.agents.core import member_params

    return member_params(params, cfg.train.seeds, seed)
