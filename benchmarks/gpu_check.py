"""Accelerator check: the stages of ``benchmarks/gpu_check.sh``, one sub-command each.

Every stage writes ``OUT/<stage>.json`` (rewritten after each measured point, so a stage killed by its
time limit keeps what it measured) and ``report`` turns them into ``OUT/gpu_rows.md`` (BENCHMARKS.md
rows marked with the device name, the date and the commit) and prints a summary table.

Stages::

    facts     devices, versions, device copy bandwidth (GB/s, read + write of a large uint8 array)
    tests     (run by the shell script: pytest under JAX_PLATFORMS=cuda; ``tests-summary`` parses its log)
    env       landmark env, random policy, uint8 bank, 45^3 crops x 4 frames: single level and multi-scale
              (3 levels) at 4,096 and 65,536 envs; agent-steps/s and the fraction of the copy ceiling
    train     DQN (patch trunk, configs/afids_dqn_cpu.yaml) and PPO (configs/afids_ppo_cpu.yaml) training
              programs at 2,048 envs: env-steps/s and updates/s of the whole program
    network3d the published Network3D Q-network (configs/afids_dqn_gpu.yaml: 256 envs, batch 48, 4
              updates per step) with network.dtype float32 vs bfloat16: updates/s
    report    gpu_rows.md + the summary table

``--dry-run`` runs every stage at tiny sizes (a few environments, short chunks) on whatever device JAX
has, e.g. the CPU, to check that every stage runs and writes its outputs.

The bank of a stage is built once (synthetic AFIDs subjects, ``--n-subjects`` of them: throughput
does not depend on how many volumes the bank holds, the build time does) and shared by its points.
Timing is :func:`jaxmed.bench.measure_env` / the training measure of :mod:`jaxmed.bench` (compilation
excluded; one warm-up chunk).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: bytes one agent-step writes (4 frames of 45^3 uint8 voxels)
OBS_BYTES = 4 * 45**3
#: the H200 device copy bandwidth this check compares against (bytes/s; measured: read + write)
CEILING_COPY_BPS = 4.3e12
#: targets of BENCHMARKS.md, "Accelerator"
TARGETS = {"single": 5e6, "multi_scale": 3e6, "network3d_updates_per_s": 3 * 19.8}
#: what the same stages measured before (H200, jax 0.11.2), for the ratio column
BEFORE = {("env", "single", 4096): 1.42e6, ("env", "single", 65536): 0.85e6,
          ("env", "multi_scale", 4096): 0.34e6, ("env", "multi_scale", 65536): 0.51e6,
          ("train", "dqn", "env"): 2.44e6, ("train", "dqn", "upd"): 1193.0, ("train", "ppo", "env"): 0.70e6,
          ("network3d", "float32", "upd"): 19.8}


# ------------------------------------------------------------------ helpers


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def commit() -> str:
    """The commit measured: ``$GPU_CHECK_COMMIT``, else the file ``.gpu_data/commit`` (write it before
    copying a tree without ``.git``), else git."""
    if os.environ.get("GPU_CHECK_COMMIT"):
        return os.environ["GPU_CHECK_COMMIT"]
    try:
        text = (ROOT / ".gpu_data" / "commit").read_text().strip()
        if text:
            return text
    except OSError:
        pass
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name() -> str:
    import jax

    d = jax.devices()[0]
    return f"{getattr(d, 'device_kind', d.platform)}" if d.platform != "cpu" else "CPU"


def stage_record(stage: str, args) -> dict:
    import jax

    return {"stage": stage, "dry_run": args.dry_run, "device": device_name(), "platform": jax.devices()[0].platform,
            "jax": jax.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit(), "points": []}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ facts


def copy_bandwidth(nbytes: int, reps: int = 5) -> float:
    """Device bytes/s of ``x + 1`` on a uint8 array of ``nbytes`` (read + write counted)."""
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda x: x + jnp.uint8(1), donate_argnums=0)
    x = jnp.zeros((nbytes,), jnp.uint8)
    x = jax.block_until_ready(f(x))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        x = jax.block_until_ready(f(x))
        times.append(time.perf_counter() - t)
    return 2 * nbytes / sorted(times)[len(times) // 2]


def stage_facts(args) -> None:
    import jax

    rec = stage_record("facts", args)
    rec["devices"] = [str(d) for d in jax.devices()]
    rec["device_count"] = jax.device_count()
    try:
        rec["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        rec["nvidia_smi"] = f"not available ({type(e).__name__})"
    versions = {}
    for mod in ("jax", "jaxlib", "flax", "optax", "chex", "rlax", "distrax", "nibabel", "numpy", "scipy", "tensorboardX"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as e:  # missing or broken package: say which
            versions[mod] = f"ERROR {type(e).__name__}: {e}"[:200]
    rec["versions"] = versions
    rec["python"] = sys.version.split()[0]
    rec["copy_GBps"] = copy_bandwidth((1 << 24) if args.dry_run else (1 << 31)) / 1e9  # 2 GiB on the device
    write_json(args.out / "facts.json", rec)
    log(f"devices {rec['devices']}; copy {rec['copy_GBps']:.0f} GB/s; {versions}")


def stage_tests_summary(args) -> None:
    """Parse pytest's ``-v -rfEs`` log into tests.json (counts, failed ids, skip reasons)."""
    import re

    rec = {"stage": "tests", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": commit()}
    text = (args.out / "tests.log").read_text(errors="replace") if (args.out / "tests.log").exists() else ""
    tail = [line for line in text.splitlines() if line.strip()][-1:] or [""]
    rec["summary"] = tail[0].strip("= ")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|xfailed|deselected)", rec["summary"])}
    rec["counts"] = counts
    # the short summary at the end, or (killed by the time limit) the per-test lines of -v
    rec["failed"] = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M))
                           | set(re.findall(r"(?:FAILED|ERROR) (tests/\S+::\S+)", text)))
    if not counts:
        counts = {k.lower(): len(re.findall(rf"\] {k} tests/", text)) for k in ("PASSED", "FAILED", "SKIPPED", "ERROR")}
        rec["counts"] = {k: v for k, v in counts.items() if v}
    rec["skipped"] = sorted(set(re.findall(r"^SKIPPED \[\d+\] (.*)$", text, re.M)))
    rec["exit_code"] = int(args.exit_code) if args.exit_code is not None else None
    rec["timed_out"] = rec["exit_code"] in (124, 137)
    write_json(args.out / "tests.json", rec)
    log(f"tests: {rec['summary']} (exit {rec['exit_code']})")


# ------------------------------------------------------------------ env throughput


def stage_env(args) -> None:
    import jax

    from jaxmed import experiment as ex
    from jaxmed.bench import load_grid, measure_env, point_config
    from jaxmed.config import load_yaml
    from jaxmed.ops import pack_levels

    rec = stage_record("env", args)
    rec["obs_bytes_per_agent_step"] = OBS_BYTES
    facts = read_json(args.out / "facts.json") or {}
    rec["copy_GBps_measured"] = facts.get("copy_GBps")
    rec["ceiling_agent_steps_per_s"] = CEILING_COPY_BPS / OBS_BYTES
    grid = load_yaml(str(ROOT / "benchmarks/grids/landmark_env.yaml"))
    grid["overrides"] = list(grid["overrides"]) + [f"data.n_train={args.n_subjects}", "data.dtype=uint8"]
    grid = load_grid(grid)
    small, large = (4, 16) if args.dry_run else (4096, 65536)
    steps = 4 if args.dry_run else 32
    min_time = 0.0 if args.dry_run else 1.0
    # (variant, n_envs, mode), most important first (a stage cut by its time limit keeps those):
    # mode "blocked" steps the envs in lax.map blocks of `small`; "packed" renders the multi-scale
    # observation with one row gather from the packed pyramid (VolumeBank.packed) instead of cropping
    # every level and selecting (what the landmark env's bank has by default)
    plan = [("single", small, ""), ("multi_scale", small, ""), ("single", large, ""), ("multi_scale", large, ""),
            ("single", large, "blocked"), ("multi_scale", small, "packed"), ("multi_scale", large, "packed")]
    cfgs = {v: point_config(grid, {"variant": v, "dtype": "uint8"}) for v in ("single", "multi_scale")}
    t = time.perf_counter()
    bank, _, _ = ex.make_bank(cfgs["multi_scale"], "train", cfgs["multi_scale"].data.n_train)  # one bank for both
    rec["bank_build_s"] = time.perf_counter() - t
    rec["bank_packed"] = bank.packed is not None
    log(f"bank: {args.n_subjects} subjects in {rec['bank_build_s']:.1f} s (packed: {rec['bank_packed']})")
    envs = {v: ex.make_env(c, bank.labels)[:2] for v, c in cfgs.items()}
    for variant, n, mode in plan:
        cfg = cfgs[variant]
        env, params = envs[variant]
        row = {"variant": variant + (f"_{mode}" if mode else ""), "n_envs": n, "levels": list(cfg.env["levels"]),
               "crop": cfg.env["crop_size"], "frames": cfg.env["frames"]}
        try:
            if mode == "blocked":
                row.update(measure_chunked(env, params, bank, n, small, steps, min_time))
            else:
                b = bank.replace(packed=pack_levels(bank.levels)) if mode == "packed" else bank
                row.update(measure_env(env, params, b, n, jax.local_devices()[:1], steps, min_time))
            row["frac_ceiling"] = row["env_agent_steps_per_s"] / rec["ceiling_agent_steps_per_s"]
            row["output_GBps"] = row["env_agent_steps_per_s"] * OBS_BYTES / 1e9
        except Exception as e:  # e.g. out of memory at the largest n: record, go on
            row["error"] = f"{type(e).__name__}: {e}"[:400]
        rec["points"].append(row)
        write_json(args.out / "env.json", rec)
        log(f"env {row['variant']} n={n}: {row.get('env_agent_steps_per_s', row.get('error'))}")


def measure_chunked(env, params, bank, n_envs: int, chunk: int, n_steps: int, min_time: float) -> dict:
    """Like :func:`jaxmed.bench.measure_env` on one device, but every step maps the vmapped
    ``env.step`` over blocks of ``chunk`` environments (``lax.map``) instead of vmapping all
    ``n_envs`` at once: does a bounded working set remove the fall-off at large ``n_envs``?"""
    import jax
    import jax.numpy as jnp

    from jaxmed.bench import compile_timed, reset_batch, timed

    blocks = n_envs // chunk
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))
    split = lambda t: jax.tree.map(lambda x: x.reshape((blocks, chunk) + x.shape[1:]), t)  # noqa: E731

    def rollout(key, state, obs, bank):
        def body(carry, _):
            key, state, _ = carry
            key, k_act, k_step = jax.random.split(key, 3)
            actions = jax.random.randint(k_act, (blocks, chunk, env.n_agents), 0, env.num_actions, dtype=jnp.int32)
            keys = jax.random.split(k_step, n_envs).reshape(blocks, chunk)
            obs, state, *_ = jax.lax.map(lambda a: step(a[0], a[1], a[2], params, bank), (keys, state, actions))
            return (key, state, obs), None

        (key, state, obs), _ = jax.lax.scan(body, (key, state, obs), None, length=n_steps)
        return key, state, obs

    key, state, obs = reset_batch(env, n_envs, params, bank, jax.random.key(1))
    carry = [key, split(state), split(obs)]
    compiled, compile_s = compile_timed(jax.jit(rollout, donate_argnums=(1, 2)), *carry, bank)

    def call():
        carry[:] = jax.block_until_ready(compiled(*carry, bank))

    sec, reps = timed(call, min_time)
    return {"env_agent_steps_per_s": n_steps * n_envs * env.n_agents / sec, "env_seconds_per_call": sec,
            "env_repeats": reps, "env_compile_s": compile_s, "chunk": chunk}


# ------------------------------------------------------------------ training programs


def _train_point(cfg, bank, label: str, chunks: int) -> dict:
    """Training throughput of ``cfg`` on ``bank`` (1 warm-up chunk, then ``chunks`` timed)."""
    import jax

    from jaxmed import bench
    from jaxmed import experiment as ex

    env, params, _ = ex.make_env(cfg, bank.labels)
    out = {"label": label, "learner": cfg.train.learner, "n_envs": cfg.learner.n_envs,
           "trunk": cfg.network.get("trunk"), "dtype": cfg.network.get("dtype", "float32")}
    out.update(bench.measure_train(cfg, env, params, bank, jax.local_devices()[:1], False, chunks))
    return out


def _config(base: str, overrides: list[str]):
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.experiment import ExperimentConfig

    return ExperimentConfig.from_dict(apply_overrides(load_yaml(str(ROOT / base)), overrides), base)


def _run_train_points(args, stage: str, specs, chunks: int = 2) -> None:
    """``specs``: ``(label, config path, overrides)``; banks are shared between equal data sections;
    ``chunks`` timed chunks per point after the warm-up chunk."""
    from jaxmed import experiment as ex

    rec = stage_record(stage, args)
    banks: dict[str, object] = {}
    chunks = 1 if args.dry_run else chunks
    for label, base, overrides in specs:
        row: dict = {"label": label, "config": base, "overrides": overrides}
        try:
            cfg = _config(base, overrides)
            key = repr(cfg.data) + json.dumps(cfg.env, sort_keys=True, default=str)
            if key not in banks:
                t = time.perf_counter()
                banks[key] = ex.make_bank(cfg, "train", cfg.data.n_train)[0]
                log(f"{stage}: bank for {label} in {time.perf_counter() - t:.1f} s")
            row.update(_train_point(cfg, banks[key], label, chunks))
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"[:400]
        rec["points"].append(row)
        write_json(args.out / f"{stage}.json", rec)
        log(f"{stage} {label}: env-steps/s {row.get('train_env_steps_per_s')}, updates/s {row.get('updates_per_s')}"
            f"{', ERROR ' + row['error'] if 'error' in row else ''}")


def stage_train(args) -> None:
    n = 8 if args.dry_run else 2048
    common = [f"data.n_train={args.n_subjects}"]
    dqn = common + [f"dqn.n_envs={n}"] + (["dqn.chunk_steps=4", "dqn.batch_size=16", "dqn.learning_starts=16"] if args.dry_run
                                          else ["dqn.learning_starts=128"])
    ppo = common + [f"ppo.n_envs={n}"] + (["ppo.num_steps=4", "ppo.updates_per_chunk=1", "ppo.num_minibatches=2", "ppo.update_epochs=1"]
                                          if args.dry_run else [])
    _run_train_points(args, "train", [("dqn_patch", "configs/afids_dqn_cpu.yaml", dqn),
                                      ("ppo_patch", "configs/afids_ppo_cpu.yaml", ppo)])


def stage_network3d(args) -> None:
    # the bank at 2 mm (the update does not depend on it; 1 mm subjects take far longer to synthesise)
    if args.dry_run:  # Network3D on a CPU: a handful of tiny updates on 35^3 crops
        size = ["dqn.n_envs=2", "dqn.chunk_steps=2", "dqn.batch_size=2", "dqn.learning_starts=2", "dqn.updates_per_step=1",
                "env.crop_size=35", "data.spacing=3.0"]
    else:
        size = ["dqn.chunk_steps=8", "dqn.learning_starts=48", "data.spacing=2.0"]  # 32 updates per chunk (4 per step)
    common = [f"data.n_train={min(args.n_subjects, 2)}"] + size
    _run_train_points(args, "network3d", [(f"network3d_{dt}", "configs/afids_dqn_gpu.yaml", common + [f"network.dtype={dt}"])
                                          for dt in ("float32", "bfloat16")], chunks=1)


# ------------------------------------------------------------------ report


def _m(x) -> str:
    if x is None:
        return "—"
    x = float(x)
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.3g}"


def stage_report(args) -> None:
    out = args.out
    facts, tests, env, train, n3d = (read_json(out / f"{s}.json") or {} for s in ("facts", "tests", "env", "train", "network3d"))
    any_rec = next((r for r in (facts, env, train, n3d) if r), {})
    device = any_rec.get("device", "unknown device")
    date = (any_rec.get("date") or "")[:10]
    sha = any_rec.get("commit") or commit()
    tag = f"{device}, {date}, `{sha}`" + (" (dry run)" if any_rec.get("dry_run") else "")
    rows = ["| what | measured | before | target | run |", "|---|---|---|---|---|"]
    summary = []

    def add(what, value, before=None, target=None, unit=""):
        rows.append(f"| {what} | {_m(value)}{unit} | {_m(before)}{unit if before else ''} | {target or '—'} | {tag} |")
        summary.append((what, _m(value) + unit, "" if before is None or value is None else f"{float(value) / before:.2f}x"))

    if tests:
        c = tests.get("counts", {})
        what = f"GPU tests ({c.get('passed', 0)} passed, {c.get('failed', 0)} failed, {c.get('skipped', 0)} skipped)"
        said = "killed at its time limit" if tests.get("timed_out") else tests.get("summary", "")
        failed = ", ".join(f"`{t}`" for t in tests.get("failed", [])[:12])
        rows.append(f"| {what} | {said}{'; failed: ' + failed if failed else ''} | 8 failed | 0 failed | {tag} |")
        summary.append(("tests", f"{c.get('passed', 0)} passed, {c.get('failed', 0)} failed"
                        + (" (time limit)" if tests.get("timed_out") else ""), ""))
    if facts.get("copy_GBps"):
        add("device copy bandwidth (GB/s, read + write)", facts["copy_GBps"], None, None)
    for p in env.get("points", []):
        variant = p["variant"].replace("_blocked", "").replace("_packed", "")
        key = ("env", variant, p["n_envs"])
        target = f"≥ {_m(TARGETS[variant])}"
        how = f" in blocks of {p['chunk']:,}" if p.get("chunk") else ""
        how += ", from the packed pyramid" if p["variant"].endswith("_packed") else ""
        label = f"landmark env {variant.replace('_', '-')} uint8 45³×4, {p['n_envs']:,} envs{how} (agent-steps/s)"
        if "error" in p:
            rows.append(f"| {label} | error: {p['error'][:80]} | {_m(BEFORE.get(key))} | {target} | {tag} |")
            summary.append((label, "error", ""))
            continue
        add(label + f"; {100 * p['frac_ceiling']:.0f} % of the copy ceiling", p["env_agent_steps_per_s"], BEFORE.get(key), target)
    for p in train.get("points", []):
        kind = "dqn" if p["label"].startswith("dqn") else "ppo"
        label = f"{kind.upper()} patch trunk, {p.get('n_envs', '?')} envs"
        if "error" in p:
            rows.append(f"| {label} | error: {p['error'][:80]} | | | {tag} |")
            summary.append((label, "error", ""))
            continue
        add(label + " (env-steps/s)", p["train_env_steps_per_s"], BEFORE.get(("train", kind, "env")))
        if p.get("updates_per_s"):
            add(label + " (updates/s)", p["updates_per_s"], BEFORE.get(("train", kind, "upd")))
    for p in n3d.get("points", []):
        dt = p["label"].split("_")[-1]
        label = f"Network3D afids_dqn_gpu {dt} (updates/s)"
        if "error" in p:
            rows.append(f"| {label} | error: {p['error'][:80]} | | | {tag} |")
            summary.append((label, "error", ""))
            continue
        add(label, p.get("updates_per_s"), BEFORE.get(("network3d", "float32", "upd")), f"≥ {TARGETS['network3d_updates_per_s']:.0f}")
    text = f"Accelerator check rows ({tag}); produced by `benchmarks/gpu_check.sh`.\n\n" + "\n".join(rows) + "\n"
    (out / "gpu_rows.md").write_text(text)
    width = max((len(s[0]) for s in summary), default=10)
    print("\n" + "=" * 30 + f" summary: {tag}")
    print(f"{'what':<{width}}  {'measured':>14}  measured / before")
    for what, value, ratio in summary:
        print(f"{what:<{width}}  {value:>14}  {ratio}")
    print(f"\nwrote {out / 'gpu_rows.md'}")


STAGES = {"facts": stage_facts, "tests-summary": stage_tests_summary, "env": stage_env, "train": stage_train,
          "network3d": stage_network3d, "report": stage_report}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    p.add_argument("--dry-run", action="store_true", help="tiny sizes (any device, e.g. the CPU)")
    p.add_argument("--n-subjects", type=int, default=2, help="synthetic AFIDs subjects in each stage's bank")
    p.add_argument("--exit-code", help="tests-summary: pytest's exit status")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    STAGES[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
