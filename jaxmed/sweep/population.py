"""A population of trials of one compiled group trained inside one jitted program (vmapped).

Every trial of a group shares the static config (network, env, batch sizes, ...) and differs in
its hyperparameter leaves (:class:`jaxmed.agents.dqn.Hparams`) and, optionally, its PRNG key. The
runner state of the population has a leading trial axis ``P`` on every leaf; :meth:`Population.take`
keeps the rows of the surviving trials so they continue training from where they are (no restart).
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed import experiment as ex
from jaxmed.errors import ConfigError


class Population:
    """The compiled programs of one group: ``init`` / ``run_chunk`` / validation rollout, each vmapped
    over the trial axis.

    ``cfg``: the group's :class:`~jaxmed.experiment.ExperimentConfig` (learner ``dqn``); ``bank``:
    the training bank; ``val``: ``(bank, states)`` for the validation metric, or ``None``.
    """

    def __init__(self, cfg: ex.ExperimentConfig, bank, val=None):
        from jaxmed.agents import learners
        from jaxmed.train import make_policy_rollout

        self.cfg = cfg
        self.learner = learners.module(cfg.train.learner)
        if not hasattr(self.learner, "default_hparams"):
            raise ConfigError(f"learner {cfg.train.learner!r} has no hyperparameter leaves (Hparams) yet: jaxmed sweep supports dqn")
        self.bank = bank
        env, params, eval_params = ex.make_env(cfg, bank.labels)
        env.check_bank(bank)
        self.env = env
        network = ex.make_network(cfg, env)
        fns = self.learner.make_train(cfg.learner, env, params, network)
        self._init = jax.jit(jax.vmap(fns.init, in_axes=(0, None, 0)))
        self._chunk = jax.jit(jax.vmap(fns.run_chunk, in_axes=(0, None)), donate_argnums=0)
        self.val = val
        if val is not None:
            rollout = make_policy_rollout(cfg, env, eval_params, network)
            self._rollout = jax.jit(jax.vmap(rollout, in_axes=(0, None, None)))
        self.env_steps_per_chunk = cfg.learner.env_steps_per_chunk

    def hparams(self, trial_configs: Sequence[ex.ExperimentConfig]):
        """The stacked ``(P,)`` hyperparameter leaves of the trials' configs."""
        return self.learner.stack_hparams([self.learner.default_hparams(c.learner) for c in trial_configs])

    def init(self, keys: jax.Array, hparams):
        """``keys (P,)`` typed PRNG keys, ``hparams`` stacked -> runner state with a leading trial axis."""
        return self._init(keys, self.bank, hparams)

    def run(self, state, n_chunks: int):
        """Train every trial ``n_chunks`` chunks. Returns ``(state, metrics, seconds)``: the last
        chunk's metrics as ``{name: (P,) numpy}`` and the wall time (incl. any compilation)."""
        t0 = time.perf_counter()
        metrics = None
        for _ in range(n_chunks):
            state, metrics = self._chunk(state, self.bank)
        metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()} if metrics is not None else {}
        jax.block_until_ready(state)
        return state, metrics, time.perf_counter() - t0

    def evaluate(self, state, name: str) -> tuple[np.ndarray, float]:
        """``((P,) metric, seconds)``: greedy episodes of every trial's network from the validation
        starts; the env's eval metric ``name`` averaged over episodes and agents (NaN-mean)."""
        if self.val is None:
            raise ConfigError("this population has no validation bank (metric.split is not 'val')")
        bank, states = self.val
        t0 = time.perf_counter()
        out = self._rollout(state.params, bank, states)
        if name not in out["metrics"]:
            raise ConfigError(f"metric {name!r} is not an eval metric of {self.cfg.env_name}; it reports {sorted(out['metrics'])}")
        m = np.asarray(out["metrics"][name], np.float64)
        m = m.reshape(m.shape[0], -1)
        with np.errstate(invalid="ignore"):
            return np.where(np.isfinite(m).any(axis=1), np.nanmean(np.where(np.isfinite(m), m, np.nan), axis=1), np.nan), time.perf_counter() - t0

    @staticmethod
    def take(state, rows: Sequence[int]):
        """The state of the trials at ``rows`` (in that order)."""
        idx = jnp.asarray(np.asarray(rows, np.int32))
        return jax.tree.map(lambda x: x[idx], state)


def val_data(cfg: ex.ExperimentConfig, n_val: int, eval_starts: int, seed: int = 0):
    """``(bank, states)``: ``n_val`` validation subjects (split ``val``, disjoint from train and test)
    and the env's deterministic evaluation starts on them."""
    bank, _, _ = ex.make_bank(cfg, "val", n_val)
    env, _, eval_params = ex.make_env(cfg, bank.labels)
    return bank, env.eval_states(eval_params, bank, eval_starts, seed=seed)
