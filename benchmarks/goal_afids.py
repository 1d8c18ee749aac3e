"""Goal-conditioned AFIDs navigation: seen-goal and unseen-goal errors against per-landmark specialists.

One goal-conditioned DQN agent (:mod:`jaxmed.envs.goal_landmark`, goal image = the MNI template's
crop around the landmark; the template is bank volume 0, the reference) is trained on ``--train``
landmarks and then asked, by goal image only, for ``--held-out`` landmarks it never saw. Baselines,
measured in the same script on the same held-out test subjects:

* per-landmark specialists (plain :class:`jaxmed.envs.landmark.LandmarkEnv` agents, same network,
  same learner config) trained with the same budget per landmark as the goal agent spends per
  training landmark (``total env steps / n_train_goals``), on the held-out landmarks and on
  ``--specialist-seen`` training landmarks;
* the template prior (answer the template's coordinate).

Usage (2 CPU cores, about 20 minutes at load 5-10)::

    python benchmarks/goal_afids.py --chunks 96 --out benchmarks/results/goal_afids.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402
from goal_common import dqn_config, not_reference, parse_args, print_report, reference_banks, rollout_metrics, train, writer  # noqa: E402

from jaxmed.agents.her import HERConfig, transform_for  # noqa: E402
from jaxmed.envs.goal_landmark import GoalLandmarkConfig, GoalLandmarkEnv  # noqa: E402
from jaxmed.envs.landmark import LandmarkConfig, LandmarkEnv, LandmarkParams  # noqa: E402
from jaxmed.evaluation import metric_stats  # noqa: E402
from jaxmed.experiment import DataConfig  # noqa: E402
from jaxmed.networks import QNetwork  # noqa: E402

TRAIN = ("AC", "PC", "infracollicular sulcus", "culmen", "genu of CC", "splenium of CC", "R LV at AC", "L superior LMS")
HELD_OUT = ("pineal gland", "intermammillary sulcus", "L LV at PC", "R AL temporal horn")
SEEN_SPECIALISTS = ("AC", "genu of CC")


def rollout_errors(env, eval_params, net, net_params, bank, states):
    """``((E, A) mm errors, seconds incl. compile)``."""
    metrics, seconds = rollout_metrics(env, eval_params, net, net_params, bank, states)
    return metrics["distance_mm"], seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=96, help="goal agent run_chunk calls (n_envs * chunk_steps env steps each)")
    ap.add_argument("--n-train", type=int, default=8)
    ap.add_argument("--n-test", type=int, default=4)
    ap.add_argument("--eval-starts", type=int, default=8)
    ap.add_argument("--her", type=float, default=0.3, help="hindsight relabelling fraction of the goal agent")
    args = parse_args(ap, argv, "goal_afids.json")
    if args.report:
        return print_report(args.report, markdown)

    data = DataConfig(source="afids", spacing=2.0, n_train=args.n_train, n_test=args.n_test, seed=0, dtype="uint8", factors=(1, 2, 4))
    labels = TRAIN + HELD_OUT
    crop, frames, levels = 15, 2, (0, 1, 2)
    train_bank, test_bank, tpl_lms, data_info = reference_banks(data, labels, crop)
    env_params = LandmarkParams(max_steps=150, start_radius_mm=0.0, terminate_at_target_mm=2.0)
    eval_params = env_params.replace(terminate_at_target_mm=0.0)
    net = QNetwork(trunk="patch", head="dueling", trunk_kwargs={"patch_size": 5}, head_kwargs={"hidden": (128, 64)})
    dqn = dqn_config  # 16 envs x 100 steps per chunk, one update per vector step, epsilon decaying over half the run
    cfg = dqn(args.chunks)
    total_steps = args.chunks * cfg.env_steps_per_chunk
    result = {"machine": machine_info(), "args": vars(args), "train_goals": TRAIN, "held_out_goals": HELD_OUT,
              "data": data_info,
              "budget_env_steps_goal_agent": total_steps, "budget_env_steps_per_specialist": total_steps // len(TRAIN)}
    save = writer(args.out, result)

    # ---- the goal-conditioned agent
    goal_cfg = GoalLandmarkConfig(goals=TRAIN, crop_size=crop, frames=frames, levels=levels)
    genv = GoalLandmarkEnv(goal_cfg, labels=train_bank.labels, name="goal-landmark-v0")
    gdqn = dataclasses.replace(cfg, her=HERConfig(fraction=args.her, radius_mm=16.0))
    gparams, gwall, gmetrics = train(genv, env_params, net, gdqn, train_bank, args.chunks,
                                     batch_transform=transform_for(genv, env_params, gdqn))
    result["goal_agent"] = {"train_wall_s": gwall, "last_chunk": gmetrics}
    for name, goals in (("seen", TRAIN), ("unseen", HELD_OUT)):
        env = GoalLandmarkEnv(GoalLandmarkConfig(goals=goals, crop_size=crop, frames=frames, levels=levels), labels=test_bank.labels)
        states = env.eval_states(eval_params, test_bank, args.eval_starts, seed=1)
        err, sec = rollout_errors(env, eval_params, net, gparams, test_bank, states)
        result["goal_agent"][name] = {"per_goal": env.metric_stats(states, err, "distance_mm"),
                                      "all": metric_stats(err.reshape(-1, 1), ["all"])["all"],
                                      "eval_s_incl_compile": sec}
        print(name, {g: round(v["median"], 2) for g, v in result["goal_agent"][name]["per_goal"].items()}, flush=True)
    save()

    # ---- per-landmark specialists, same budget per landmark
    spec_chunks = max(1, args.chunks // len(TRAIN))
    result["specialists"] = {}
    for label in HELD_OUT + SEEN_SPECIALISTS:
        env = LandmarkEnv(LandmarkConfig(targets=(label,), crop_size=crop, frames=frames, levels=levels), labels=train_bank.labels)
        sparams, swall, _ = train(env, env_params, net, dqn(spec_chunks), train_bank, spec_chunks)
        tenv = LandmarkEnv(env.config, labels=test_bank.labels)
        # not in the template (the goal agent never runs there either)
        states = not_reference(tenv.eval_states(eval_params, test_bank, args.eval_starts, seed=1))
        err, _ = rollout_errors(tenv, eval_params, net, sparams, test_bank, states)
        result["specialists"][label] = {"train_wall_s": swall, "env_steps": spec_chunks * dqn(spec_chunks).env_steps_per_chunk,
                                        **metric_stats(err, [label])[label]}
        print("specialist", label, round(result["specialists"][label]["median"], 2), flush=True)
        save()

    # ---- template prior: the template's coordinate in each test subject
    tw = np.asarray(test_bank.landmarks_world)[1:]
    prior = {l: metric_stats(np.linalg.norm(tw[:, [test_bank.label_index(l)]] - tpl_lms.select([l]).positions[None], axis=-1), [l])[l]
             for l in labels}
    result["template_prior"] = prior
    save()
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    """The BENCHMARKS.md table: per landmark, median and mean ± std error (mm) of each method."""
    def cell(s):
        return f"{s['median']:.2f} / {s['mean']:.2f} ± {s['std']:.2f}" if s else "—"

    g, spec, prior = result["goal_agent"], result.get("specialists", {}), result.get("template_prior", {})
    rows = ["| landmark | goal | goal agent: median / mean ± std (mm) | ≤4 mm | specialist (mm) | template prior (mm) |",
            "|---|---|---|---|---|---|"]
    for kind, labels in (("seen", result["train_goals"]), ("unseen", result["held_out_goals"])):
        for label in labels:
            s = g.get(kind, {}).get("per_goal", {}).get(label)
            rows.append(f"| {label} | {kind} | {cell(s)} | {100 * s['success_4mm']:.0f} % | {cell(spec.get(label))} | "
                        f"{cell(prior.get(label))} |" if s else f"| {label} | {kind} | — | — | — | — |")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
