"""Multi-agent training throughput: agents per image x parallel images x trunk sharing.

For ``A`` agents per image (1, 2, 4, 8 AFIDs landmarks), ``n`` parallel images (environments) and
the three Collab-DQN network variants (independent trunks, one shared trunk, shared trunk +
CommNet), times the whole jitted DQN training program (act, env step, replay insert, sample,
re-render, TD update) after learning has started, and the environment alone under a random policy.
Reports env-steps/s (one step of one image with all its agents), agent-steps/s and updates/s.

    python benchmarks/multiagent_throughput.py [--agents 1 2 4 8] [--n-envs 16 64 256] [--quick]

Writes ``benchmarks/results/multiagent_throughput.json`` and a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from common import machine_info, save_figure  # noqa: E402

from jaxmed.agents.dqn import DQNConfig, make_train  # noqa: E402
from jaxmed.data import afids, build_bank, conform, make_population  # noqa: E402
from jaxmed.envs.landmark import EnvParams, LandmarkEnv, LandmarkEnvConfig  # noqa: E402
from jaxmed.networks import network_from_config  # noqa: E402

LABELS = ("AC", "PC", "genu of CC", "splenium of CC", "pineal gland", "infracollicular sulcus", "R MB", "L MB")
VARIANTS = {"independent": dict(share_trunk=False), "shared": dict(share_trunk=True), "comm": dict(share_trunk=True, communication=True)}


def _time(fn, *args, min_time: float, reps: int = 2):
    out = jax.block_until_ready(fn(*args))  # compile + first run
    t0, n = time.perf_counter(), 0
    while n < reps or time.perf_counter() - t0 < min_time:
        out = jax.block_until_ready(fn(*(args if n == 0 else (out[0],) + args[1:])))
        n += 1
    return (time.perf_counter() - t0) / n, out


def measure(bank, n_agents: int, n_envs: int, variant: str, args) -> dict:
    env = LandmarkEnv(LandmarkEnvConfig(targets=LABELS[:n_agents], crop_size=args.crop, frames=2, levels=(0, 1, 2)), labels=bank.labels)
    params = EnvParams(max_steps=150, terminate_at_target_mm=2.0)
    net_cfg = {"trunk": {"name": "patch", "patch_size": 5}, "head": {"name": "dueling", "hidden": [128, 64]}, "crop_size": args.crop}
    if n_agents > 1:
        net_cfg.update(n_agents=n_agents, **VARIANTS[variant])
    network = network_from_config(net_cfg)
    cfg = DQNConfig(n_envs=n_envs, chunk_steps=args.chunk_steps, batch_size=args.batch_size, learning_starts=args.batch_size,
                    replay_capacity=max(4 * n_envs * args.chunk_steps, 10_000), eps_decay_steps=1000)
    fns = make_train(cfg, env, params, network)
    rs = jax.jit(fns.init)(jax.random.key(0), bank)
    chunk = jax.jit(fns.run_chunk)
    rs, _ = chunk(rs, bank)  # fill past learning_starts; compiles
    t0 = time.perf_counter()
    dt, (rs, metrics) = _time(chunk, rs, bank, min_time=args.min_time)
    del t0
    updates = cfg.chunk_steps * cfg.updates_per_step
    row = {"agents": n_agents, "n_envs": n_envs, "variant": variant,
           "params": int(sum(x.size for x in jax.tree.leaves(rs.params))),
           "train_env_steps_per_s": cfg.chunk_steps * n_envs / dt, "train_agent_steps_per_s": cfg.chunk_steps * n_envs * n_agents / dt,
           "updates_per_s": updates / dt, "chunk_s": dt}

    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))

    @jax.jit
    def rollout(state, bank, key):
        def body(carry, k):
            s, = carry
            ka, ks = jax.random.split(k)
            a = jax.random.randint(ka, (n_envs, n_agents), 0, 6)
            obs, s, *_ = v_step(jax.random.split(ks, n_envs), s, a, params, bank)
            return (s,), obs.sum(dtype=np.float32)
        (s,), chk = jax.lax.scan(body, (state,), jax.random.split(key, args.chunk_steps))
        return s, chk.sum()

    _, state = jax.vmap(env.reset, in_axes=(0, None, None))(jax.random.split(jax.random.key(1), n_envs), params, bank)
    env_dt, _ = _time(lambda s, b: rollout(s, b, jax.random.key(2)), state, bank, min_time=args.min_time)
    row["env_only_agent_steps_per_s"] = args.chunk_steps * n_envs * n_agents / env_dt
    return row


def plot(rows, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant in VARIANTS:
        for n_envs in sorted({r["n_envs"] for r in rows}):
            sel = sorted((r for r in rows if r["variant"] == variant and r["n_envs"] == n_envs), key=lambda r: r["agents"])
            if not sel:
                continue
            a = [r["agents"] for r in sel]
            axes[0].plot(a, [r["train_agent_steps_per_s"] for r in sel], marker="o", label=f"{variant}, {n_envs} images")
            axes[1].plot(a, [r["updates_per_s"] for r in sel], marker="o", label=f"{variant}, {n_envs} images")
    for ax, lab in zip(axes, ("training agent-steps/s", "updates/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("agents per image")
        ax.set_ylabel(lab)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(fig, path, title)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--n-envs", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--crop", type=int, default=15)
    p.add_argument("--chunk-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--min-time", type=float, default=2.0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "multiagent_throughput.json")
    args = p.parse_args(argv)
    if args.quick:
        args.agents, args.n_envs, args.min_time = [1, 2], [16], 0.2
    template, landmarks = afids.load()
    subjects = make_population(template, landmarks.select(LABELS), 4, split="train")
    bank = build_bank([(conform(s.volume, 2.0), s.landmarks) for s in subjects], LABELS, factors=(1, 2, 4), max_crop=args.crop, dtype="uint8")
    rows, info = [], machine_info()
    for n_envs in args.n_envs:
        for a in args.agents:
            for variant in (args.variants if a > 1 else ["shared"]):
                row = measure(bank, a, n_envs, variant, args)
                rows.append(row)
                print(json.dumps(row), flush=True)
                write(args, info, rows)  # after every row: a killed run keeps what it measured
    write(args, info, rows)
    plot(rows, args.out.with_suffix(".png"), f"multi-agent DQN throughput ({info.get('device', '')})")
    print(table(rows))


def table(rows) -> str:
    lines = ["| agents/image | images | variant | params | train env-steps/s | train agent-steps/s | updates/s | env-only agent-steps/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['agents']} | {r['n_envs']} | {r['variant']} | {r['params']:,} | {r['train_env_steps_per_s']:,.0f} | "
                     f"{r['train_agent_steps_per_s']:,.0f} | {r['updates_per_s']:,.1f} | {r['env_only_agent_steps_per_s']:,.0f} |")
    return "\n".join(lines)


def write(args, info, rows) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                                    "rows": rows, "table": table(rows)}, indent=2))


if __name__ == "__main__":
    main()
