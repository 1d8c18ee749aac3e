"""Goal-conditioned AFIDs view planes: seen-plane and unseen-plane errors against per-plane specialists.

One goal-conditioned DQN agent (:mod:`jaxmed.envs.goal_plane`, ``goal-plane-v0``: the goal given as
the goal plane's slab in the MNI template, bank volume 0) is trained on ``--train`` planes and then
asked, by goal slab only, for ``--held-out`` planes it never saw. Measured in the same script on the
same held-out test subjects (never the template), from the same fixed perturbed starts:

* per-plane specialists (:class:`jaxmed.envs.plane.PlaneEnv`, same network, same learner settings),
  each trained with the goal agent's budget divided by the number of training planes (so the
  specialists of the training planes together cost what the goal agent costs);
* the template plane, no model: the template's plane placed at the same offset about each subject's
  grid centre (what an agent starts from without ground truth).

Angles in degrees between the normals, ``distance_mm`` the distance of the target's reference point
to the found plane, ``landmark_distance_mm`` the mean distance of the plane's reference landmarks to it.

Usage (2 CPU cores, about 20-25 minutes under load)::

    python benchmarks/goal_plane_afids.py --chunks 40 --out benchmarks/results/goal_plane_afids.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402
from goal_common import dqn_config, not_reference, parse_args, print_report, reference_banks, rollout_metrics, train, writer  # noqa: E402

from jaxmed.envs.goal_plane import GoalPlaneConfig, GoalPlaneEnv  # noqa: E402
from jaxmed.envs.plane import N_ACTIONS, PlaneConfig, PlaneEnv, PlaneParams  # noqa: E402
from jaxmed.evaluation import metric_stats  # noqa: E402
from jaxmed.experiment import DataConfig  # noqa: E402
from jaxmed.networks import QNetwork  # noqa: E402

METRICS = ("angle_deg", "distance_mm", "landmark_distance_mm")
#: Environment settings of configs/afids_plane_dqn_cpu.yaml (3-slice slab at 2 / 4 mm, 4 scales).
ENV = dict(size=32, n_slices=3, slice_gap=3.0, frames=1, levels=(0, 0, 1, 1), angle_steps=(1.0, 2.0, 4.0, 8.0),
           offset_steps=(1.0, 2.0, 3.0, 4.0))
PARAMS = dict(max_steps=80, max_start_angle_deg=20.0, max_start_offset_mm=20.0)


def per_metric(stats_fn, metrics) -> dict:
    return {m: stats_fn(metrics[m], m) for m in METRICS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", default=["acpc_axial", "midsagittal"], help="planes the goal agent trains on")
    ap.add_argument("--held-out", nargs="+", default=["coronal_ac"], help="planes it is only shown at test time")
    ap.add_argument("--chunks", type=int, default=40, help="goal agent run_chunk calls (n_envs * 100 env steps each)")
    ap.add_argument("--n-envs", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=12)
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--eval-starts", type=int, default=8)
    ap.add_argument("--specialists", nargs="*", help="planes to train specialists for (default: every plane)")
    args = parse_args(ap, argv, "goal_plane_afids.json")
    if args.report:
        return print_report(args.report, markdown)
    t_start = time.perf_counter()

    data = DataConfig(source="afids", spacing=2.0, n_train=args.n_train, n_test=args.n_test, seed=0, dtype="uint8", factors=(1, 2))
    planes = tuple(args.train) + tuple(args.held_out)
    labels = GoalPlaneConfig(goals=planes, **ENV).labels
    train_bank, test_bank, _, data_info = reference_banks(data, labels, max_crop=3, packed=True)
    params = PlaneParams(**PARAMS)
    net = QNetwork(trunk="patch", head="dueling", n_actions=N_ACTIONS, trunk_kwargs={"patch_size": (3, 4, 4), "group": (1, 2, 2)},
                   head_kwargs={"hidden": (128, 64)})
    cfg = dqn_config(args.chunks, n_envs=args.n_envs)
    spec_chunks = max(1, args.chunks // len(args.train))
    result = {"machine": machine_info(), "args": vars(args), "train_planes": list(args.train), "held_out_planes": list(args.held_out),
              "env": {**ENV, **PARAMS},
              "dqn": {k: getattr(cfg, k) for k in ("n_envs", "chunk_steps", "batch_size", "learning_rate", "gamma")},
              "data": data_info,
              "budget_env_steps_goal_agent": args.chunks * cfg.env_steps_per_chunk,
              "budget_env_steps_per_specialist": spec_chunks * cfg.env_steps_per_chunk}
    save = writer(args.out, result)
    ev = params.replace(terminate_at_target=0.0)

    # ---- the goal-conditioned agent
    genv = GoalPlaneEnv(GoalPlaneConfig(goals=tuple(args.train), **ENV), labels=train_bank.labels, name="goal-plane-v0")
    gparams, gwall, gmetrics = train(genv, params, net, cfg, train_bank, args.chunks)
    result["goal_agent"] = {"train_wall_s": gwall, "last_chunk": gmetrics}
    save()
    for name, goals in (("seen", tuple(args.train)), ("unseen", tuple(args.held_out))):
        env = GoalPlaneEnv(GoalPlaneConfig(goals=goals, **ENV), labels=test_bank.labels)
        states = env.eval_states(ev, test_bank, args.eval_starts, seed=1)
        metrics, sec = rollout_metrics(env, ev, net, gparams, test_bank, states)
        start = jax.jit(jax.vmap(env.eval_metrics, in_axes=(0, None, None)))(states, ev, test_bank)
        result["goal_agent"][name] = {
            "per_goal": per_metric(lambda v, m: env.metric_stats(states, v, m), metrics),
            "start": per_metric(lambda v, m: env.metric_stats(states, np.asarray(v), m), start),
            "eval_s_incl_compile": sec}
        print(name, {g: round(v["median"], 2) for g, v in result["goal_agent"][name]["per_goal"]["angle_deg"].items()}, flush=True)
        save()

    # ---- per-plane specialists and the template plane
    result["specialists"], result["template_plane"] = {}, {}
    for plane in planes:
        penv = PlaneEnv(PlaneConfig(target=plane, **ENV), labels=train_bank.labels, name="plane-v0")
        tenv = PlaneEnv(penv.config, labels=test_bank.labels)
        # the template plane about the template's grid centre, placed about each test subject's centre
        n_tpl, d_tpl, _ = tenv.target_plane(test_bank, 0)
        o_tpl = float(d_tpl - np.dot(np.asarray(n_tpl), np.asarray(tenv.pivot(test_bank, 0))))
        prior = not_reference(tenv.prior_states(test_bank, 1, normal=np.asarray(n_tpl), offset=o_tpl))
        pm = jax.jit(jax.vmap(tenv.eval_metrics, in_axes=(0, None, None)))(prior, ev, test_bank)
        result["template_plane"][plane] = per_metric(lambda v, m: metric_stats(np.asarray(v), [plane], m)[plane], pm)
        if args.specialists is not None and plane not in args.specialists:
            continue
        sparams, swall, _ = train(penv, params, net, dqn_config(spec_chunks, n_envs=args.n_envs), train_bank, spec_chunks)
        states = not_reference(tenv.eval_states(ev, test_bank, args.eval_starts, seed=1))
        metrics, _ = rollout_metrics(tenv, ev, net, sparams, test_bank, states)
        result["specialists"][plane] = {"train_wall_s": swall, "env_steps": spec_chunks * cfg.env_steps_per_chunk,
                                        **per_metric(lambda v, m: metric_stats(v, [plane], m)[plane], metrics)}
        print("specialist", plane, round(result["specialists"][plane]["angle_deg"]["median"], 2), flush=True)
        save()
    result["wall_s"] = time.perf_counter() - t_start
    save()
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    """The BENCHMARKS.md table: mean ± std angle and distance per plane and method."""
    rows = ["| plane | method | angle (°) | distance (mm) | landmark distance (mm) | train wall (s) |", "|---|---|---|---|---|---|"]

    def cell(s):
        return f"{s['mean']:.2f} ± {s['std']:.2f}"

    g = result["goal_agent"]
    for plane in result["train_planes"] + result["held_out_planes"]:
        kind = "seen" if plane in result["train_planes"] else "unseen"
        if kind in g:
            s = {m: g[kind]["per_goal"][m][plane] for m in METRICS}
            rows.append(f"| {plane} | goal agent ({kind}) | {cell(s['angle_deg'])} | {cell(s['distance_mm'])} | "
                        f"{cell(s['landmark_distance_mm'])} | {g['train_wall_s']:.0f} (all planes) |")
        if plane in result.get("specialists", {}):
            s = result["specialists"][plane]
            rows.append(f"| {plane} | specialist | {cell(s['angle_deg'])} | {cell(s['distance_mm'])} | "
                        f"{cell(s['landmark_distance_mm'])} | {s['train_wall_s']:.0f} |")
        if plane in result.get("template_plane", {}):
            s = result["template_plane"][plane]
            rows.append(f"| {plane} | template plane, no model | {cell(s['angle_deg'])} | {cell(s['distance_mm'])} | "
                        f"{cell(s['landmark_distance_mm'])} | — |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
