"""A trained run directory as the commands read it: its config, its network and parameters
(``network.msgpack``, with a leading seed axis for multi-seed runs), the late snapshots a weight-averaged
run keeps (``snapshots/``) and the learner's greedy policy.

Used by training (which writes it), evaluation, detection, the sweep and every command that takes
``--checkpoint RUN``; it imports only the experiment set-up below it.
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


def save_network(run_dir: Path, params) -> None:
    """Write the network parameters alone (``network.msgpack``; with a leading seed axis when the run
    trained several seeds), for evaluation and detection: the last parameters, or with
    ``train.average_from`` the mean of the late snapshots (:func:`average_snapshots`)."""
    _write_params(Path(run_dir) / "network.msgpack", params)


def _write_params(path: Path, params) -> None:
    """Write ``params`` to ``path`` atomically (a ``.part`` file renamed into place)."""
    from flax import serialization

    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(serialization.to_bytes(jax.device_get(params)))
    tmp.replace(path)


def snapshot_path(run_dir: Path, chunk: int) -> Path:
    """Where :func:`save_snapshot` keeps the network of ``chunk``: ``RUN/snapshots/chunk_000120.msgpack``."""
    return Path(run_dir) / "snapshots" / f"chunk_{int(chunk):06d}.msgpack"


def save_snapshot(run_dir: Path, chunk: int, params) -> Path:
    """Keep the network parameters of ``chunk`` (same layout as ``network.msgpack``) for weight averaging."""
    path = snapshot_path(run_dir, chunk)
    path.parent.mkdir(exist_ok=True)
    _write_params(path, params)
    return path


def average_snapshots(run_dir: Path, first: int, last: int, like):
    """``(mean, chunks)``: the element-wise mean of the snapshots saved at chunks ``first <= c <= last``
    (stochastic weight averaging of late snapshots, Izmailov et al. 2018) and the chunks averaged.

    ``like`` is a parameter tree of the saved layout (e.g. the current parameters); the mean is float32
    like the parameters. Raises :class:`ConfigError` when no snapshot lies in the range.
    """
    from flax import serialization

    folder = Path(run_dir) / "snapshots"
    chunks = sorted(int(p.stem.split("_")[1]) for p in folder.glob("chunk_*.msgpack")) if folder.is_dir() else []
    chunks = [c for c in chunks if first <= c <= last]
    if not chunks:
        raise ConfigError(f"{folder}: no network snapshot between chunks {first} and {last} to average")
    like = jax.device_get(like)
    total = jax.tree.map(lambda x: np.zeros(np.shape(x), np.float64), like)
    for c in chunks:
        snap = serialization.from_bytes(like, snapshot_path(run_dir, c).read_bytes())
        total = jax.tree.map(lambda t, x: t + np.asarray(x, np.float64), total, snap)
    return jax.tree.map(lambda t, x: (t / len(chunks)).astype(np.asarray(x).dtype), total, like), chunks


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
    """The parameters of one seed of a (possibly multi-seed) run."""
    if cfg.train.seeds <= 1:
        return params
    if not 0 <= seed < cfg.train.seeds:
        raise ConfigError(f"seed {seed} out of range: the run trained {cfg.train.seeds} seeds")
    return jax.tree.map(lambda x: x[seed], params)


def make_policy_rollout(cfg: ex.ExperimentConfig, env, eval_params, network, record=None):
    """A jitted ``(params, bank, states) -> rollout`` of the learner's greedy policy
    (:func:`jaxmed.agents.rollout.greedy_rollout`)."""
    from jaxmed.agents import learners
    from jaxmed.agents.rollout import greedy_rollout

    learner = cfg.train.learner
    policy = lambda p: lambda o: learners.policy_action(learner, network, p, o)  # noqa: E731
    return jax.jit(lambda p, b, s: greedy_rollout(policy(p), env, eval_params, b, s, record=record))
