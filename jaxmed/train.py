"""The outer training loop: run directory, progress, CSV/TensorBoard logs, orbax checkpoints, resume,
then the evaluation of the trained run (:mod:`jaxmed.run_evaluation`) with the experiment it was built from.

All math lives in the jitted learner (:func:`jaxmed.agents.learners.make_trainer`); this module only
moves data between chunks. A run directory holds ``config.yaml``, ``metrics.csv``, TensorBoard events
under ``tb/``, ``checkpoints/``, ``network.msgpack`` (:mod:`jaxmed.run_files` writes them) and, after
evaluation, ``eval.json`` / ``eval.md`` / ``eval_episodes.csv`` / ``trajectories.png``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import yaml

from jaxmed import experiment as ex
from jaxmed.agents.core import restart_on_new_bank, summarise_chunk_metrics
from jaxmed.agents.learners import make_trainer
from jaxmed.data.run_data import EpochBanks
from jaxmed.errors import ConfigError, OverwriteError
from jaxmed.run_evaluation import evaluate_extra_sets, evaluate_run
from jaxmed.run_files import Checkpoints, MetricsLog, average_snapshots, network_to_save, save_network


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
    init, chunk_fn = make_trainer(cfg.train, cfg.learner, exp.env, exp.env_params, exp.network)
    # train.refresh_every: the bank of each epoch (a function of the chunk alone: resume stays exact)
    banks = EpochBanks(exp.bank, cfg.train.refresh_every, exp.train_bank) if cfg.train.refresh_every else None
    bank = banks.bank if banks else exp.bank
    first = (lambda tree: jax.tree.map(lambda x: x[0], tree)) if cfg.train.devices > 1 else (lambda tree: tree)  # one replica
    t0 = time.perf_counter()
    rs = init(jax.random.key(cfg.train.seed), bank)
    ckpt = Checkpoints(run_dir / "checkpoints")
    start = 0
    if resume and ckpt.latest() is not None:
        start = int(ckpt.latest())
        rs = ckpt.restore(start, rs)
    network_params, averaged = first(rs.params), []
    if cfg.train.average_from and start >= cfg.train.average_from:  # resumed past the start of the average
        network_params, averaged = average_snapshots(run_dir, cfg.train.average_from, start, network_params)
    log = MetricsLog(run_dir, resume_chunk=start)
    t0 -= log.wall_before  # a resumed run's wall times continue from the checkpoint's
    env_steps_per_chunk = cfg.learner.env_steps_per_chunk * cfg.train.devices  # per seed
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.train.chunks, initial=start, unit="chunk", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    compile_s = None
    try:
        for c in range(start, cfg.train.chunks):
            if banks is not None:
                bank = banks.for_chunk(c)
                if banks.starts_epoch(c):  # nothing collected on the old subjects survives
                    rs = restart_on_new_bank(rs, init(jax.random.fold_in(jax.random.key(cfg.train.seed), c), bank))
            tc = time.perf_counter()
            rs, metrics = chunk_fn(rs, bank)
            metrics = summarise_chunk_metrics(jax.device_get(metrics))
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
                network_params, averaged = network_to_save(run_dir, cfg.train.average_from, c + 1, first(rs.params))
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
    if banks is not None:
        summary["bank_epochs"] = banks.epochs_built
    if averaged:
        summary["network_averages_chunks"] = averaged
    if evaluate:  # the saved network: the last parameters or the snapshots' mean
        summary["evaluation"] = evaluate_run(exp, network_params, run_dir)
        if cfg.eval.extra_sets and exp.env.landmark_targets:
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
