"""Weight-average the networks of a finished run's saved checkpoints into a new run directory.

A run trained with ``train.average_from: K`` saves the mean of its snapshots from chunk ``K`` on as
its network (``jaxmed.run_files.average_snapshots``). This script does the same after the fact for a run
trained without it, from what the run kept: the network of each orbax checkpoint named by
``--chunks`` (a run keeps its last two) and of other run directories of the same training
(``--network CHUNK=RUN_DIR``, e.g. a copy of the run directory taken at an earlier checkpoint). It
writes ``--out``: the run's config with ``train.average_from`` set to the first chunk averaged, one
snapshot per chunk in ``snapshots/`` and their mean as ``network.msgpack``, so that
``benchmarks/real_anatomy.py --run OUT`` and ``jaxmed detect --checkpoint OUT`` read it like any run.

    python benchmarks/average_checkpoints.py --run runs/acpc_noceiling_2seeds_c160 --chunks 150 160 \\
        --network 120=runs/acpc_noceiling_2seeds_c120 --out runs/acpc_noceiling_2seeds_avg
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import yaml

from jaxmed.errors import ConfigError
from jaxmed.run_files import average_snapshots, save_network, save_snapshot
from jaxmed.runs import load_params


def checkpoint_network(run_dir: Path, chunk: int):
    """The network parameters (the runner state's ``params``) of the orbax checkpoint of ``chunk``."""
    import orbax.checkpoint as ocp

    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax warns that it restores without a template
    manager = ocp.CheckpointManager((run_dir / "checkpoints").absolute())
    if chunk not in manager.all_steps():
        raise ConfigError(f"{run_dir}: no checkpoint of chunk {chunk} (kept: {sorted(manager.all_steps())})")
    state = manager.restore(chunk)
    manager.close()
    return state["params"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a run directory with orbax checkpoints")
    p.add_argument("--chunks", type=int, nargs="*", default=[], help="checkpoints of --run to average")
    p.add_argument("--network", action="append", default=[], metavar="CHUNK=RUN_DIR",
                   help="also average RUN_DIR's network.msgpack as the snapshot of CHUNK (same config)")
    p.add_argument("--out", required=True, help="new run directory (must not exist)")
    args = p.parse_args(argv)

    run, out = Path(args.run), Path(args.out)
    if out.exists():
        raise ConfigError(f"{out}: exists; choose a new directory")
    cfg, _, like = load_params(run)  # the layout of the saved network (with the seed axis)
    snapshots = {c: checkpoint_network(run, c) for c in args.chunks}
    for item in args.network:
        chunk, _, other = item.partition("=")
        other_cfg, _, params = load_params(other)
        if other_cfg.network != cfg.network or other_cfg.train.seeds != cfg.train.seeds:
            raise ConfigError(f"{other}: not the network of {run} (network section or seeds differ)")
        snapshots[int(chunk)] = params
    if len(snapshots) < 2:
        raise ConfigError("give at least two networks to average (--chunks, --network)")
    first, last = min(snapshots), max(snapshots)
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for chunk, params in snapshots.items():
        shapes = [np.shape(x) for x in jax.tree.leaves(params)]
        if shapes != [np.shape(x) for x in jax.tree.leaves(like)]:
            raise ConfigError(f"chunk {chunk}: parameter shapes differ from {run}'s network")
        save_snapshot(tmp, chunk, params)
    mean, chunks = average_snapshots(tmp, first, last, like)
    save_network(tmp, mean)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["average_from"] = first
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = {"averaged_from": str(run), "network_averages_chunks": chunks}
    if (run / "summary.json").exists():
        summary["train_wall_s"] = json.loads((run / "summary.json").read_text()).get("train_wall_s")
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    tmp.replace(out)
    print(f"{out}: mean of the networks of chunks {', '.join(map(str, chunks))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
