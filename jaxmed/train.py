"""The outer training loop: run directory, progress, CSV/TensorBoard logs, orbax checkpoints, resume,
then the evaluation of the trained run (:mod:`jaxmed.run_evaluation`) with the experiment it was built from.

All math lives in the jitted learner (:mod:`jaxmed.agents.learners`); this module only moves data
between chunks. A run directory holds ``config.yaml``, ``metrics.csv``, TensorBoard events under
``tb/``, ``checkpoints/`` and, after evaluation, ``eval.json`` / ``eval.md`` / ``trajectories.png``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from jaxmed import experiment as ex
from jaxmed.agents.core import over_members
from jaxmed.errors import ConfigError, OverwriteError
from jaxmed.run_evaluation import evaluate_extra_sets, evaluate_run
from jaxmed.runs import average_snapshots, load_params, save_network, save_snapshot, seed_params  # noqa: F401  (re-exported)

# ------------------------------------------------------------------ checkpoints


def _host_tree(rs):
    """RunnerState -> numpy pytree (typed PRNG keys stored as their raw key data)."""
    rs = rs.replace(key=jax.random.key_data(rs.key))
    return jax.tree.map(np.asarray, jax.device_get(rs))


def _device_tree(tree, template):
    rs = jax.tree.map(lambda x, t: jnp.asarray(x, dtype=t.dtype), tree, template.replace(key=jax.random.key_data(template.key)))
    return rs.replace(key=jax.random.wrap_key_data(rs.key))


class Checkpoints:
    """Orbax checkpoints of the whole training state (network, optimiser, replay, envs, keys)."""

    def __init__(self, directory: Path, max_to_keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self.manager = ocp.CheckpointManager(directory.absolute(), options=options)

    def save(self, chunk: int, rs) -> None:
        self.manager.save(chunk, args=self._ocp.args.StandardSave(_host_tree(rs)))
        self.manager.wait_until_finished()

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, chunk: int, template):
        tree = self.manager.restore(chunk, args=self._ocp.args.StandardRestore(_host_tree(template)))
        return _device_tree(tree, template)

    def close(self):
        self.manager.close()


# ------------------------------------------------------------------ logging


class MetricsLog:
    """Appends one row per chunk to ``metrics.csv`` and to TensorBoard (``tb/``) when tensorboardX is installed.

    ``wall_before``: seconds of training the kept rows of a resumed run already took (the ``wall_s`` of
    the last kept row; 0 for a new run), so that wall times stay cumulative across resumes.
    """

    def __init__(self, run_dir: Path, resume_chunk: int = 0):
        self.path = run_dir / "metrics.csv"
        self._fields: list[str] | None = None
        self.wall_before = 0.0
        if self.path.exists():
            with open(self.path) as f:
                rows = list(csv.reader(f))
            self._fields = rows[0] if rows else None
            # rows written after the checkpoint we resume from are replayed: drop them
            kept = [r for r in rows[1:] if r and int(float(r[0])) <= resume_chunk]
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerows(rows[:1] + kept)
            if kept and self._fields and "wall_s" in self._fields:
                self.wall_before = float(kept[-1][self._fields.index("wall_s")] or 0.0)
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))
        except ImportError:  # logging to TensorBoard is optional
            self.tb = None

    def write(self, row: dict[str, float]) -> None:
        if self._fields is None:
            self._fields = list(row)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self._fields)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([row.get(k, "") for k in self._fields])
        if self.tb is not None:
            for k, v in row.items():
                # a chunk in which no episode ended has no final distance (NaN): TensorBoard gets no point
                if k not in ("chunk", "steps") and math.isfinite(v):
                    self.tb.add_scalar(k, v, int(row["steps"]))

    def close(self):
        if self.tb is not None:
            self.tb.close()


# ------------------------------------------------------------------ run directory


def prepare_run_dir(run_dir: Path, cfg: ex.ExperimentConfig, *, resume: bool, overwrite: bool) -> None:
    """Create ``run_dir`` and write ``config.yaml``; never clobber a run without ``overwrite``.

    ``resume``: the directory must exist and its config must match except ``train.chunks``.
    """
    cfg_path = run_dir / "config.yaml"
    if resume:
        if not cfg_path.exists():
            raise ConfigError(f"{run_dir}: nothing to resume (no config.yaml)")
        # both through the typed config, so a key added with its default since the run began compares equal
        old = ex.ExperimentConfig.from_dict(yaml.safe_load(cfg_path.read_text()), str(cfg_path)).to_dict()
        new = cfg.to_dict()
        for d in (old, new):
            d["train"].pop("chunks", None)
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"{run_dir}: config differs from the run being resumed in section(s) {diff}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise OverwriteError(f"{run_dir}: run directory exists; pass --overwrite to replace it or --resume to continue it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ------------------------------------------------------------------ training


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="chunk", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def _trainer(cfg: ex.ExperimentConfig, env, params, network):
    """``(init, run_chunk)``, jitted, for one device, ``train.devices`` devices (pmap) or
    ``train.seeds`` seeds (vmapped: state leaves get a leading seed axis)."""
    from jaxmed.agents import learners
    from jaxmed.agents.her import transform_for

    learner = learners.module(cfg.train.learner)
    extra = {}
    relabel = transform_for(env, params, cfg.learner)  # dqn.her: hindsight relabelling for goal-conditioned envs
    if relabel is not None:
        extra["batch_transform"] = relabel
    if cfg.train.devices > 1:
        if jax.local_device_count() < cfg.train.devices:
            raise ConfigError(f"train.devices={cfg.train.devices} but only {jax.local_device_count()} devices are visible")
        return learner.make_parallel_train(cfg.learner, env, params, network, n_devices=cfg.train.devices, **extra)
    fns = learner.make_train(cfg.learner, env, params, network, **extra)
    rows = cfg.train.hparam_rows()  # per-member hyperparameter leaves (train.hparams)
    hparams = learner.stack_hparams([learner.default_hparams(cfg.learner, **row) for row in rows])
    if cfg.train.seeds > 1:
        init = jax.jit(jax.vmap(fns.init, in_axes=(0, None, 0)))
        return ((lambda key, bank: init(jax.random.split(key, cfg.train.seeds), bank, hparams)),
                jax.jit(over_members(fns.run_chunk, cfg.train.seed_batching), donate_argnums=0))
    single = jax.tree.map(lambda x: x[0], hparams)
    return jax.jit(lambda key, bank: fns.init(key, bank, single)), jax.jit(fns.run_chunk, donate_argnums=0)


def _summarise(metrics: dict) -> dict[str, float]:
    """Metrics with a device or seed axis -> their mean, plus ``<name>_std`` across seeds."""
    row = {}
    for k, v in metrics.items():
        v = np.asarray(v, np.float64)
        row[k] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
        if v.ndim and v.size > 1 and k not in ("steps", "updates"):
            row[k + "_std"] = float(np.nanstd(v)) if np.isfinite(v).any() else float("nan")
    return row


def _first(tree, cfg: ex.ExperimentConfig):
    """One replica / seed of a state with a leading device or seed axis (identity otherwise)."""
    return jax.tree.map(lambda x: x[0], tree) if cfg.train.devices > 1 else tree


def _network_to_save(run_dir: Path, cfg: ex.ExperimentConfig, chunk: int, params):
    """``(params to save as network.msgpack, chunks averaged)`` at the checkpoint of ``chunk``: the
    last parameters, or from ``train.average_from`` on the mean of the snapshots of chunks
    ``average_from .. chunk`` (this chunk's snapshot written first)."""
    first = cfg.train.average_from
    if not first or chunk < first:
        return params, []
    save_snapshot(run_dir, chunk, params)
    return average_snapshots(run_dir, first, chunk, params)


def run_training(
    cfg: ex.ExperimentConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = True,
    on_chunk: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train the configured learner on the configured env, checkpointing every
    ``train.checkpoint_every`` chunks; with ``train.seeds > 1`` all seeds train in one program.

    ``on_chunk(chunk, metrics)`` is called after each chunk (tests use it to interrupt a run).
    Returns a summary dict (and the evaluation when ``evaluate``).
    """
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, cfg, resume=resume, overwrite=overwrite)
    exp = ex.build_experiment(cfg)
    env, params, network = exp.env, exp.env_params, exp.network
    init, chunk_fn = _trainer(cfg, env, params, network)
    refresh = _BankRefresher(exp) if cfg.train.refresh_every else None
    bank = refresh.bank if refresh else exp.bank
    t0 = time.perf_counter()
    rs = init(jax.random.key(cfg.train.seed), bank)
    ckpt = Checkpoints(run_dir / "checkpoints")
    start = 0
    if resume and ckpt.latest() is not None:
        start = int(ckpt.latest())
        rs = ckpt.restore(start, rs)
    network_params, averaged = _first(rs, cfg).params, []
    if cfg.train.average_from and start >= cfg.train.average_from:  # resumed past the start of the average
        network_params, averaged = average_snapshots(run_dir, cfg.train.average_from, start, network_params)
    log = MetricsLog(run_dir, resume_chunk=start)
    t0 -= log.wall_before  # a resumed run's wall times continue from the checkpoint's
    env_steps_per_chunk = cfg.learner.env_steps_per_chunk * cfg.train.devices  # per seed
    bar = _progress(cfg.train.chunks, start, progress)
    compile_s = None
    try:
        for c in range(start, cfg.train.chunks):
            if refresh is not None:  # the bank of this chunk's epoch (a function of c alone: resume stays exact)
                bank = refresh.for_chunk(c)
                if c > 0 and c % refresh.every == 0:  # a new epoch: nothing collected on the old subjects survives
                    rs = restart_on_new_bank(rs, init(jax.random.fold_in(jax.random.key(cfg.train.seed), c), bank))
            tc = time.perf_counter()
            rs, metrics = chunk_fn(rs, bank)
            metrics = _summarise(jax.device_get(metrics))
            dt = time.perf_counter() - tc
            compile_s = dt if compile_s is None else compile_s
            row = {"chunk": c + 1, **metrics, "env_steps_per_s": env_steps_per_chunk * cfg.train.seeds / dt,
                   "wall_s": time.perf_counter() - t0}
            log.write(row)
            bar.update(1)
            shown = {"steps_s": f"{row['env_steps_per_s']:.0f}", "reward": f"{metrics['reward']:.3f}"}
            shown.update({k[len("final_"):]: f"{v:.2f}" for k, v in metrics.items() if k.startswith("final_") and not k.endswith("_std")})
            bar.set_postfix(shown)
            if (c + 1) % cfg.train.checkpoint_every == 0 or c + 1 == cfg.train.chunks:
                ckpt.save(c + 1, rs)
                network_params, averaged = _network_to_save(run_dir, cfg, c + 1, _first(rs, cfg).params)
                save_network(run_dir, network_params)
            if on_chunk is not None:
                on_chunk(c + 1, metrics)
    finally:
        bar.close()
        log.close()
        ckpt.close()
    summary = {"learner": cfg.train.learner, "env": cfg.env_name, "seeds": cfg.train.seeds,
               "train_wall_s": time.perf_counter() - t0, "data_prep_s": exp.data_seconds, "first_chunk_s_incl_compile": compile_s,
               "env_steps": cfg.train.chunks * env_steps_per_chunk, "device": device_description()}
    cache_size = getattr(chunk_fn, "_cache_size", None)
    if cache_size is not None:
        summary["chunk_compilations"] = int(cache_size())
    if refresh is not None:
        summary["bank_epochs"] = refresh.epochs_built
    if averaged:
        summary["network_averages_chunks"] = averaged
    if evaluate:  # the saved network: the last parameters or the snapshots' mean
        summary["evaluation"] = evaluate_run(exp, network_params, run_dir)
        if cfg.eval.extra_sets and env.landmark_targets:
            summary["evaluation"].update(evaluate_extra_sets(exp, network_params, run_dir))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def device_description() -> str:
    """The devices this process computes on, e.g. ``cpu x1`` or ``cuda:0 NVIDIA H200``."""
    devices = jax.devices()
    d = devices[0]
    if d.platform == "cpu":
        return f"cpu x{len(devices)}"
    name = f"{'cuda' if d.platform == 'gpu' else d.platform}:{d.id} {getattr(d, 'device_kind', '')}".strip()
    return name + (f" (+{len(devices) - 1} more)" if len(devices) > 1 else "")


#: Runner-state fields that hold data about the bank's subjects: replayed transitions, in-flight
#: n-step windows, env states and their observations. Replay stores env states, not pixels, and
#: re-renders observations from the bank when it samples, so a transition is only valid with the
#: subjects it was collected on: after a bank refresh it would pair one subject's observation with
#: another subject's reward.
BANK_BOUND_FIELDS = ("buffer", "window", "env_state", "obs")


def restart_on_new_bank(rs, fresh):
    """``rs`` (a learner's runner state) with every :data:`BANK_BOUND_FIELDS` field it has taken
    from ``fresh``, a runner state initialised on the new bank: the replay buffer starts empty
    (learning pauses until it holds ``learning_starts`` again), episodes restart on the new subjects;
    parameters, optimiser state, counters, keys and hyperparameters carry on."""
    return rs.replace(**{f: getattr(fresh, f) for f in BANK_BOUND_FIELDS if hasattr(rs, f)})


class _BankRefresher:
    """The training bank of each epoch (``train.refresh_every`` chunks each), all padded to one shape
    (bucketed with headroom, :meth:`jaxmed.data.bank.VolumeBank.bucket_shapes`) so the chunk function never
    recompiles; a later epoch's bank that does not fit grows the shape (one recompilation, reported)."""

    def __init__(self, exp: ex.Experiment):
        self.exp, self.every = exp, int(exp.cfg.train.refresh_every)
        self.shapes = exp.bank.bucket_shapes()
        self.epoch, self.bank = 0, self._fit(exp.bank)
        self.epochs_built = [0]

    def _fit(self, bank):
        grown = [tuple(max(int(a), int(b)) for a, b in zip(s, o)) for s, o in zip(self.shapes, bank.level_shapes)]
        if grown != self.shapes:
            print(f"train.refresh_every: the new subjects need a larger bank {grown} than {self.shapes}: one recompilation",
                  file=sys.stderr)
            self.shapes = grown
        return bank.padded_to(self.shapes)

    def for_chunk(self, chunk: int):
        epoch = chunk // self.every
        if epoch != self.epoch:
            self.epoch, self.bank = epoch, self._fit(self.exp.train_bank(epoch))
            self.epochs_built.append(epoch)
        return self.bank
