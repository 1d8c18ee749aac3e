"""Landmark environment throughput: agent-steps/s of a random policy against the number of agents.

For each configuration (single-agent, 4 agents per env, multi-scale 3 levels; float32 and uint8
banks; 45^3 crops with 4 frames, plus the single-frame 45^3 uint8 case) and each number of parallel
agents ``n`` (1 ... 8192, as memory allows), this measures in one process on one device:

* **jaxmed**: ``jit(lax.scan(vmap(env.step)))`` over ``--steps`` steps with uniformly random actions
  drawn inside the scan (auto-reset included); the observation is carried through the scan so every
  step's observation is really written. Compilation is timed separately (``lower().compile()``) and
  excluded; one warm-up call; median of repeats.
* **reference**: :class:`jaxmed.envs.reference.ReferenceLandmarkEnv` (NumPy, a Python loop over
  environments and agents, as the published code) with the same random policy, reset by the caller
  when an episode ends; ``n`` up to 4096, for a limited time.
* **memcpy**: a large NumPy copy (GB/s). Each agent-step writes ``frames * D^3 * itemsize`` bytes of
  observation (reported); the fraction of memcpy bandwidth reached is that output rate over memcpy.
  With few agents the observations stay in the CPU caches, so more than 100 % is possible there.

Shared machines: other processes on a 2-core CPU change every figure by 2x or more (the first
published table of this benchmark ran at a load average of 5-6 and reported a third of what the
same code measures on a quiet machine). So the jaxmed calls and the reference's stepping are
*interleaved* (one jitted call, then a slice of reference stepping, repeated), which keeps their
ratio fair when the load drifts; memcpy is sampled after every jitted call too (``memcpy_GBps_row``,
the median; a row's ``frac_memcpy`` is against it, ``frac_memcpy_run`` against the copy measured at
the start) and each row records the 1-minute load average.

Bank: the AFIDs MNI template at 2 mm (97 x 115 x 97), repeated ``--n-volumes`` times as bank
volumes, pyramid factors 1, 2, 4. It runs unchanged on a GPU (JAX picks the default device).

The jaxmed side alone (no reference, no memcpy) is the ``jaxmed bench`` grid
``benchmarks/grids/landmark_env.yaml``; this script keeps what a grid cannot express: the NumPy
reference env interleaved with the jitted calls and the memcpy bandwidth. It shares the random-policy
rollout, timing and options with :mod:`jaxmed.bench` and the other scripts (``benchmarks/common.py``).

Usage::

    python benchmarks/env_throughput.py [--quick] [--out benchmarks/results/env_throughput.json]

Writes the JSON, a PNG plot beside it, and prints a Markdown table.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    compile_timed,
    fmt,
    load_avg,
    machine_line,
    make_random_rollout,
    parser,
    replot_or_run,
    reset_batch,
    rows_markdown,
    save_figure,
    start_sweep,
    sweep_result,
)

from jaxmed.data import afids  # noqa: E402
from jaxmed.data.bank import build_bank  # noqa: E402
from jaxmed.envs.landmark import LandmarkConfig, LandmarkEnv, LandmarkParams  # noqa: E402
from jaxmed.envs.reference import ReferenceLandmarkEnv  # noqa: E402

FACTORS = (1, 2, 4)
MULTI_TARGETS = ("AC", "PC", "genu of CC", "splenium of CC")


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmarked environment: a name, its targets (agents per env), levels, frames, bank dtype
    and whether the bank holds the packed pyramid (``build_bank(packed=True)``)."""

    name: str
    targets: tuple[str, ...]
    levels: tuple[int, ...]
    frames: int
    dtype: str
    packed: bool = False

    @property
    def label(self) -> str:
        return f"{self.name} {self.dtype} k={self.frames}"

    def config(self, crop: int) -> LandmarkConfig:
        return LandmarkConfig(targets=self.targets, crop_size=crop, frames=self.frames, levels=self.levels)


def cases(dtypes) -> list[Case]:
    """The configurations measured: three envs x bank dtypes with 4 frames, the multi-scale env on a
    packed uint8 bank (one crop per frame from the agent's level, instead of per-level crops fused
    with a select), and single-frame uint8."""
    out = []
    for dtype in dtypes:
        out += [
            Case("single", ("AC",), (0,), 4, dtype),
            Case("multi-agent x4", MULTI_TARGETS, (0,), 4, dtype),
            Case("multi-scale 3 levels", ("AC",), (0, 1, 2), 4, dtype),
        ]
    if "uint8" in dtypes:
        out.append(Case("multi-scale 3 levels, packed bank", ("AC",), (0, 1, 2), 4, "uint8", packed=True))
        out.append(Case("single", ("AC",), (0,), 1, "uint8"))
    return out

# ------------------------------------------------------------------ data


def afids_banks(n_volumes: int, spacing: float, crop: int, dtypes) -> dict:
    """``{dtype: VolumeBank}``: the AFIDs template at ``spacing`` mm, ``n_volumes`` times, pyramid 1/2/4."""
    subject = afids.load(spacing=spacing)
    return {d: build_bank([subject] * n_volumes, labels=MULTI_TARGETS, factors=FACTORS, max_crop=crop, dtype=d) for d in dtypes}


def available_memory_bytes() -> int:
    """Memory the device can hold: the accelerator's ``bytes_limit``, else the host's physical RAM."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"])
    except Exception:  # CPU backends may not implement memory_stats
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))

# ------------------------------------------------------------------ jaxmed


def make_rollout(env: LandmarkEnv, n_envs: int, n_steps: int):
    """``rollout(key, state, obs, params, bank) -> (key, state, obs, n_episode_ends)``: ``n_steps``
    random-policy steps of ``n_envs`` environments (:func:`jaxmed.bench.make_random_rollout`), jitted,
    with ``state`` and ``obs`` donated."""
    return jax.jit(make_random_rollout(env, n_envs, n_steps), donate_argnums=(1, 2))


def initial(env: LandmarkEnv, n_envs: int, params, bank, seed: int = 0):
    """``(key, state, obs)`` of ``n_envs`` freshly reset environments."""
    return jax.jit(lambda key, bank: reset_batch(env, n_envs, params, bank, key))(jax.random.key(seed), bank)


def compile_rollout(env: LandmarkEnv, n_envs: int, params, bank, args):
    """``(compiled, carry, compile_s)``: the rollout compiled for ``n_envs`` envs and its warmed-up
    ``(key, state, obs)`` carry (one call done: warm-up)."""
    key, state, obs = initial(env, n_envs, params, bank)
    compiled, compile_s = compile_timed(make_rollout(env, n_envs, args.steps), key, state, obs, params, bank)
    key, state, obs, _ = jax.block_until_ready(compiled(key, state, obs, params, bank))  # warm-up
    return compiled, (key, state, obs), compile_s


class ReferenceStepper:
    """``n_envs`` NumPy reference envs stepped in a Python loop with random actions, resumable in
    slices (so it can be interleaved with the jitted calls); resets (when episodes end) included."""

    def __init__(self, config, params, bank, n_envs: int, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.envs = [ReferenceLandmarkEnv(config, params, bank) for _ in range(n_envs)]
        for e in self.envs:
            e.reset(self.rng)
        self.n_agents = self.envs[0].n_agents
        self.rounds, self.seconds = 0, 0.0

    def run(self, seconds: float, min_rounds: int = 1) -> None:
        """Step every env round after round for about ``seconds`` (at least ``min_rounds`` rounds)."""
        rounds, t0 = 0, time.perf_counter()
        while rounds < min_rounds or time.perf_counter() - t0 < seconds:
            for e in self.envs:
                _, _, terminated, truncated, _ = e.step(self.rng.integers(0, 6, self.n_agents))
                if terminated or truncated:
                    e.reset(self.rng)
            rounds += 1
        self.rounds += rounds
        self.seconds += time.perf_counter() - t0

    @property
    def per_s(self) -> float:
        return self.rounds * len(self.envs) * self.n_agents / self.seconds


class MemcpyProbe:
    """One NumPy copy between two pre-touched buffers per :meth:`sample` (GB/s), to measure the
    bandwidth available *while* a row is measured."""

    def __init__(self, nbytes: int):
        self.src = np.ones(nbytes, np.uint8)
        self.dst = np.zeros_like(self.src)
        np.copyto(self.dst, self.src)

    def sample(self) -> float:
        t = time.perf_counter()
        np.copyto(self.dst, self.src)
        return self.src.nbytes / (time.perf_counter() - t) / 1e9


def time_interleaved(compiled, carry, params, bank, args, reference: ReferenceStepper | None, probe: MemcpyProbe) -> dict:
    """Median seconds per jitted call (``args.min_reps`` .. ``args.max_reps`` calls, at least
    ``args.min_time`` s), each followed by one memcpy sample and, when ``reference`` is given, by a
    slice of reference stepping (``args.reference_time`` s in all, at least 2 rounds), so all three
    see the same load."""
    key, state, obs = carry
    times, ends, copies = [], [], []
    ref_slice = args.reference_time / args.min_reps
    while len(times) < args.min_reps or (sum(times) < args.min_time and len(times) < args.max_reps):
        t = time.perf_counter()
        key, state, obs, n_end = jax.block_until_ready(compiled(key, state, obs, params, bank))
        times.append(time.perf_counter() - t)
        ends.append(int(n_end))
        copies.append(probe.sample())
        if reference is not None and len(times) <= args.min_reps:
            reference.run(ref_slice, min_rounds=2 if len(times) == 1 else 1)
    del state, obs
    out = {"seconds_per_call": float(np.median(times)), "best_seconds_per_call": float(np.min(times)),
           "repeats": len(times), "episode_ends_per_call": float(np.mean(ends)),
           "memcpy_GBps_row": float(np.median(copies))}
    if reference is not None:
        out.update(reference_per_s=reference.per_s, reference_steps=reference.rounds)
    return out

# ------------------------------------------------------------------ the sweep


def measure_case(case: Case, bank, params, bw_GBps: float, mem_bytes: int, args) -> list[dict]:
    """Rows for one configuration over ``args.agents`` (skipping what exceeds the memory/time caps)."""
    config = case.config(args.crop)
    env = LandmarkEnv(config, labels=bank.labels)
    itemsize = np.dtype(bank.levels[0].dtype).itemsize
    obs_bytes = case.frames * args.crop**3 * itemsize  # per agent-step
    per_agent_step = None
    probe = MemcpyProbe(args.row_memcpy_mb * 2**20)
    rows = []
    for n in args.agents:
        n_envs = max(1, n // config.n_agents)
        agents = n_envs * config.n_agents
        row = {"config": case.name, "dtype": case.dtype, "frames": case.frames, "levels": list(case.levels), "packed_bank": case.packed,
               "crop": args.crop, "agents_per_env": config.n_agents, "n_envs": n_envs, "agents": agents,
               "obs_bytes_per_agent_step": obs_bytes}
        need = agents * obs_bytes * args.obs_copies
        if need > args.mem_fraction * mem_bytes:
            rows.append({**row, "skipped": f"memory cap ({need / 1e9:.1f} GB of observations)"})
            continue
        if per_agent_step is not None and per_agent_step * agents * args.steps > args.max_call_s:
            rows.append({**row, "skipped": f"time cap (predicted {per_agent_step * agents * args.steps:.1f} s per call)"})
            continue
        compiled, carry, row["compile_s"] = compile_rollout(env, n_envs, params, bank, args)
        reference = ReferenceStepper(config, params, bank, n_envs) if n in args.reference_agents else None
        row["load_avg_1m"] = load_avg()
        row.update(time_interleaved(compiled, carry, params, bank, args, reference, probe))
        del compiled, carry, reference
        agent_steps = agents * args.steps
        per_agent_step = row["seconds_per_call"] / agent_steps
        row["jax_per_s"] = agent_steps / row["seconds_per_call"]
        row["obs_GBps"] = row["jax_per_s"] * obs_bytes / 1e9
        row["frac_memcpy"] = row["obs_GBps"] / row["memcpy_GBps_row"]
        row["frac_memcpy_run"] = row["obs_GBps"] / bw_GBps
        if "reference_per_s" in row:
            row["speedup"] = row["jax_per_s"] / row["reference_per_s"]
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def run(args) -> dict:
    info, bw = start_sweep(args.memcpy_mb)
    mem = available_memory_bytes()
    banks = afids_banks(args.n_volumes, args.spacing, args.crop, args.dtypes)
    params = LandmarkParams()
    print(HEADER, flush=True)
    rows = []
    for case in cases(args.dtypes):
        if args.only and case.name not in args.only:
            continue
        bank = banks[case.dtype]
        if case.packed:
            if not hasattr(bank, "packed"):  # a jaxmed without packed banks (comparison runs)
                continue
            from jaxmed.ops.crop import pack_levels

            bank = bank.replace(packed=pack_levels(bank.levels))
        rows += measure_case(case, bank, params, bw, mem, args)
        del bank
    bank = banks[args.dtypes[0]]
    return sweep_result(info, bw, {
        "bank": f"AFIDs MNI152NLin2009cAsym T1 template at {args.spacing} mm, x{args.n_volumes} volumes, factors {FACTORS}",
        "level0_shape": [int(s) for s in np.asarray(bank.shapes)[0, 0]],
        "margin": bank.margin,
        "crop": args.crop,
        "steps_per_call": args.steps,
        "agents": args.agents,
        "reference_agents": args.reference_agents,
        "reference_seconds": args.reference_time,
        "policy": "uniform random actions; auto-reset (jaxmed) / caller reset (reference)",
        "env_params": {f.name: float(getattr(params, f.name)) for f in dataclasses.fields(params)},
        "memory_bytes": mem,
        "mem_fraction": args.mem_fraction,
        "max_call_s": args.max_call_s,
        "quick": args.quick,
    }, rows)

# ------------------------------------------------------------------ output

_fmt = fmt


HEADER = (
    "| config | dtype | frames | agents | jaxmed agent-steps/s | obs KB / agent-step | obs GB/s | % of memcpy | compile s "
    "| reference agent-steps/s | speed-up | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(r) -> str:
    head = f"| {r['config']} | {r['dtype']} | {r['frames']} | {r['agents']} |"
    if "skipped" in r:
        return f"{head} skipped: {r['skipped']} | | | | | | | |"
    speed = f"{_fmt(r['speedup'], 2)}×" if r.get("speedup") else "—"
    load = f"{r['load_avg_1m']:.1f}" if r.get("load_avg_1m") is not None else "—"
    return (
        f"{head} {_fmt(r['jax_per_s'])} | {r['obs_bytes_per_agent_step'] / 1e3:.0f} | {r['obs_GBps']:.2f} | "
        f"{100 * r['frac_memcpy']:.1f} | {r['compile_s']:.1f} | {_fmt(r.get('reference_per_s'))} | {speed} | {load} |"
    )


def markdown(result) -> str:
    s = result["settings"]
    intro = (f"memcpy {result['memcpy_GBps']:.1f} GB/s at the start (% of memcpy: against copies interleaved with each row's calls). "
             f"Bank: {s['bank']}; crop {s['crop']}³; {s['steps_per_call']} steps per call; load = 1-minute load average (2 cores).")
    return rows_markdown(result["machine"], intro, HEADER, result["rows"], format_row,
                         lambda r: f"{r['config']} {r['dtype']} k={r['frames']} n={r['agents']}")


def _series(rows, key):
    """Rows grouped by (config, dtype, frames), in first-seen order."""
    groups: dict = {}
    for r in rows:
        if "skipped" not in r and r.get(key) is not None:
            groups.setdefault((r["config"], r["dtype"], r["frames"]), []).append(r)
    return groups


def plot(result, path: Path) -> None:
    """Log-log agent-steps/s against agents, one panel per env (jaxmed solid, reference dashed), and
    the fraction of memcpy bandwidth reached."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _series(result["rows"], "jax_per_s")
    names = list(dict.fromkeys(cfg for cfg, _, _ in groups))
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(5 * (len(names) + 1), 4.8), squeeze=False)
    styles = {}
    for (cfg, dtype, frames), rr in groups.items():
        color = styles.setdefault((dtype, frames), f"C{len(styles)}")
        label = f"{dtype} k={frames}"
        ax = axes[0, names.index(cfg)]
        ax.plot([r["agents"] for r in rr], [r["jax_per_s"] for r in rr], "-o", color=color, ms=4, label=f"jaxmed {label}")
        ref = [(r["agents"], r["reference_per_s"]) for r in rr if r.get("reference_per_s")]
        if ref:
            ax.plot(*zip(*ref), "--x", color=color, alpha=0.7, label=f"reference {label}")
        axes[0, -1].plot([r["agents"] for r in rr], [100 * r["frac_memcpy"] for r in rr], "-", color=color, ms=4,
                         marker="osD^v"[names.index(cfg) % 5], label=f"{cfg} {label}")
    for ax, cfg in zip(axes[0], names):
        ax.set(xscale="log", yscale="log", xlabel="parallel agents", ylabel="agent-steps / s", title=cfg)
    axes[0, -1].set(xscale="log", xlabel="parallel agents", ylabel="% of memcpy (observation bytes written)",
                    title=f"observation bandwidth, memcpy {result['memcpy_GBps']:.1f} GB/s")
    for ax in axes[0]:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    m, s = result["machine"], result["settings"]
    save_figure(fig, path, f"jaxmed landmark env, random policy, crop {s['crop']}³ — {machine_line(m)}")


def parse_args(argv=None):
    p = parser(__doc__, "env_throughput.json", min_time=1.0, min_reps=3, max_reps=50, max_call_s=10.0, n_volumes=4, steps=32,
               quick_help="few agent counts, short timing (smoke test)")
    p.add_argument("--agents", type=int, nargs="+", default=[1, 16, 256, 1024, 4096, 8192], help="parallel agents n")
    p.add_argument("--dtypes", nargs="+", default=["float32", "uint8"], choices=["float32", "bfloat16", "uint8"])
    p.add_argument("--only", nargs="+", default=None, help="only these config names (e.g. single)")
    p.add_argument("--crop", type=int, default=45, help="crop edge D (voxels)")
    p.add_argument("--mem-fraction", type=float, default=0.25, help="skip agent counts whose observations exceed this fraction of memory")
    p.add_argument("--obs-copies", type=int, default=2, help="observation buffers assumed live at once (memory cap)")
    p.add_argument("--reference-agents", type=int, nargs="+", default=[1, 16, 256, 1024, 4096])
    p.add_argument("--reference-time", type=float, default=1.0, help="seconds of reference stepping per measurement "
                   "(interleaved with the jitted calls)")
    p.add_argument("--memcpy-mb", type=int, default=512)
    p.add_argument("--row-memcpy-mb", type=int, default=256, help="size of the memcpy sampled after each jitted call")
    args = p.parse_args(argv)
    if args.quick:
        args.agents = [a for a in args.agents if a <= 256][:3] or [16]
        args.min_time, args.min_reps, args.reference_time, args.memcpy_mb, args.row_memcpy_mb = 0.2, 2, 0.3, 128, 64
        args.steps, args.n_volumes = 8, 2
    return args


def main(argv=None) -> dict:
    return replot_or_run(run, parse_args(argv), plot, markdown)


if __name__ == "__main__":
    main()
