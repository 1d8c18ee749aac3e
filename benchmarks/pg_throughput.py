"""PPO training throughput: environment steps/s of the whole PPO training program against the number
of parallel environments.

For each number of parallel environments ``n`` (default 1, 4, 16, 64, 256, 1024, 4096; larger ones are
skipped once a single iteration would exceed ``--max-call-s``), this measures on one device:

* **whole program**: ``run_chunk`` of :func:`jaxmed.agents.ppo.make_train` with one iteration per call:
  a ``lax.scan`` rollout of ``--num-steps`` steps of ``n`` vmapped environments (policy forward,
  categorical sampling, ``env.step`` with auto-reset, value of the final observation where an episode
  was truncated), GAE, then ``--epochs`` passes of ``--minibatches`` shuffled minibatches (re-rendering
  the observations from the stored states, forward + backward, Adam). env-steps/s = ``n * num_steps``
  / median seconds per call (the minibatch count is fixed, as in PureJaxRL, so the minibatch grows
  with ``n``); compilation (``lower().compile()``) is timed separately; one warm-up call.
* **rollout alone**: the same rollout + GAE jitted on its own (``make_collect``), so the update's share
  is the difference.

Environment and network: those of ``configs/afids_ppo_cpu.yaml`` by default — AFIDs AC + PC (two
agents per environment), multi-scale levels 0/1/2 (2, 4, 8 mm), 15³ crops, 2 frames, the patch-
embedding trunk with FC 128-64 policy and value heads — on the MNI template at 2 mm repeated
``--n-volumes`` times (uint8 bank). Every row records the 1-minute load average (shared machines).

Usage::

    python benchmarks/pg_throughput.py [--quick] [--out benchmarks/results/pg_throughput.json]

Writes the JSON, a PNG plot beside it, and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt, machine_info, machine_line, replot, run_and_write, save_figure  # noqa: E402

from jaxmed.agents import ppo  # noqa: E402
from jaxmed.agents.rollout_pg import make_collect  # noqa: E402
from jaxmed.data import afids  # noqa: E402
from jaxmed.data.bank import build_bank  # noqa: E402
from jaxmed.envs.landmark import EnvParams, LandmarkEnv, LandmarkEnvConfig  # noqa: E402
from jaxmed.networks import actor_critic_from_config  # noqa: E402


def timed(call, min_time: float, min_reps: int, max_reps: int = 50) -> tuple[float, int]:
    """Median seconds of ``call()`` (which blocks) after one untimed warm-up call."""
    call()
    times: list[float] = []
    while len(times) < min_reps or (sum(times) < min_time and len(times) < max_reps):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), len(times)


def compile_timed(fn, *example):
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*example).compile()
    return compiled, time.perf_counter() - t


def ppo_config(args, n: int) -> ppo.PPOConfig:
    minibatches = min(args.minibatches, n * args.num_steps)
    while (n * args.num_steps) % minibatches:
        minibatches -= 1
    return ppo.PPOConfig(n_envs=n, num_steps=args.num_steps, updates_per_chunk=1, update_epochs=args.epochs,
                         num_minibatches=minibatches, gamma=0.9, learning_rate=3e-4)


def measure(args, env, env_params, network, bank, n: int) -> dict:
    config = ppo_config(args, n)
    fns = ppo.make_train(config, env, env_params, network)
    rs = jax.jit(fns.init)(jax.random.key(0), bank)
    chunk, compile_s = compile_timed(fns.run_chunk, rs, bank)
    holder = [rs]

    def call():
        holder[0], m = chunk(holder[0], bank)
        jax.block_until_ready(m)

    t0 = time.perf_counter()
    call()  # first call: also tells whether the timed repeats fit the budget
    first = time.perf_counter() - t0
    row = {"n_envs": n, "num_minibatches": config.num_minibatches, "minibatch_size": n * args.num_steps // config.num_minibatches,
           "compile_s": compile_s, "load_avg_1m": os.getloadavg()[0]}
    if first > args.max_call_s:
        return {**row, "iteration_s": first, "repeats": 0, "env_steps_per_s": n * args.num_steps / first,
                "note": "one call only (over --max-call-s)"}
    sec, reps = timed(call, args.min_time, args.min_reps)
    row.update(iteration_s=sec, repeats=reps, env_steps_per_s=n * args.num_steps / sec,
               grad_steps_per_s=config.update_epochs * config.num_minibatches / sec)
    # the rollout (+ GAE) alone, same shapes
    collect = make_collect(env, env_params, network, n, args.num_steps, config.gamma, config.gae_lambda)
    st = holder[0]
    col, row["rollout_compile_s"] = compile_timed(collect, st.params, st.env_state, st.obs, st.key, bank)
    sec_r, _ = timed(lambda: jax.block_until_ready(col(st.params, st.env_state, st.obs, st.key, bank)), args.min_time / 2, args.min_reps)
    row["rollout_s"] = sec_r
    row["update_s"] = max(sec - sec_r, 0.0)
    row["rollout_fraction"] = sec_r / sec
    return row


def run(args) -> dict:
    info = machine_info()
    print(f"# machine: {info['cpu']}, {info['cores']} cores, {info['device']}, jax {info['jax']}, "
          f"load avg {info['load_avg_1m_at_start']:.2f}", flush=True)
    subject = afids.load(spacing=args.spacing)
    bank = build_bank([subject] * args.n_volumes, labels=tuple(args.targets), factors=(1, 2, 4), max_crop=args.crop, dtype="uint8")
    env = LandmarkEnv(LandmarkEnvConfig(targets=tuple(args.targets), crop_size=args.crop, frames=args.frames, levels=tuple(args.levels)),
                      labels=bank.labels)
    env_params = EnvParams(max_steps=150, start_radius_mm=0.0, terminate_at_target_mm=2.0)
    net_cfg = {"trunk": {"name": "patch", "patch_size": 5}, "head": {"hidden": list(args.hidden)}, "crop_size": args.crop}
    if len(args.targets) > 1:
        net_cfg.update(n_agents=len(args.targets), share_trunk=True)
    network = actor_critic_from_config(net_cfg)
    print(HEADER, flush=True)
    rows = []
    t_start = time.perf_counter()
    skip_rest = None
    for n in args.n_envs:
        if skip_rest is None and time.perf_counter() - t_start > args.budget_s:
            skip_rest = f"overall time budget ({args.budget_s:.0f} s) spent"
        if skip_rest:
            rows.append({"n_envs": n, "skipped": skip_rest})
            continue
        row = measure(args, env, env_params, network, bank, n)
        rows.append(row)
        print(format_row(row, args.num_steps), flush=True)
        if "note" in row:
            skip_rest = f"the previous size took {row['iteration_s']:.0f} s per iteration (> --max-call-s {args.max_call_s:.0f})"
    info["load_avg_1m_at_end"] = os.getloadavg()[0]
    return {
        "machine": info,
        "settings": {
            "bank": f"AFIDs MNI152NLin2009cAsym T1 template at {args.spacing} mm, x{args.n_volumes} volumes, uint8, factors 1/2/4",
            "env": f"LandmarkEnv(targets={list(args.targets)}, crop {args.crop}, frames {args.frames}, levels {list(args.levels)}), "
                   f"{dataclasses.asdict(LandmarkEnvConfig(targets=tuple(args.targets)))['osc_window']}-step oscillation window, "
                   "max_steps 150, terminate at 2 mm, random starts",
            "network": f"actor_critic_from_config({net_cfg})",
            "ppo": {k: v for k, v in dataclasses.asdict(ppo_config(args, 64)).items() if k not in ("n_envs", "num_minibatches")},
            "num_minibatches": args.minibatches, "n_envs": args.n_envs, "min_time_s": args.min_time, "max_call_s": args.max_call_s,
            "quick": args.quick,
        },
        "rows": rows,
    }


HEADER = ("| n envs | env-steps/s | s / iteration | rollout s (share) | update s | grad steps/s | minibatch | compile s | load |\n"
          "|---|---|---|---|---|---|---|---|---|")


def format_row(r, num_steps=None) -> str:
    if "skipped" in r:
        return f"| {r['n_envs']} | skipped: {r['skipped']} | | | | | | | |"
    roll = f"{fmt(r['rollout_s'])} ({100 * r['rollout_fraction']:.0f} %)" if "rollout_s" in r else "—"
    return (f"| {r['n_envs']} | {fmt(r['env_steps_per_s'])} | {fmt(r['iteration_s'])} | {roll} | {fmt(r.get('update_s'))} | "
            f"{fmt(r.get('grad_steps_per_s'))} | {r['minibatch_size']} | {r['compile_s']:.1f} | {r['load_avg_1m']:.1f} |")


def markdown(result) -> str:
    m, s = result["machine"], result["settings"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['device']}; jax {m['jax']}; {m['date']}; commit {m['git_commit'] or 'n/a'}; "
        f"load avg (1 min) {m['load_avg_1m_at_start']:.2f} at start, {m['load_avg_1m_at_end']:.2f} at end. Bank: {s['bank']}. "
        f"Env: {s['env']}. Network: {s['network']}. PPO: {s['ppo']['num_steps']} steps per rollout, {s['ppo']['update_epochs']} epochs "
        f"of {s['num_minibatches']} minibatches. One iteration (rollout + update) per timed call.",
        "",
        HEADER,
    ]
    lines += [format_row(r) for r in result["rows"]]
    return "\n".join(lines)


def plot(result, path: Path) -> None:
    """Left: env-steps/s of the whole PPO program against n (log-log), with each row's load average.
    Right: the share of an iteration spent in the rollout and in the update."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "skipped" not in r]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    ns = [r["n_envs"] for r in rows]
    ax.plot(ns, [r["env_steps_per_s"] for r in rows], "-o", label="PPO, whole training program")
    ax.set(xscale="log", yscale="log", xlabel="parallel environments n", ylabel="environment steps / s",
           title="PPO training throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    for r in rows:
        ax.annotate(f"load {r['load_avg_1m']:.1f}", (r["n_envs"], r["env_steps_per_s"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7, color="grey")
    split = [r for r in rows if "rollout_s" in r]
    x = np.arange(len(split))
    roll = np.array([100 * r["rollout_fraction"] for r in split])
    bx.bar(x, roll, label="rollout (policy forward + env step + GAE)")
    bx.bar(x, 100 - roll, bottom=roll, label="update (re-render + forward/backward + Adam)")
    for i, r in enumerate(split):
        bx.annotate(f"{r['iteration_s']:.3g} s", (i, 101), ha="center", fontsize=7)
    bx.set_xticks(x, [str(r["n_envs"]) for r in split])
    bx.set(ylim=(0, 110), xlabel="parallel environments n", ylabel="% of an iteration (label: seconds per iteration)",
           title="where an iteration's time goes")
    bx.legend(fontsize=8, loc="center right")
    save_figure(fig, path, machine_line(result["machine"]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-envs", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024, 4096])
    p.add_argument("--targets", nargs="+", default=["AC", "PC"])
    p.add_argument("--crop", type=int, default=15)
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 64])
    p.add_argument("--spacing", type=float, default=2.0)
    p.add_argument("--n-volumes", type=int, default=4)
    p.add_argument("--num-steps", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timed calls per size (at least --min-reps)")
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--max-call-s", type=float, default=60.0, help="skip larger sizes once one iteration takes longer")
    p.add_argument("--budget-s", type=float, default=900.0, help="overall time budget; remaining sizes are skipped")
    p.add_argument("--quick", action="store_true", help="n = 1, 16, 256 and short timings")
    p.add_argument("--replot", type=Path, help="redraw the PNG and table of a saved JSON and exit")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "pg_throughput.json")
    args = p.parse_args(argv)
    if args.quick:
        args.n_envs, args.min_time, args.min_reps = [1, 16, 256], 1.0, 2
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.replot:
        return replot(args.replot, plot, markdown)
    return run_and_write(run, args, plot, markdown)


if __name__ == "__main__":
    main()
