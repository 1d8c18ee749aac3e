"""A population of trials of one compiled group trained inside one jitted program, vmapped over
trials and sharded over devices.

Every trial of a group shares the static config (network, env, batch sizes, ...) and differs in
its hyperparameter leaves (the learner's ``Hparams``) and, optionally, its PRNG key. The runner
state of the population has a leading trial axis on every leaf. That axis is sharded over a 1-D
mesh of devices (axis ``"trials"``; by default every device of every process of a
``jax.distributed`` cluster): ``jax.shard_map`` gives each device a block of trials, which it
trains side by side (``jax.vmap``) or in turn (``lax.map``; ``train.seed_batching``, by default
in turn on CPU) and with no communication at all. ``P`` trials are padded to ``P_pad``, the next
multiple of the device count, by repeating the last trial; the padded rows train like the others
and are ignored. The per-trial metrics are all-gathered inside the program, so every process reads
every trial's numbers. :meth:`Population.take` keeps the rows of the surviving trials, so they
continue training from where they are (no restart).
"""

from __future__ import annotations

import math
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmed import experiment as ex
from jaxmed.agents.core import over_members
from jaxmed.errors import ConfigError
from jaxmed.sweep import checkpoint

AXIS = "trials"


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` with its last row repeated up to ``n`` rows."""
    return np.concatenate([x, np.repeat(x[-1:], n - len(x), axis=0)]) if n > len(x) else x


def _gathered(tree):
    """Inside the sharded program: every device's block of per-trial values, concatenated."""
    return jax.tree.map(lambda x: lax.all_gather(x, AXIS, tiled=True), tree)


def _nanmean_rows(m: jax.Array) -> jax.Array:
    """``(p, ...) -> (p,)``: the mean over the finite values of each row, NaN where there is none."""
    m = m.reshape(m.shape[0], -1).astype(jnp.float32)
    ok = jnp.isfinite(m)
    n = ok.sum(axis=1)
    return jnp.where(n > 0, jnp.where(ok, m, 0.0).sum(axis=1) / jnp.maximum(n, 1), jnp.nan)


class Population:
    """The compiled programs of one group: ``init`` / ``run`` / ``evaluate`` / ``take``, vmapped over
    the trial axis and sharded over ``devices``.

    ``cfg``: the group's :class:`~jaxmed.experiment.ExperimentConfig` (a learner with hyperparameter
    leaves: ``Hparams``, ``default_hparams``, ``stack_hparams``, ``init(key, bank, hparams)``);
    ``bank``: the training bank (host-local, the same in every process); ``val``: ``(bank, states)``
    for the validation metric, or ``None``; ``devices``: the mesh (default ``jax.devices()``).
    """

    def __init__(self, cfg: ex.ExperimentConfig, bank, val=None, devices: Sequence | None = None):
        from jaxmed.agents import learners
        from jaxmed.agents.learners import policy_rollout

        self.cfg = cfg
        self.learner = learners.module(cfg.train.learner)
        missing = [a for a in ("default_hparams", "stack_hparams", "HPARAM_FIELDS") if not hasattr(self.learner, a)]
        if missing:
            raise ConfigError(f"learner {cfg.train.learner!r} has no hyperparameter leaves ({', '.join(missing)} missing): "
                              f"jaxmed sweep cannot vmap its trials")
        if cfg.train.devices > 1 or cfg.train.seeds > 1:
            raise ConfigError("jaxmed sweep trains each trial on one device with one seed: set train.devices=1 and "
                              "train.seeds=1 in the base config (trials are spread over the devices instead)")
        env, params, eval_params = ex.make_env(cfg, bank.labels)
        env.check_bank(bank)
        self.env = env
        self.devices = list(jax.devices() if devices is None else devices)
        self.mesh = Mesh(np.array(self.devices), (AXIS,))
        self.rows = NamedSharding(self.mesh, P(AXIS))
        self.replicated = NamedSharding(self.mesh, P())
        self._local_bank = bank
        self.bank = self.replicate(bank)
        network = ex.make_network(cfg, env)
        fns = self.learner.make_train(cfg.learner, env, params, network)
        self._init_v = jax.vmap(fns.init, in_axes=(0, None, 0))
        self._inits: dict[str, object] = {}  # one compiled init per PRNG implementation
        # the trials of a device's block side by side (vmap) or in turn (lax.map, the CPU default)
        chunk_v = over_members(fns.run_chunk, cfg.train.seed_batching)

        def chunk_block(state, bank):
            state, metrics = chunk_v(state, bank)
            return state, _gathered(metrics)

        self._chunk = jax.jit(self._sharded(chunk_block, (P(AXIS), P()), (P(AXIS), P())), donate_argnums=0)
        self._take = jax.jit(lambda st, idx: jax.tree.map(lambda x: x[idx], st), out_shardings=self.rows)
        self.val = None
        if val is not None:
            self.val = (self.replicate(val[0]), self.replicate(val[1]))
            rollout_v = over_members(policy_rollout(cfg.train.learner, network, env, eval_params), cfg.train.seed_batching,
                                     in_axes=(0, None, None))

            def eval_block(params, bank, states):
                out = rollout_v(params, bank, states)
                return _gathered({k: _nanmean_rows(v) for k, v in out["metrics"].items()})

            self._eval = jax.jit(self._sharded(eval_block, (P(AXIS), P(), P()), P()))
        self.env_steps_per_chunk = cfg.learner.env_steps_per_chunk

    # ---------------------------------------------------------------- layout

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    def padded(self, n: int) -> int:
        """Rows holding ``n`` trials: ``n`` rounded up to a multiple of the device count."""
        return int(math.ceil(n / self.n_devices) * self.n_devices)

    def _sharded(self, fn, in_specs, out_specs):
        # check_vma=False: the learners were written for vmap (no axis-varying annotations); the only
        # collective here is the final all_gather, whose result is the same on every device
        return jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)

    def replicate(self, tree):
        """A host-local pytree (the same in every process) as global arrays replicated on the mesh."""
        def one(x):
            if isinstance(x, jax.Array) and x.sharding == self.replicated:
                return x
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.replicated, lambda idx: x[idx])

        return jax.tree.map(one, tree)

    def _rows_array(self, x: np.ndarray) -> jax.Array:
        """A host array (the same in every process) as a global array sharded by rows."""
        return jax.make_array_from_callback(x.shape, self.rows, lambda idx: x[idx])

    # ---------------------------------------------------------------- programs

    def hparams(self, trial_configs: Sequence[ex.ExperimentConfig]):
        """The stacked ``(P,)`` hyperparameter leaves of the trials' configs (host numpy)."""
        hp = self.learner.stack_hparams([self.learner.default_hparams(c.learner) for c in trial_configs])
        return jax.tree.map(np.asarray, hp)

    def _init_inputs(self, keys: jax.Array, hparams):
        n = self.padded(int(keys.shape[0]))
        impl = str(jax.random.key_impl(keys))
        key_data = _pad(np.asarray(jax.random.key_data(keys)), n)
        hparams = jax.tree.map(lambda h: _pad(np.asarray(h), n), hparams)
        return key_data, hparams, impl

    def init(self, keys: jax.Array, hparams):
        """``keys (P,)`` typed PRNG keys, ``hparams`` stacked ``(P,)`` -> runner state with a leading
        axis of ``padded(P)`` rows sharded over the devices (row ``i < P`` is trial ``i``)."""
        key_data, hparams, impl = self._init_inputs(keys, hparams)
        if impl not in self._inits:
            init_v = self._init_v

            def init_block(kd, bank, hp):
                return init_v(jax.random.wrap_key_data(kd, impl=impl), bank, hp)

            self._inits[impl] = jax.jit(self._sharded(init_block, (P(AXIS), P(), P(AXIS)), P(AXIS)))
        return self._inits[impl](self._rows_array(key_data), self.bank,
                                 jax.tree.map(self._rows_array, hparams))

    def abstract_state(self, keys: jax.Array, hparams):
        """Shapes and dtypes of :meth:`init`'s state (nothing computed)."""
        key_data, hparams, impl = self._init_inputs(keys, hparams)
        return jax.eval_shape(lambda kd, b, hp: self._init_v(jax.random.wrap_key_data(kd, impl=impl), b, hp),
                              key_data, self._local_bank, hparams)

    def run(self, state, n_chunks: int):
        """Train every trial ``n_chunks`` chunks. Returns ``(state, metrics, seconds)``: the last
        chunk's metrics as ``{name: (P_pad,) numpy}`` (every process has all rows) and the wall time
        (incl. any compilation)."""
        t0 = time.perf_counter()
        metrics = None
        for _ in range(n_chunks):
            state, metrics = self._chunk(state, self.bank)
        metrics = {k: np.asarray(v) for k, v in metrics.items()} if metrics is not None else {}
        jax.block_until_ready(state)
        return state, metrics, time.perf_counter() - t0

    def evaluate(self, state, name: str) -> tuple[np.ndarray, float]:
        """``((P_pad,) metric, seconds)``: greedy episodes of every trial's network from the validation
        starts; the env's eval metric ``name`` averaged over episodes and agents (NaN-mean)."""
        if self.val is None:
            raise ConfigError("this population has no validation bank (metric.split is not 'val')")
        t0 = time.perf_counter()
        out = self._eval(state.params, *self.val)
        if name not in out:
            raise ConfigError(f"metric {name!r} is not an eval metric of {self.cfg.env_name}; it reports {sorted(out)}")
        return np.asarray(out[name], np.float64), time.perf_counter() - t0

    def take(self, state, rows: Sequence[int]):
        """The state of the trials at ``rows`` (in that order), padded for the devices."""
        idx = _pad(np.asarray(rows, np.int32), self.padded(len(rows)))
        return self._take(state, self.replicate(idx))

    # ---------------------------------------------------------------- checkpoints

    def save(self, directory, state) -> None:
        """Each process writes its own rows of ``state`` (:mod:`jaxmed.sweep.checkpoint`)."""
        checkpoint.save(directory, state)

    def restore(self, directory, keys: jax.Array, hparams):
        """The state saved by :meth:`save` for the trials of ``keys`` / ``hparams`` (their count and
        dtypes must match the checkpoint)."""
        return checkpoint.restore(directory, self.abstract_state(keys, hparams), self.rows, str(jax.random.key_impl(keys)))


def val_data(cfg: ex.ExperimentConfig, n_val: int, eval_starts: int, seed: int = 0):
    """``(bank, states)``: ``n_val`` validation subjects (split ``val``, disjoint from train and test)
    and the env's deterministic evaluation starts on them."""
    bank, _, _ = ex.make_bank(cfg, "val", n_val)
    env, _, eval_params = ex.make_env(cfg, bank.labels)
    return bank, env.eval_states(eval_params, bank, eval_starts, seed=seed)
