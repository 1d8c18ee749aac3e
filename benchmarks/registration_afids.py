"""Rigid registration on AFIDs held-out pairs: DQN agent, agent + look-ahead, optax baseline; env throughput.

For each config (default: mono-modal ``configs/afids_registration_dqn_cpu.yaml`` and the multimodal
variant ``configs/variants/afids_registration_multimodal_cpu.yaml``):

1. builds the train and held-out test banks (synthetic subjects from the MNI152NLin2009cAsym template,
   disjoint seeds) and trains the DQN agent (:func:`jaxmed.agents.dqn.make_train`, code unchanged)
   for at most ``--budget-s`` seconds of wall time (or the config's chunks);
2. evaluates on the test pairs (:meth:`RegistrationEnv.eval_states`: ``eval_starts`` seeded ground-truth
   perturbations per test subject, the estimate starting at the identity): TRE before, after the
   greedy agent, after the agent with look-ahead (:mod:`jaxmed.agents.lookahead`), and after the optax
   baseline (:mod:`jaxmed.registration_baseline`, NCC and MI) on exactly the same pairs; mean, median,
   90th percentile, success rate (TRE < 2 mm), rotation / translation errors and seconds per pair
   (compilation excluded: every method is run once before it is timed);
3. measures the registration env's throughput (random actions, ``step`` with auto-reset, one jitted
   scan) against the number of parallel envs.

    python benchmarks/registration_afids.py [--configs A.yaml B.yaml] [--budget-s 600] [--out PATH]

Writes ``benchmarks/results/registration_afids.json`` and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import compile_dqn, machine_info  # noqa: E402

from jaxmed import experiment as ex  # noqa: E402
from jaxmed.config import apply_overrides, load_yaml  # noqa: E402
from jaxmed.ops.crop import pack_levels  # noqa: E402

DEFAULT_CONFIGS = ("configs/afids_registration_dqn_cpu.yaml", "configs/variants/afids_registration_multimodal_cpu.yaml")


def tre_stats(tre, rot=None, trans=None, seconds=None) -> dict:
    """Summary of per-pair errors: TRE mean / median / p90 / success (< 2 mm) and the optional extras."""
    tre = np.asarray(tre, np.float64).reshape(-1)
    out = {"n": int(tre.size), "mean": float(tre.mean()), "median": float(np.median(tre)), "p90": float(np.percentile(tre, 90)),
           "success_2mm": float((tre < 2.0).mean())}
    if rot is not None:
        out["rotation_deg_mean"] = float(np.mean(rot))
    if trans is not None:
        out["translation_mm_mean"] = float(np.mean(trans))
    if seconds is not None:
        out["seconds_per_pair"] = float(seconds)
    return out


def train_agent(cfg, bank, budget_s: float, log=print):
    """Train the DQN agent of ``cfg`` on ``bank`` for at most ``budget_s`` seconds (whole chunks)."""
    _, _, network, rs, chunk, compile_s = compile_dqn(cfg, bank)
    t1, chunks, history = time.perf_counter(), 0, []
    while chunks < cfg.train.chunks and time.perf_counter() - t1 < budget_s:
        rs, m = chunk(rs, bank)
        chunks += 1
        m = {k: float(v) for k, v in m.items()}
        history.append(m)
        if chunks % 5 == 0:
            log(f"  chunk {chunks}: {time.perf_counter() - t1:.0f} s, final TRE {m.get('final_tre_mm', float('nan')):.2f} mm, "
                f"loss {m['loss']:.3f}, eps {m['epsilon']:.2f}")
    jax.block_until_ready(rs.params)
    train_s = time.perf_counter() - t1
    return network, rs.params, {"chunks": chunks, "env_steps": chunks * cfg.dqn.env_steps_per_chunk, "train_wall_s": train_s,
                                "compile_s": compile_s, "last_metrics": history[-1] if history else {}}


def timed(fn, *args):
    """``(result, seconds)`` of ``fn(*args)`` after one untimed warm-up call (compilation excluded)."""
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def evaluate_agent(env, eval_params, network, net_params, bank, states, lookahead=((3, 2),)) -> dict:
    from jaxmed.agents.dqn import greedy_action
    from jaxmed.agents.lookahead import lookahead_rollout
    from jaxmed.agents.rollout import greedy_rollout

    n = int(np.asarray(states.volume).shape[0])
    before = jax.vmap(env.eval_metrics, in_axes=(0, None, None))(states, eval_params, bank)
    out = {"before": tre_stats(before["tre_mm"], before["rotation_error_deg"], before["translation_error_mm"])}
    greedy = jax.jit(lambda p, b, s: greedy_rollout(lambda o: greedy_action(network, p, o), env, eval_params, b, s))
    res, sec = timed(greedy, net_params, bank, states)
    m = res["metrics"]
    out["agent"] = tre_stats(m["tre_mm"], m["rotation_error_deg"], m["translation_error_mm"], sec / n)
    out["agent"]["steps_mean"] = float(np.mean(res["steps"]))
    per_pair = {"before": np.asarray(before["tre_mm"]).reshape(-1).tolist(), "agent": np.asarray(m["tre_mm"]).reshape(-1).tolist()}
    for k, d in lookahead:
        fn = jax.jit(lambda p, b, s, k=k, d=d: lookahead_rollout(network, p, env, eval_params, b, s, top_k=k, depth=d))
        res, sec = timed(fn, net_params, bank, states)
        m = res["metrics"]
        name = f"agent+lookahead(k={k},d={d})"
        out[name] = tre_stats(m["tre_mm"], m["rotation_error_deg"], m["translation_error_mm"], sec / n)
        out[name]["steps_mean"] = float(np.mean(res["steps"]))
        per_pair[name] = np.asarray(m["tre_mm"]).reshape(-1).tolist()
    return out, per_pair


def evaluate_baseline(env, bank, states, losses=("ncc", "mi")) -> tuple[dict, dict]:
    from jaxmed.ops.rigid import rigid_matrix
    from jaxmed.registration_baseline import BaselineConfig, pair_from_env, register_volumes, tre_of_matrix

    n = int(np.asarray(states.volume).shape[0])
    pad = tuple(int(s) for s in np.asarray(bank.shapes[0]).max(axis=0))
    out, per_pair = {}, {}
    for loss in losses:
        cfg = BaselineConfig(loss=loss)
        tres, rots, trans, secs = [], [], [], []
        for i in range(n):
            s = jax.tree.map(lambda x: x[i], states)
            fixed, moving, c = pair_from_env(env, bank, s)
            if i == 0:
                register_volumes(fixed, moving, cfg, centre=c, pad_to=pad)  # compile once, untimed
            r = register_volumes(fixed, moving, cfg, centre=c, pad_to=pad)
            gt = np.asarray(rigid_matrix(s.gt, c), np.float64)
            lms = np.asarray(bank.landmarks_world[int(s.volume)])[[bank.label_index(l) for l in env.required_labels]]
            tres.append(tre_of_matrix(r.matrix, gt, lms))
            rel = gt[:3, :3].T @ r.matrix[:3, :3]
            rots.append(float(np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1)))))
            trans.append(float(np.linalg.norm(r.matrix[:3, :3] @ c + r.matrix[:3, 3] - gt[:3, :3] @ c - gt[:3, 3])))
            secs.append(r.seconds)
            if (i + 1) % 8 == 0:
                print(f"  optax-{loss}: {i + 1}/{n} pairs, TRE mean so far {np.mean(tres):.2f} mm, {np.mean(secs):.1f} s/pair", flush=True)
        out[f"optax-{loss}"] = tre_stats(tres, rots, trans, float(np.mean(secs)))
        per_pair[f"optax-{loss}"] = tres
    return out, per_pair


def env_throughput(env, params, bank, n_envs_list=(1, 16, 64, 256, 1024), steps: int = 100) -> list[dict]:
    """Random-policy env steps per second (``step`` with auto-reset and observation, one jitted scan)."""
    rows = []
    v_reset = jax.vmap(env.reset, in_axes=(0, None, None))
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))
    for n in n_envs_list:
        @jax.jit
        def run(key, bank, n=n):
            _, state = v_reset(jax.random.split(key, n), params, bank)

            def body(carry, key):
                state, acc = carry
                k_act, k_env = jax.random.split(key)
                action = jax.random.randint(k_act, (n, 1), 0, env.num_actions)
                obs, state, reward, *_ = v_step(jax.random.split(k_env, n), state, action, params, bank)
                return (state, acc + obs[:, 0, 1, 0, 0, 0].sum() + reward.sum()), None

            (state, acc), _ = jax.lax.scan(body, (state, jnp.zeros(())), jax.random.split(key, steps))
            return acc

        _, sec = timed(run, jax.random.key(0), bank)
        rows.append({"n_envs": n, "steps_per_s": n * steps / sec, "seconds": sec})
        print(f"  env throughput: {n} envs: {n * steps / sec:,.0f} env-steps/s")
    return rows


def run_config(path: str, budget_s: float, overrides=(), baseline: bool = True, params_dir=None, reuse: bool = False,
               lookahead=((3, 2),)) -> dict:
    cfg = ex.ExperimentConfig.from_dict(apply_overrides(load_yaml(path), list(overrides)), path)
    print(f"\n== {path}: building banks", flush=True)
    train_bank, _, train_bank_s = ex.make_bank(cfg, "train", cfg.data.n_train)
    test_bank, _, _ = ex.make_bank(cfg, "test", cfg.data.n_test)
    if len(train_bank.factors) > 1:  # one gather per sample whatever the level (RegistrationEnv.render)
        train_bank, test_bank = (b.replace(packed=pack_levels(b.levels)) for b in (train_bank, test_bank))
    print(f"   {train_bank.n_volumes} train / {test_bank.n_volumes} test subjects ({train_bank_s:.0f} s); "
          f"training <= {budget_s:.0f} s", flush=True)
    saved = None if params_dir is None else Path(params_dir) / (Path(path).stem + "".join("_" + o.replace("=", "-") for o in overrides))
    if saved is not None and reuse and saved.with_suffix(".msgpack").exists():
        from flax import serialization

        env0, _, _ = ex.make_env(cfg, train_bank.labels)
        network = ex.make_network(cfg, env0)
        template = network.init(jax.random.key(0), ex.dummy_observation(cfg, env0))
        net_params = serialization.from_bytes(template, saved.with_suffix(".msgpack").read_bytes())
        train = json.loads(saved.with_suffix(".json").read_text())
        print(f"   reusing the network trained earlier: {saved}.msgpack", flush=True)
    else:
        network, net_params, train = train_agent(cfg, train_bank, budget_s)
        if saved is not None:
            from flax import serialization

            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.with_suffix(".msgpack").write_bytes(serialization.to_bytes(jax.device_get(net_params)))
            saved.with_suffix(".json").write_text(json.dumps(train, default=float))
    env, params, eval_params = ex.make_env(cfg, test_bank.labels)
    states = env.eval_states(eval_params, test_bank, cfg.eval_starts, seed=cfg.train.seed + 1)
    results, per_pair = evaluate_agent(env, eval_params, network, net_params, test_bank, states, lookahead)
    # the same protocol on the training subjects: the generalisation gap
    train_states = env.eval_states(eval_params, train_bank, cfg.eval_starts, seed=cfg.train.seed + 1)
    seen, _ = evaluate_agent(env, eval_params, network, net_params, train_bank, train_states, lookahead=())
    results["agent (training subjects)"] = seen["agent"]
    print(f"  agent: TRE {results['before']['mean']:.2f} -> {results['agent']['mean']:.2f} mm (mean)", flush=True)
    if baseline:
        base, base_pairs = evaluate_baseline(env, test_bank, states, ("ncc", "mi"))
        results.update(base)
        per_pair.update(base_pairs)
    return {"config": path, "overrides": list(overrides), "env": cfg.env, "train": train, "results": results, "per_pair_tre_mm": per_pair,
            "n_pairs": int(np.asarray(states.volume).shape[0]), "eval_max_steps": int(eval_params.max_steps),
            "throughput": None, "_env": env, "_params": params, "_bank": train_bank}


def markdown(result: dict) -> str:
    lines = []
    for run in result["runs"]:
        t = run["train"]
        lines.append(f"\n**{run['config']}** (remap {run['env'].get('remap', 'none')}): {run['n_pairs']} held-out pairs, "
                     f"trained {t['env_steps']:,} env steps in {t['train_wall_s']:.0f} s (+{t['compile_s']:.0f} s compile)\n")
        lines.append("| method | TRE mean (mm) | median | p90 | < 2 mm | rotation err (°) | translation err (mm) | s / pair |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for name, s in run["results"].items():
            sec = f"{s['seconds_per_pair']:.3f}" if "seconds_per_pair" in s else "—"
            lines.append(f"| {name} | {s['mean']:.2f} | {s['median']:.2f} | {s['p90']:.2f} | {100 * s['success_2mm']:.0f} % | "
                         f"{s.get('rotation_deg_mean', float('nan')):.2f} | {s.get('translation_mm_mean', float('nan')):.2f} | {sec} |")
    if result.get("throughput"):
        lines.append("\n| parallel envs | env-steps/s |\n|---|---|")
        lines += [f"| {r['n_envs']} | {r['steps_per_s']:,.0f} |" for r in result["throughput"]]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    p.add_argument("--budget-s", type=float, default=300.0, help="training wall-time budget per config (s)")
    p.add_argument("--set", nargs="*", default=[], help="section.key=value overrides for every config")
    p.add_argument("--no-baseline", action="store_true", help="skip the optax baseline")
    p.add_argument("--params-dir", type=Path, help="save the trained networks here (msgpack + training summary)")
    p.add_argument("--reuse", action="store_true", help="with --params-dir: evaluate networks saved there instead of training")
    p.add_argument("--lookahead", type=int, nargs="*", default=[3, 2], help="look-ahead settings to evaluate: K D [K D ...]")
    p.add_argument("--n-envs", type=int, nargs="*", default=[1, 16, 64, 256, 1024], help="env throughput sizes (none: skip)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "registration_afids.json")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    result = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d"), "budget_s": args.budget_s, "runs": []}
    for path in args.configs:
        pairs = tuple(zip(args.lookahead[::2], args.lookahead[1::2]))
        run = run_config(path, args.budget_s, args.set, baseline=not args.no_baseline, params_dir=args.params_dir, reuse=args.reuse,
                         lookahead=pairs)
        env, params, bank = run.pop("_env"), run.pop("_params"), run.pop("_bank")
        if args.n_envs and result.get("throughput") is None:
            result["throughput"] = env_throughput(env, params, bank, tuple(args.n_envs))
        result["runs"].append(run)
        print(markdown({"runs": [run]}), flush=True)
    result["wall_seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float))
    print(markdown(result))
    print(f"\nwrote {args.out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
