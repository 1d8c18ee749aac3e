"""The resumable sweep driver behind ``jaxmed sweep``: brackets of successive halving over vmapped
populations, checkpoints per rung, result tables, the best config and a metric-vs-budget figure.

Output directory::

    sweep.json         the base config and the space (a resume must match them)
    progress.json      every trial (values, metric per rung, cost) and each bracket's completed rungs
    state/b<B>/g<G>/rung<R>/process<I>.npz
                       the survivors' population state of group G after rung R of bracket B, each
                       process's rows in its own file (:mod:`jaxmed.sweep.checkpoint`; only the last
                       rung's are kept)
    results.csv/.md    one row per trial: parameters, metric at every budget, env steps, seconds
    best.yaml          the best trial's full config (train.chunks = its budget): ``jaxmed train best.yaml``
    curves.png         metric vs budget (env steps) of every trial
    summary.json       best trial, its metric, the default trial's metric, wall time

Every trial starts from the same PRNG key ``train.seed`` by default (common random numbers: trials
differ only in their hyperparameters; ``common_seed: false`` folds the trial id into the key), so a
trial is the run that ``jaxmed train`` makes of its config (up to float reassociation of vmapping).

Devices and processes: the trials of a population are sharded over a 1-D mesh of devices (default:
``jax.devices()``, every device of every process). Under ``jax.distributed`` (``jaxmed sweep
--distributed``, one process per host) every process runs the same sweep; process 0 alone reads
and writes the JSON / CSV / Markdown / PNG / YAML files above and broadcasts what it read, and each
process writes its own checkpoint rows. A resume needs the same number of processes and devices;
each process must see its own earlier checkpoint files (a shared filesystem, or the same local
directory on each host).
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import yaml

from jaxmed import experiment as ex
from jaxmed.errors import ConfigError, OverwriteError
from jaxmed.sweep import cluster, halving
from jaxmed.sweep.population import Population, val_data
from jaxmed.sweep.space import Space, Trial, group_config, make_trials


def brackets(space: Space) -> list[list[halving.Rung]]:
    if space.method == "hyperband":
        return halving.hyperband(space.min_chunks, space.max_chunks, space.eta)
    return [halving.successive_halving(space.trials, space.min_chunks, space.max_chunks, space.eta)]


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (``.part`` then rename) in process 0 only."""
    if not cluster.is_main():
        return
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_text(text)
    tmp.replace(path)


#: Compiled populations of this process, by group config, validation set and devices: a sweep
#: resumed (or run again) in the same process reuses their compiled programs. Oldest dropped beyond 4.
_POPULATIONS: dict[str, Population] = {}
_MAX_CACHED = 4


class _Groups:
    """Compiled populations and banks, shared by every bracket (one per distinct static config)."""

    def __init__(self, base: dict, space: Space, devices: list):
        self.base, self.space, self.devices = base, space, devices
        self.pops: dict[str, Population] = {}
        self._banks: dict[str, object] = {}

    def _build(self, cfg) -> Population:
        m = self.space.metric
        key = json.dumps({"cfg": cfg.to_dict(), "val": [m.split, m.n_val, m.eval_starts],
                          "devices": [int(d.id) for d in self.devices]}, sort_keys=True, default=str)
        if key not in _POPULATIONS:
            bank = self._cached("train", cfg, lambda: ex.make_bank(cfg, "train", cfg.data.n_train)[0])
            val = self._cached("val", cfg, lambda: val_data(cfg, m.n_val, m.eval_starts, cfg.train.seed)) if m.split == "val" else None
            while len(_POPULATIONS) >= _MAX_CACHED:
                _POPULATIONS.pop(next(iter(_POPULATIONS)))
            _POPULATIONS[key] = Population(cfg, bank, val, devices=self.devices)
        return _POPULATIONS[key]

    def _cached(self, kind: str, cfg, build):
        key = kind + json.dumps({"data": cfg.to_dict()["data"], "env": cfg.env}, sort_keys=True, default=str)
        if key not in self._banks:
            self._banks[key] = build()
        return self._banks[key]

    def population(self, trial: Trial) -> Population:
        if trial.group not in self.pops:
            self.pops[trial.group] = self._build(group_config(trial, self.base))
        return self.pops[trial.group]


def _keys(trials: list[Trial], common_seed: bool):
    data = []
    for t in trials:
        k = jax.random.key(t.config.train.seed)
        data.append(jax.random.key_data(k if common_seed else jax.random.fold_in(k, t.id)))
    return jax.random.wrap_key_data(np.stack([np.asarray(d) for d in data]))


def _open(out: Path, spec: dict, resume: bool, overwrite: bool) -> dict | None:
    """Process 0 checks and prepares the sweep directory; returns the recorded progress when
    resuming (``None`` when there is none). Every process gets the same result or the same error."""
    error, prog = None, None
    if cluster.is_main():
        try:
            if resume:
                if not (out / "sweep.json").exists():
                    raise ConfigError(f"{out}: nothing to resume (no sweep.json)")
                if json.loads((out / "sweep.json").read_text()) != json.loads(json.dumps(spec)):
                    raise ConfigError(f"{out}: the base config or the space differs from the sweep being resumed")
                if (out / "progress.json").exists():
                    prog = json.loads((out / "progress.json").read_text())
            elif out.exists() and any(out.iterdir()):
                if not overwrite:
                    raise OverwriteError(f"{out}: sweep directory exists; pass --overwrite to replace it or --resume to continue it")
                import shutil

                shutil.rmtree(out)
        except (ConfigError, OverwriteError) as e:
            error = e
    cluster.raise_everywhere(error)
    out.mkdir(parents=True, exist_ok=True)  # every process: its checkpoint shards go below it
    _atomic_write(out / "sweep.json", json.dumps(spec, indent=1))
    return cluster.broadcast_json(prog)


def _remove(directory: Path) -> None:
    """Delete this process's files of an older checkpoint (and the directory once empty)."""
    for f in directory.glob(f"process{jax.process_index()}.*"):
        f.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass  # another process's files are still there, or it is gone already


def run_sweep(base: dict, space: Space, out: str | Path, *, resume: bool = False, overwrite: bool = False,
              progress: bool = True, on_rung: Callable[[int, int], None] | None = None, vmapped: bool = True,
              devices: int | None = None) -> dict:
    """Run (or resume) the sweep of ``space`` around the base experiment config ``base`` (a YAML
    mapping) into ``out``; returns the summary. ``on_rung(bracket, rung)`` is called after each
    rung has been checkpointed (tests use it to interrupt a sweep).

    ``vmapped=False`` trains every trial as its own population of one, one after another (the
    same schedule, compiled programs shared): the baseline the vmapped sweep is timed against.
    ``devices``: shard the trials of each population over the first ``devices`` devices (default:
    every device of every process, :func:`jaxmed.sweep.cluster.sweep_devices`). Under
    ``jax.distributed`` every process calls this with the same arguments; process 0 writes the
    result files, each process its own checkpoint rows (see the module docstring)."""
    out = Path(out)
    base_cfg = ex.ExperimentConfig.from_dict(base, "base config")
    base = base_cfg.to_dict()  # normalised: every section explicit
    spec = {"base": base, "space": space.to_dict()}
    mesh_devices = cluster.sweep_devices(devices)
    recorded = _open(out, spec, resume, overwrite)

    plan = brackets(space)
    rng = np.random.default_rng(space.seed)
    trials: list[Trial] = []
    per_bracket: list[list[Trial]] = []
    for b, rungs in enumerate(plan):
        ts = make_trials(space, base, rungs[0].n, b, len(trials), rng, with_default=space.include_default and b == 0)
        if not vmapped:
            for t in ts:
                t.group = f"{t.group}#trial{t.id}"
        per_bracket.append(ts)
        trials += ts
    prog_path = out / "progress.json"
    if recorded is not None:
        prog = recorded
        if [r["values"] for r in prog["trials"]] != [json.loads(json.dumps(t.values)) for t in trials]:
            raise ConfigError(f"{out}/progress.json: the sampled trials differ from the recorded ones")
    else:
        prog = {"trials": [{"id": t.id, "bracket": t.bracket, "group": t.group, "values": t.values, "metrics": {},
                            "env_steps": 0, "seconds": 0.0, "budget": 0, "stopped_at": None} for t in trials],
                "brackets": [{"rungs": [list(r) for r in rungs], "done": 0, "alive": [t.id for t in ts]}
                             for rungs, ts in zip(plan, per_bracket)],
                "wall_s": 0.0}
    prog["devices"] = len(mesh_devices)
    prog["processes"] = jax.process_count()
    records = prog["trials"]
    groups = _Groups(base, space, mesh_devices)
    t_start = time.perf_counter() - prog["wall_s"]
    metric = space.metric
    say = progress and cluster.is_main()

    for b, (rungs, ts) in enumerate(zip(plan, per_bracket)):
        br = prog["brackets"][b]
        if br["done"] == len(rungs):
            continue
        by_id = {t.id: t for t in ts}
        group_names = sorted({t.group for t in ts})
        state: dict[str, tuple[object, list[int]]] = {}  # group -> (population state, trial ids in row order)
        trained: dict[str, int] = {}

        def ckpt_dir(g: str, rung: int) -> Path:
            return out / "state" / f"b{b}" / f"g{group_names.index(g)}" / f"rung{rung}"

        def inputs(ids: list[int]):
            members = [by_id[i] for i in ids]
            pop = groups.population(members[0])
            return pop, _keys(members, space.common_seed), pop.hparams([t.config for t in members])

        if br["done"] > 0:  # resume from the checkpoint of the last completed rung
            for g in group_names:
                ids = [i for i in br["alive"] if by_id[i].group == g]
                if ids:
                    pop, keys, hps = inputs(ids)
                    state[g] = (pop.restore(ckpt_dir(g, br["done"]), keys, hps), ids)
                    trained[g] = rungs[br["done"] - 1].budget

        def train_to(alive: list[int], budget: int) -> dict:
            result = {}
            for g in group_names:
                ids = [i for i in alive if by_id[i].group == g]
                if not ids:
                    continue
                pop, keys, hps = inputs(ids)
                if g not in state:
                    state[g] = (pop.init(keys, hps), ids)
                    trained[g] = 0
                st, _ = state[g]
                st, train_metrics, seconds = pop.run(st, budget - trained[g])
                if metric.split == "val":
                    values, eval_s = pop.evaluate(st, metric.name)
                    seconds += eval_s
                else:
                    key = "final_" + metric.name
                    if key not in train_metrics:
                        raise ConfigError(f"metric {metric.name!r}: the training log has no {key!r}; it has {sorted(train_metrics)}")
                    values = train_metrics[key]
                state[g], trained[g] = (st, ids), budget
                for row, i in enumerate(ids):
                    r = records[i]
                    v = float(values[row])
                    result[i] = v
                    r["metrics"][str(budget)] = None if np.isnan(v) else v
                    r["budget"] = budget
                    r["env_steps"] = budget * pop.env_steps_per_chunk
                    r["seconds"] += seconds / len(ids)
                    if say:
                        print(f"bracket {b} budget {budget:>4} chunks  trial {i:>3}  {metric.name} = {v:.3f}", flush=True)
            return {i: (np.nan if v is None else v) for i, v in result.items()}

        def after_rung(i: int, _metrics: dict, survivors: list[int]) -> None:
            last = i + 1 == len(rungs)
            for g in list(state):
                st, ids = state[g]
                keep = [k for k in ids if k in survivors]
                for k in ids:
                    if k not in survivors or last:
                        records[k]["stopped_at"] = rungs[i].budget
                if last:
                    continue
                if not keep:
                    del state[g]
                    continue
                pop = groups.population(by_id[keep[0]])
                if keep != ids:
                    st = pop.take(st, [ids.index(k) for k in keep])
                state[g] = (st, keep)
                pop.save(ckpt_dir(g, i + 1), st)
            cluster.barrier(f"jaxmed-sweep-b{b}-rung{i}")  # every process's rows are on disk
            br["done"], br["alive"] = i + 1, survivors
            prog["wall_s"] = time.perf_counter() - t_start
            _atomic_write(prog_path, json.dumps(prog, indent=1))
            if 0 < i and not last:  # the previous rung's checkpoints are superseded now
                for g in group_names:
                    _remove(ckpt_dir(g, i))
            if on_rung is not None:
                on_rung(b, i)

        halving.run_bracket([t.id for t in ts], rungs, train_to, metric.mode, start=br["done"],
                            alive=br["alive"], on_rung=after_rung)
    prog["wall_s"] = time.perf_counter() - t_start
    _atomic_write(prog_path, json.dumps(prog, indent=1))
    summary = write_results(out, base, space, trials, prog) if cluster.is_main() else None
    return cluster.broadcast_json(summary)


def best_trial(records: list[dict], space: Space) -> dict | None:
    """The best trial among those trained to the full budget (``max_chunks``)."""
    full = {r["id"]: r["metrics"].get(str(space.max_chunks)) for r in records if str(space.max_chunks) in r["metrics"]}
    if not full:
        return None
    metrics = {i: (np.nan if v is None else v) for i, v in full.items()}
    order = sorted(metrics, key=lambda i: (np.isnan(metrics[i]), metrics[i] if space.metric.mode == "min" else -metrics[i], i))
    return next(r for r in records if r["id"] == order[0])


def write_results(out: Path, base: dict, space: Space, trials: list[Trial], prog: dict) -> dict:
    import dataclasses

    records = prog["trials"]
    best = best_trial(records, space)
    summary = {"metric": space.metric.name, "split": space.metric.split, "mode": space.metric.mode,
               "trials": len(records), "wall_s": prog["wall_s"], "env_steps": sum(r["env_steps"] for r in records),
               "groups": len({r["group"] for r in records})}
    if best is not None:
        cfg = trials[best["id"]].config
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, chunks=int(best["budget"])))
        data = cfg.to_dict()
        if ex.ExperimentConfig.from_dict(data, "best.yaml").to_dict() != data:
            raise ConfigError("the best config does not round-trip through ExperimentConfig.from_dict")
        (out / "best.yaml").write_text(f"# best trial {best['id']} of the sweep in {out.name}/: {space.metric.name} "
                                       f"({space.metric.split}) = {best['metrics'][str(space.max_chunks)]}\n"
                                       + yaml.safe_dump(data, sort_keys=False))
        summary.update(best_trial=best["id"], best_values=best["values"], best_metric=best["metrics"][str(space.max_chunks)])
    if space.include_default:
        d = records[0]
        summary.update(default_trial=0, default_metric=d["metrics"].get(str(space.max_chunks)),
                       default_metrics=d["metrics"])
    budgets = sorted({int(k) for r in records for k in r["metrics"]})
    params = list(space.params)
    header = ["trial", "bracket", *params, *[f"{space.metric.name}@{b}" for b in budgets], "chunks", "env_steps", "seconds"]
    rows = []
    for r in records:
        rows.append([r["id"], r["bracket"], *[r["values"][p] for p in params],
                     *[r["metrics"].get(str(b), "") for b in budgets], r["budget"], r["env_steps"], round(r["seconds"], 3)])
    import csv

    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    (out / "results.md").write_text(markdown_table(header, rows, best["id"] if best else None) + "\n")
    plot_curves(records, space, out / "curves.png", best["id"] if best else None)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _cell(v) -> str:
    if v is None or v == "":
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(header: list, rows: list, best: int | None) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_cell(v) for v in row]
        if row[0] == best:
            cells[0] = f"**{cells[0]} (best)**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(records: list[dict], space: Space, path: Path, best: int | None) -> None:
    """Metric vs env steps, one line per trial (the best bold, the default dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in records:
        pts = sorted((int(b), v) for b, v in r["metrics"].items() if v is not None)
        if not pts:
            continue
        steps_per_chunk = r["env_steps"] / max(r["budget"], 1)
        x = [b * steps_per_chunk for b, _ in pts]
        y = [v for _, v in pts]
        style = dict(lw=2.5, color="k", zorder=3, label=f"best (trial {r['id']})") if r["id"] == best else dict(lw=0.9, alpha=0.7)
        if r["id"] == 0 and space.include_default and r["id"] != best:
            style = dict(lw=1.5, ls="--", color="tab:red", label="default config")
        ax.plot(x, y, marker="o", ms=3, **style)
    ax.set_xlabel("training env steps per trial")
    ax.set_ylabel(f"{space.metric.name} ({space.metric.split})")
    if space.metric.mode == "min":
        ax.set_yscale("log")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ax.legend(fontsize=8)
    ax.set_title(f"{space.method}: {len(records)} trials, eta={space.eta}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
