"""Box environment throughput: agent-steps/s of a random policy against the number of environments.

Two environments, on a bank of real anatomy (the AFIDs MNI template at 2 mm, ``--n-volumes`` copies,
pyramid factors 1, 2, 4, with the ``lateral_ventricles`` surface points of :mod:`jaxmed.data.anatomy`
as the target):

* **box** (:class:`jaxmed.envs.box.BoxEnv`, one agent per env): every step resamples ``k`` frames of
  ``G^3`` trilinear samples (8 gathers each) from the pyramid level each frame's box needs. Cases:
  ``G = 15, k = 1`` with and without the bank's packed pyramid (without it a frame is sampled at
  every candidate level and selected: 3x the gathers), and ``G = 30, k = 2`` (16x the samples).
* **corner pair** (:class:`jaxmed.envs.corner_pair.CornerPairEnv`, two agents per env): crops of
  ``D^3`` around each corner, coarse-to-fine over the three levels (the landmark env's machinery;
  its crops are not faster from a packed bank on CPU, see :mod:`jaxmed.ops.crop`).

Each measurement is ``jit(lax.scan(vmap(env.step)))`` over ``--steps`` steps with uniformly random
actions drawn inside the scan (auto-reset included, the observation carried so it is really
written); compilation is timed separately and excluded; one warm-up call; median of repeats. The
1-minute load average is recorded per row: on the shared 2-core machine other processes change the
figures by up to 2x.

Usage::

    python benchmarks/box_env_throughput.py [--quick] [--out benchmarks/results/box_env_throughput.json]

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
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt, machine_info, machine_line, replot, run_and_write, save_figure  # noqa: E402  (shared benchmark helpers)

from jaxmed.data import Landmarks, afids  # noqa: E402
from jaxmed.data.anatomy import structure_landmarks  # noqa: E402
from jaxmed.data.bank import build_bank  # noqa: E402
from jaxmed.envs.box import BoxEnv, BoxEnvConfig, BoxEnvParams  # noqa: E402
from jaxmed.envs.corner_pair import CornerPairConfig, CornerPairEnv, CornerPairParams  # noqa: E402

FACTORS = (1, 2, 4)
STRUCTURE = "lateral_ventricles"


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmarked env: ``kind`` box | corner-pair, its observation size (``G`` or ``D``), frames,
    levels and whether the bank holds the packed pyramid."""

    kind: str
    size: int
    frames: int
    levels: tuple[int, ...]
    packed: bool

    @property
    def label(self) -> str:
        what = f"G={self.size}" if self.kind == "box" else f"D={self.size}"
        return f"{self.kind} {what} k={self.frames} levels={len(self.levels)}{' packed' if self.packed else ''}"

    def env(self, labels):
        if self.kind == "box":
            return BoxEnv(BoxEnvConfig(structure=STRUCTURE, grid_size=self.size, frames=self.frames, levels=self.levels), labels=labels), BoxEnvParams()
        config = CornerPairConfig(structure=STRUCTURE, crop_size=self.size, frames=self.frames, levels=self.levels)
        return CornerPairEnv(config, labels=labels), CornerPairParams(terminate_at_target_mm=0.0)

    def obs_values(self) -> int:
        """Observation elements written per agent-step."""
        return self.frames * self.size**3


CASES = (
    Case("box", 15, 1, (0, 1, 2), True),  # configs/afids_box_dqn_cpu.yaml
    Case("box", 15, 1, (0, 1, 2), False),  # the same without the packed pyramid: 3 gathers per sample
    Case("box", 30, 2, (0, 1, 2), True),  # a larger grid and two frames: 16x the samples
    Case("corner-pair", 15, 2, (0, 1, 2), False),  # configs/afids_corner_pair_cpu.yaml
)


def make_bank(n_volumes: int, spacing: float, packed: bool):
    volume, landmarks = afids.load()
    points = structure_landmarks(volume, landmarks, [STRUCTURE])
    small = afids.load(spacing=spacing)[0]
    both = Landmarks(points.labels, points.positions)
    return build_bank([(small, both)] * n_volumes, factors=FACTORS, max_crop=15, dtype="uint8", packed=packed)


def make_rollout(env, n_envs: int, n_steps: int):
    """Jitted ``(key, state, obs, params, bank) -> (key, state, obs, episode ends)`` of ``n_steps``
    random-policy steps of ``n_envs`` envs (state and obs donated)."""
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))
    n_actions = env.num_actions

    def rollout(key, state, obs, params, bank):
        def body(carry, _):
            key, state, _, ends = carry
            key, k_act, k_step = jax.random.split(key, 3)
            actions = jax.random.randint(k_act, (n_envs, env.n_agents), 0, n_actions, dtype=jnp.int32)
            obs, state, _, terminated, truncated, _ = step(jax.random.split(k_step, n_envs), state, actions, params, bank)
            return (key, state, obs, ends + jnp.sum(terminated | truncated)), None

        (key, state, obs, ends), _ = jax.lax.scan(body, (key, state, obs, jnp.zeros((), jnp.int32)), None, length=n_steps)
        return key, state, obs, ends

    return jax.jit(rollout, donate_argnums=(1, 2))


def measure(case: Case, bank, args) -> list[dict]:
    env, params = case.env(bank.labels)
    rows, per_agent_step = [], None
    for n_envs in args.envs:
        agents = n_envs * env.n_agents
        row = {"case": case.label, "kind": case.kind, "size": case.size, "frames": case.frames, "levels": list(case.levels),
               "packed": case.packed, "n_envs": n_envs, "agents": agents}
        if per_agent_step is not None and per_agent_step * agents * args.steps > args.max_call_s:
            rows.append({**row, "skipped": f"time cap (predicted {per_agent_step * agents * args.steps:.1f} s per call)"})
            continue
        keys = jax.random.split(jax.random.key(0), n_envs + 1)
        obs, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None, None)))(keys[1:], params, bank)
        t0 = time.perf_counter()
        compiled = make_rollout(env, n_envs, args.steps).lower(keys[0], state, obs, params, bank).compile()
        row["compile_s"] = time.perf_counter() - t0
        carry = jax.block_until_ready(compiled(keys[0], state, obs, params, bank))[:3]  # warm-up
        times = []
        while len(times) < args.min_reps or (sum(times) < args.min_time and len(times) < args.max_reps):
            t = time.perf_counter()
            key, state, obs, _ = jax.block_until_ready(compiled(*carry, params, bank))
            times.append(time.perf_counter() - t)
            carry = (key, state, obs)
        del carry, state, obs
        row["load_avg_1m"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        row["seconds_per_call"] = float(np.median(times))
        row["agent_steps_per_s"] = agents * args.steps / row["seconds_per_call"]
        row["env_steps_per_s"] = n_envs * args.steps / row["seconds_per_call"]
        row["obs_values_per_agent_step"] = case.obs_values()
        per_agent_step = row["seconds_per_call"] / (agents * args.steps)
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def run(args) -> dict:
    info = machine_info()
    print(f"# machine: {info['cpu']}, {info['cores']} cores, {info['device']}, jax {info['jax']}", flush=True)
    banks = {p: make_bank(args.n_volumes, args.spacing, p) for p in (False, True)}
    print(HEADER, flush=True)
    rows = []
    for case in CASES:
        if args.only and case.kind not in args.only:
            continue
        rows += measure(case, banks[case.packed], args)
    bank = banks[False]
    info["load_avg_1m_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "machine": info,
        "settings": {
            "bank": f"AFIDs MNI152NLin2009cAsym T1 template at {args.spacing} mm, x{args.n_volumes} volumes, factors {FACTORS}, uint8, "
                    f"target {STRUCTURE} ({len([l for l in bank.labels if l.startswith(STRUCTURE)])} points)",
            "level0_shape": [int(s) for s in np.asarray(bank.shapes)[0, 0]],
            "steps_per_call": args.steps,
            "envs": args.envs,
            "policy": "uniform random actions; auto-reset",
            "max_call_s": args.max_call_s,
            "quick": args.quick,
        },
        "rows": rows,
    }


HEADER = ("| env | observation | frames | levels | packed bank | envs | agents | agent-steps/s | env-steps/s | compile s | load |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def format_row(r) -> str:
    obs = f"{r['size']}³ resampled" if r["kind"] == "box" else f"{r['size']}³ crops"
    head = f"| {r['kind']} | {obs} | {r['frames']} | {len(r['levels'])} | {'yes' if r['packed'] else 'no'} | {r['n_envs']} | {r['agents']} |"
    if "skipped" in r:
        return f"{head} skipped: {r['skipped']} | | | |"
    load = f"{r['load_avg_1m']:.1f}" if r.get("load_avg_1m") is not None else "—"
    return f"{head} {fmt(r['agent_steps_per_s'])} | {fmt(r['env_steps_per_s'])} | {r['compile_s']:.1f} | {load} |"


def markdown(result) -> str:
    m, s = result["machine"], result["settings"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['device']}; jax {m['jax']}; {m['date']}; commit {m['git_commit'] or 'n/a'}. "
             f"Bank: {s['bank']}; {s['steps_per_call']} steps per call; load = 1-minute load average.", "", HEADER]
    lines += [format_row(r) for r in result["rows"] if "skipped" not in r]
    skipped = [r for r in result["rows"] if "skipped" in r]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{r['case']} envs={r['n_envs']} ({r['skipped']})" for r in skipped)]
    return "\n".join(lines)


def plot(result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    groups: dict = {}
    for r in result["rows"]:
        if "skipped" not in r:
            groups.setdefault(r["case"], []).append(r)
    for i, (label, rr) in enumerate(groups.items()):
        ax = axes[0] if rr[0]["kind"] == "box" else axes[1]
        ax.plot([r["n_envs"] for r in rr], [r["agent_steps_per_s"] for r in rr], "-o", ms=4, color=f"C{i}", label=label)
    for ax, title in zip(axes, ("box env (1 agent per env)", "corner pair (2 agents per env)")):
        ax.set(xscale="log", yscale="log", xlabel="parallel environments", ylabel="agent-steps / s", title=title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path, f"jaxmed box envs, random policy, AFIDs bank — {machine_line(result['machine'])}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few env counts, short timing (smoke test)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "box_env_throughput.json")
    p.add_argument("--envs", type=int, nargs="+", default=[1, 16, 256, 1024, 4096], help="parallel environments")
    p.add_argument("--only", nargs="+", default=None, choices=["box", "corner-pair"])
    p.add_argument("--steps", type=int, default=16, help="steps per jitted lax.scan call")
    p.add_argument("--spacing", type=float, default=2.0, help="template resampling (mm)")
    p.add_argument("--n-volumes", type=int, default=4)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per measurement")
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument("--max-reps", type=int, default=30)
    p.add_argument("--max-call-s", type=float, default=15.0, help="skip env counts predicted to take longer per call")
    p.add_argument("--replot", type=Path, default=None, help="only redraw the PNG and table from this JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.envs = [e for e in args.envs if e <= 16] or [1]
        args.min_time, args.min_reps, args.steps, args.n_volumes = 0.2, 2, 4, 2
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.replot is not None:
        return replot(args.replot, plot, markdown)
    return run_and_write(run, args, plot, markdown)


if __name__ == "__main__":
    main()
