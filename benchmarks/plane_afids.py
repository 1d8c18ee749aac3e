"""View-plane agents on AFIDs held-out subjects: ACPC axial and mid-sagittal plane errors, and env throughput.

For each plane (default ``acpc_axial`` and ``midsagittal``) trains a DQN view-plane agent
(:func:`jaxmed.agents.dqn.make_train`, the config ``configs/afids_plane_dqn_cpu.yaml`` with
``env.target`` set to the plane) on synthetic subjects made from the MNI152NLin2009cAsym template, for
at most ``train.chunks`` chunks or ``--budget-s`` seconds of training, then evaluates on held-out test
subjects (disjoint seeds: different pose, voxel size, orientation, intensity):

* **agent, perturbed starts**: the env's fixed evaluation starts (the target tilted by up to
  ``max_start_angle_deg`` and shifted by up to ``max_start_offset_mm``, seeded), one answer per start;
* **agent, template prior** (what ``jaxmed plane`` does, no ground truth anywhere): ``--prior-starts``
  starts around the template's plane placed relative to each image centre
  (:func:`jaxmed.commands.plane.template_prior`), one robust-mean answer per subject;
* **template plane (no model)**: the template's plane in world coordinates, carried by nothing;
* **prior start**: the template plane about the image centre, the start of the agent above;
* **oracle affine (no model)**: the template's plane carried by the subject's *true* global affine
  (known for synthetic subjects): what a perfect affine registration to the template would answer.
  Its error is the part of the target that the elastic warp moves independently of the global
  pose (for ACPC, mostly the AC-PC line, 28 mm long, tilted by the warp's local displacements).

Errors: ``angle_deg`` (between the normals), ``distance_mm`` (the target's reference point, on the
target plane, to the found plane) and ``landmark_distance_mm`` (mean distance of the plane's reference
landmarks to the found plane: AC and PC for ACPC, the 10 midline AFIDs for mid-sagittal), the metric of
Alansary et al. 2018, who report 1.98 mm (ACPC) and 1.53 mm (mid-sagittal) on real brain MRI.

Throughput: random-policy env steps per second (auto-reset, observation rendered) against the number
of vmapped environments, on the test bank.

    python benchmarks/plane_afids.py [--planes acpc_axial midsagittal] [--budget-s 540] [overrides ...]
    python benchmarks/plane_afids.py --update --n-envs 1 16 64 256 1024 --repeats 7   # baselines + throughput again
    python benchmarks/plane_afids.py --replot

Writes ``benchmarks/results/plane_afids.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from common import compile_dqn, fmt, machine_info, machine_line, replot, run_and_write, save_figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_MM = {"acpc_axial": 1.98, "midsagittal": 1.53}  # Alansary et al. 2018, landmark-to-plane distance
METRICS = ("angle_deg", "distance_mm", "landmark_distance_mm")
METHODS = ("agent, perturbed starts", "agent, template prior", "template plane (no model)", "prior start")


def stats(values) -> dict:
    v = np.asarray(values, np.float64).ravel()
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "p90": float(np.percentile(v, 90))}


def load_config(path: Path, overrides, plane: str):
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.experiment import ExperimentConfig

    data = apply_overrides(load_yaml(path), list(overrides))
    data["env"] = {**data["env"], "target": plane}
    return ExperimentConfig.from_dict(data, str(path))


def metrics_of_planes(env, eval_params, bank, volumes, normals, offsets) -> dict:
    """Metrics of world planes ``normals`` ``(E, 3)``, ``offsets`` ``(E,)`` in bank ``volumes`` ``(E,)``."""
    states = env.states_at(bank, volumes, normals, offsets)
    m = jax.jit(jax.vmap(env.eval_metrics, in_axes=(0, None, None)))(states, eval_params, bank)
    return {k: np.asarray(v)[:, 0] for k, v in m.items()}


def train_plane(cfg, bank, budget_s: float, log) -> dict:
    """Train with :func:`jaxmed.agents.dqn.make_train` for ``train.chunks`` chunks or ``budget_s`` seconds."""
    env, params, network, rs, chunk, compile_s = compile_dqn(cfg, bank)
    t1, history = time.perf_counter(), []
    for c in range(cfg.train.chunks):
        rs, m = chunk(rs, bank)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        history.append(m)
        elapsed = time.perf_counter() - t1
        log(f"  chunk {c + 1}/{cfg.train.chunks}: final angle {m['final_angle_deg']:.2f} deg, distance {m['final_distance_mm']:.2f} mm, "
            f"eps {m['epsilon']:.2f}, {elapsed:.0f} s")
        if elapsed + compile_s > budget_s:
            break
    jax.block_until_ready(rs.params)
    train_s = time.perf_counter() - t1
    steps = len(history) * cfg.dqn.env_steps_per_chunk
    return {"env": env, "params": params, "network": network, "net_params": rs.params, "history": history,
            "chunks": len(history), "env_steps": steps, "train_s": train_s, "compile_s": compile_s, "env_steps_per_s": steps / train_s}


def make_subjects(data_cfg, split: str, n: int, labels):
    """As :func:`jaxmed.data.run_data.make_subjects` (conformed ``(Volume, Landmarks)`` pairs), also
    returning each subject's template -> subject world affine ``(n, 4, 4)`` (its global pose)."""
    from jaxmed.data import conform, make_population, run_data

    volume, landmarks = run_data.template(data_cfg)
    population = make_population(volume, landmarks.select(labels), n, split=split, base_seed=data_cfg.seed)
    pairs = [(conform(s.volume, data_cfg.spacing), s.landmarks) for s in population]
    return pairs, np.array([s.params["template_to_subject_affine"] for s in population], np.float64)


def carried_plane(normal, offset, affine) -> tuple[np.ndarray, float]:
    """The plane ``normal . x = offset`` mapped by the affine ``x -> L x + t``: ``(n', d')`` with ``n'``
    along ``L^-T n``."""
    lin, t = affine[:3, :3], affine[:3, 3]
    n = np.linalg.solve(lin.T, normal)
    scale = np.linalg.norm(n)
    n = n / scale
    return n, float(offset / scale + n @ t)


def baselines(cfg, env, eval_params, bank, affines=None) -> dict:
    """Errors of the answers without a model: the template plane in world coordinates (carried by
    nothing) and, given the subjects' true global affines ``(n, 4, 4)``, the oracle-affine plane."""
    from jaxmed.data import run_data

    vols = np.arange(bank.n_volumes)
    _, tpl_landmarks = run_data.template(cfg.data)
    n_tpl, d_tpl = env.definition.from_landmarks(tpl_landmarks)
    out = {"template plane (no model)": metrics_of_planes(env, eval_params, bank, vols, np.repeat(n_tpl[None], len(vols), 0),
                                                          np.full(len(vols), d_tpl))}
    if affines is not None:
        carried = [carried_plane(n_tpl, d_tpl, a) for a in affines]
        out["oracle affine (no model)"] = metrics_of_planes(env, eval_params, bank, vols, np.array([c[0] for c in carried]),
                                                            np.array([c[1] for c in carried]))
    return out


def evaluate_plane(cfg, trained: dict, bank, n_prior_starts: int, affines=None) -> dict:
    """Every method's per-subject (or per-start) errors on the test ``bank``."""
    from jaxmed import experiment as ex
    from jaxmed.agents.dqn import greedy_action
    from jaxmed.agents.rollout import greedy_rollout
    from jaxmed.commands.plane import robust_plane, template_prior

    env, network, net_params = trained["env"], trained["network"], trained["net_params"]
    _, _, eval_params = ex.make_env(cfg, bank.labels)
    rollout = jax.jit(lambda p, s: greedy_rollout(lambda o: greedy_action(network, p, o), env, eval_params, bank, s))
    out = {}

    # perturbed starts: the env's protocol
    states = env.eval_states(eval_params, bank, cfg.eval_starts, seed=cfg.train.seed)
    compiled = rollout.lower(net_params, states).compile()
    t0 = time.perf_counter()
    res = jax.block_until_ready(compiled(net_params, states))
    perturbed_s = time.perf_counter() - t0
    out["agent, perturbed starts"] = {k: np.asarray(v)[:, 0] for k, v in res["metrics"].items()}
    start = jax.jit(jax.vmap(env.eval_metrics, in_axes=(0, None, None)))(states, eval_params, bank)
    out["perturbed start (no model)"] = {k: np.asarray(v)[:, 0] for k, v in start.items()}
    steps_perturbed = np.asarray(res["steps"])

    # the template prior: no ground truth; one robust answer per subject
    prior_n, prior_o = template_prior(cfg.data, env)
    max_tilt = min(10.0, 0.5 * float(eval_params.max_start_angle_deg))
    pstates = env.prior_states(bank, n_prior_starts, seed=0, max_angle_deg=max_tilt, normal=prior_n, offset=prior_o)
    compiled = rollout.lower(net_params, pstates).compile()
    t0 = time.perf_counter()
    pres = jax.block_until_ready(compiled(net_params, pstates))
    prior_s = time.perf_counter() - t0
    normals, offsets = jax.vmap(env.plane_world, in_axes=(0, None))(pres["final_state"], bank)
    normals = np.asarray(normals)[:, 0].reshape(bank.n_volumes, n_prior_starts, 3)
    offsets = np.asarray(offsets)[:, 0].reshape(bank.n_volumes, n_prior_starts)
    answers = [robust_plane(n, d) for n, d in zip(normals, offsets)]
    vols = np.arange(bank.n_volumes)
    out["agent, template prior"] = metrics_of_planes(env, eval_params, bank, vols, np.array([a[0] for a in answers]),
                                                     np.array([a[1] for a in answers]))
    first = jax.tree.map(lambda x: x[::n_prior_starts], pstates)  # the untilted prior start of each subject
    n0, d0 = jax.vmap(env.plane_world, in_axes=(0, None))(first, bank)
    out["prior start"] = metrics_of_planes(env, eval_params, bank, vols, np.asarray(n0)[:, 0], np.asarray(d0)[:, 0])

    out.update(baselines(cfg, env, eval_params, bank, affines))
    table = {method: {m: stats(v[m]) for m in METRICS} for method, v in out.items()}
    return {"stats": table, "eval_seconds_perturbed": perturbed_s, "eval_seconds_prior": prior_s,
            "seconds_per_subject_prior": prior_s / bank.n_volumes, "prior_starts_per_subject": n_prior_starts,
            "mean_steps_perturbed": float(steps_perturbed.mean()), "episodes_perturbed": int(steps_perturbed.size)}


def throughput(env, params, bank, n_envs_list, steps: int = 50, repeats: int = 3) -> list[dict]:
    """Random-policy env steps/s (auto-reset, observation rendered and reduced) per number of envs
    (median of ``repeats`` timed runs of ``steps`` vector steps, after one compiling run)."""
    rows = []
    for n in n_envs_list:
        v_reset = jax.jit(jax.vmap(env.reset, in_axes=(0, None, None)))
        _, state = v_reset(jax.random.split(jax.random.key(0), n), params, bank)

        @jax.jit
        def run(state, key):
            def body(state, k):
                ka, ks = jax.random.split(k)
                action = jax.random.randint(ka, (n, 1), 0, env.num_actions)
                obs, state, *_ = jax.vmap(env.step, in_axes=(0, 0, 0, None, None))(jax.random.split(ks, n), state, action, params, bank)
                return state, jnp.sum(obs.astype(jnp.float32))  # keep the rendering alive

            return jax.lax.scan(body, state, jax.random.split(key, steps))

        jax.block_until_ready(run(state, jax.random.key(1)))  # compile
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(run(state, jax.random.key(2 + r)))
            times.append(time.perf_counter() - t0)
        t = float(np.median(times))
        rows.append({"n_envs": n, "steps_per_s": n * steps / t, "seconds_per_vector_step": t / steps})
        print(f"  {n:5d} envs: {n * steps / t:12,.0f} env-steps/s", flush=True)
    return rows


def _portable(path) -> str:
    """``path`` relative to the working directory when it lies below it (results carry no machine paths)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def run(args) -> dict:
    from jaxmed import experiment as ex
    from jaxmed.data import build_bank

    result = {"machine": machine_info(), "config": _portable(args.config), "overrides": list(args.overrides), "planes": {}}
    first = load_config(args.config, args.overrides, args.planes[0])
    result["data"] = dataclasses.asdict(first.data)
    env0, _, _ = ex.make_env(first)
    labels = env0.required_labels  # the same AFIDs for every registered AFIDs plane
    t0 = time.perf_counter()
    banks, affines = {}, {}
    for split, n in (("train", first.data.n_train), ("test", first.data.n_test)):
        subjects, affines[split] = make_subjects(first.data, split, n, labels)
        # packed: every slab is sampled once, at its own pyramid level (not every level, then selected)
        banks[split] = build_bank(subjects, labels, factors=first.data.factors, max_crop=env0.max_crop, dtype=first.data.dtype,
                                  packed=env0.wants_packed_bank)
    result["data_prep_s"] = time.perf_counter() - t0
    print(f"data: {first.data.n_train} train / {first.data.n_test} test subjects in {result['data_prep_s']:.0f} s", flush=True)
    for plane in args.planes:
        cfg = load_config(args.config, args.overrides, plane)
        print(f"{plane}: training (at most {cfg.train.chunks} chunks, {args.budget_s:.0f} s)", flush=True)
        trained = train_plane(cfg, banks["train"], args.budget_s, lambda s: print(s, flush=True))
        ev = evaluate_plane(cfg, trained, banks["test"], args.prior_starts, affines["test"])
        result["planes"][plane] = {
            "description": trained["env"].definition.description,
            "env": {**dataclasses.asdict(trained["env"].config), **dataclasses.asdict(trained["params"]),
                    "eval_starts": cfg.eval_starts, "eval_max_steps": cfg.env.get("eval_max_steps")},
            "network": dict(cfg.network), "dqn": dataclasses.asdict(cfg.dqn),
            "chunks": trained["chunks"], "env_steps": trained["env_steps"], "train_s": trained["train_s"],
            "compile_s": trained["compile_s"], "train_env_steps_per_s": trained["env_steps_per_s"],
            "train_curve": [{k: h[k] for k in ("final_angle_deg", "final_distance_mm", "epsilon", "reward")} for h in trained["history"]],
            "published_landmark_distance_mm": PUBLISHED_MM.get(plane), **ev,
        }
        print(markdown_plane(plane, result["planes"][plane]), flush=True)
        if plane == args.planes[0] and args.n_envs:
            _, params, _ = ex.make_env(cfg, banks["test"].labels)
            print("env throughput (random policy):", flush=True)
            result["throughput"] = {"plane": plane, "rows": throughput(trained["env"], params, banks["test"], args.n_envs)}
    return result


def update(args) -> dict:
    """Recompute what needs no training on the same test subjects (the no-model baselines of every
    plane in ``args.out``) and re-measure the throughput (``--n-envs``) into ``args.out``."""
    import json
    import os

    from jaxmed import experiment as ex
    from jaxmed.data import build_bank

    result = json.loads(args.out.read_text())
    result["training_run_wall_seconds"] = result.get("training_run_wall_seconds", result.get("wall_seconds"))
    planes = list(result["planes"])
    first = load_config(Path(result["config"]), result["overrides"], planes[0])
    result.setdefault("data", dataclasses.asdict(first.data))
    env0, _, _ = ex.make_env(first)
    subjects, affines = make_subjects(first.data, "test", first.data.n_test, env0.required_labels)
    bank = build_bank(subjects, env0.required_labels, factors=first.data.factors, max_crop=env0.max_crop, dtype=first.data.dtype,
                      packed=env0.wants_packed_bank)
    for plane in planes:
        cfg = load_config(Path(result["config"]), result["overrides"], plane)
        env, _, eval_params = ex.make_env(cfg, bank.labels)
        for method, values in baselines(cfg, env, eval_params, bank, affines).items():
            result["planes"][plane]["stats"][method] = {m: stats(values[m]) for m in METRICS}
    if args.n_envs:
        cfg = load_config(Path(result["config"]), result["overrides"], planes[0])
        env, params, _ = ex.make_env(cfg, bank.labels)
        load = os.getloadavg()[0]
        rows = throughput(env, params, bank, args.n_envs, repeats=args.repeats)
        result["throughput"] = {"plane": planes[0], "rows": rows, "load_avg_1m": [load, os.getloadavg()[0]],
                                "measured": machine_info()["date"]}
    return result


def markdown_plane(plane: str, r: dict) -> str:
    pub = r.get("published_landmark_distance_mm")
    lines = [f"**{plane}** ({r['chunks']} chunks, {r['env_steps']:,} env steps, {r['train_s']:.0f} s training + "
             f"{r['compile_s']:.0f} s compile; {r['seconds_per_subject_prior']:.2f} s per subject with "
             f"{r['prior_starts_per_subject']} starts)", "",
             "| method | angle (°) mean ± std | median | distance (mm) mean ± std | median "
             "| landmark distance (mm) mean ± std | median | n |",
             "|---|---|---|---|---|---|---|---|"]
    for method in ("agent, perturbed starts", "perturbed start (no model)", "agent, template prior", "prior start",
                   "template plane (no model)", "oracle affine (no model)"):
        if method not in r["stats"]:
            continue
        s = r["stats"][method]
        a, d, l_ = s["angle_deg"], s["distance_mm"], s["landmark_distance_mm"]
        lines.append(f"| {method} | {a['mean']:.2f} ± {a['std']:.2f} | {a['median']:.2f} | {d['mean']:.2f} ± {d['std']:.2f} | "
                     f"{d['median']:.2f} | {l_['mean']:.2f} ± {l_['std']:.2f} | {l_['median']:.2f} | {a['n']} |")
    if pub is not None:
        lines.append(f"| Alansary et al. 2018 (real MRI, published) | — | — | — | — | {pub:.2f} | — | — |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    parts = [markdown_plane(p, r) for p, r in result["planes"].items()]
    if "throughput" in result:
        rows = result["throughput"]["rows"]
        parts.append("| envs | " + " | ".join(str(r["n_envs"]) for r in rows) + " |\n|---|" + "---|" * len(rows) + "\n"
                     "| env-steps/s | " + " | ".join(fmt(r["steps_per_s"]) for r in rows) + " |")
    return "\n\n".join(parts)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    planes = list(result["planes"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    methods = [m for m in ("agent, perturbed starts", "agent, template prior", "prior start", "template plane (no model)",
                           "oracle affine (no model)") if all(m in result["planes"][p]["stats"] for p in planes)]
    width = 0.8 / len(methods)
    for ax, metric, unit in ((axes[0], "angle_deg", "degrees"), (axes[1], "landmark_distance_mm", "mm")):
        for i, method in enumerate(methods):
            means = [result["planes"][p]["stats"][method][metric]["mean"] for p in planes]
            stds = [result["planes"][p]["stats"][method][metric]["std"] for p in planes]
            ax.bar(np.arange(len(planes)) + i * width, means, width, yerr=stds, label=method, capsize=2)
        if metric == "landmark_distance_mm":
            for j, p in enumerate(planes):
                if PUBLISHED_MM.get(p):
                    ax.plot([j - 0.1, j + 0.8], [PUBLISHED_MM[p]] * 2, "k--", lw=1, label="Alansary 2018" if j == 0 else None)
        ax.set_xticks(np.arange(len(planes)) + 0.4 - width / 2, planes)
        ax.set_ylabel(f"{metric} ({unit}), mean ± std")
        ax.legend(fontsize=7)
    if "throughput" in result:
        rows = result["throughput"]["rows"]
        axes[2].loglog([r["n_envs"] for r in rows], [r["steps_per_s"] for r in rows], "o-")
        axes[2].set_xlabel("vmapped environments")
        axes[2].set_ylabel("env-steps/s (random policy)")
        axes[2].set_title(f"plane-v0 ({result['throughput']['plane']}) throughput", fontsize=9)
    save_figure(fig, path, f"View planes on AFIDs held-out subjects — {machine_line(result['machine'])}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "afids_plane_dqn_cpu.yaml")
    p.add_argument("--planes", nargs="+", default=["acpc_axial", "midsagittal"])
    p.add_argument("--budget-s", type=float, default=540.0, help="training wall-time limit per plane (compile included)")
    p.add_argument("--prior-starts", type=int, default=9, help="starts per subject around the template prior")
    p.add_argument("--n-envs", type=int, nargs="*", default=[1, 16, 64, 256, 1024], help="throughput sizes (none: skip)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plane_afids.json")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per throughput size (median)")
    p.add_argument("--replot", action="store_true", help="redraw the PNG and table of an existing result")
    p.add_argument("--update", action="store_true", help="recompute the no-model baselines and the throughput of an existing result")
    args = p.parse_args()
    if args.replot:
        replot(args.out, plot, markdown)
        return
    if args.update:
        run_and_write(update, args, plot, markdown)
        return
    run_and_write(run, args, plot, markdown)


if __name__ == "__main__":
    main()
