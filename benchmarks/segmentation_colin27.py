"""Deep grey-matter structures of Colin27 (AAL) segmented by RL agents beside classical baselines.

Data: Colin27 (``ch2``, 2 mm) and its AAL labels (``jaxmed data fetch colin27``). For every
structure (left / right caudate, putamen, thalamus, hippocampus) synthetic subjects are drawn from
Colin27 (:func:`jaxmed.data.synth.synthesize_subject`: affine + elastic warp, bias, gamma, noise,
varied voxel size and orientation), the AAL mask carried by nearest neighbour, and cut to
``crop``³ crops of 2 mm around the carried centroid (:mod:`jaxmed.data.structures`); train and
test subjects come from disjoint seeds. One agent of each kind is trained on the crops of all
structures together and evaluated on the test crops of each:

* ``threshold-seg-v0`` (Sahba 2006) with Double DQN (the config ``configs/seg/phantom_threshold_dqn.yaml``'s
  learner and network, crop and data from here), greedy from the env's 4 fixed start windows,
  majority vote;
* ``voxel-seg-v0`` (Liao 2020) with the fully-convolutional voxel Q-learner
  (:mod:`jaxmed.agents.voxel_q`), greedy from the atlas map;
* baselines: **atlas transfer** (Colin27's label laid on the crop around the carried centroid, i.e.
  translation-only registration; the voxel agents' start) and **Otsu + connected component** (Otsu's
  threshold of the crop, the class of the crop's centre voxel, the 26-connected component containing
  it, else the largest).

Metrics per test crop on the 2 mm crop grid: Dice and the 95 % Hausdorff distance (mm)
(:mod:`jaxmed.ops.masks`). Writes ``segmentation_colin27.json`` and ``.md`` (mean ± std per
structure and method) under ``--out``.

Usage::

    python benchmarks/segmentation_colin27.py [--out benchmarks/results/segmentation_colin27] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def otsu_component(image: np.ndarray) -> np.ndarray:
    """Otsu class of the centre voxel, then its 26-connected component (largest if the centre is off)."""
    from scipy import ndimage

    from jaxmed.ops.masks import largest_component, otsu_threshold

    t = otsu_threshold(image)
    centre = tuple(s // 2 for s in image.shape)
    mask = image > t if image[centre] > t else image <= t
    labels, _ = ndimage.label(mask, ndimage.generate_binary_structure(3, 3))
    return labels == labels[centre] if labels[centre] > 0 else largest_component(mask)


def main(argv=None) -> int:
    from jaxmed.agents import dqn, learners, voxel_q
    from jaxmed.agents.rollout import greedy_rollout
    from jaxmed.data.structures import AAL_STRUCTURES, build_seg_bank, colin27_structure, seg_subjects
    from jaxmed.envs import make
    from jaxmed.networks import network_from_config
    from jaxmed.ops.masks import dice, hausdorff95

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/segmentation_colin27"))
    ap.add_argument("--structures", nargs="*", default=list(AAL_STRUCTURES))
    ap.add_argument("--n-train", type=int, default=4, help="synthetic training subjects per structure")
    ap.add_argument("--n-test", type=int, default=3, help="synthetic test subjects per structure")
    ap.add_argument("--crop", type=int, default=20)
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--dqn-chunks", type=int, default=8, help="0: no threshold agent")
    ap.add_argument("--voxel-chunks", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="two structures, 2 + 1 subjects, 2 chunks (a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.structures, args.n_train, args.n_test, args.dqn_chunks, args.voxel_chunks = args.structures[:2], 2, 1, 2, 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    # ------------------------------------------------------------ data
    t0 = time.perf_counter()
    train, test = [], {}
    for s in args.structures:
        volume, mask = colin27_structure(s, args.spacing)
        kw = dict(crop_size=args.crop, spacing=args.spacing, name=s)
        train += seg_subjects(volume, mask, args.n_train, split="train", **kw)
        test[s] = seg_subjects(volume, mask, args.n_test, split="test", **kw)
    train_bank = build_seg_bank(train, "aal")
    data_s = time.perf_counter() - t0
    print(f"data: {len(train)} training crops, {sum(map(len, test.values()))} test crops in {data_s:.0f} s", flush=True)

    # ------------------------------------------------------------ threshold agent (Double DQN)
    t0 = time.perf_counter()
    env, params = make("threshold-seg-v0", structure="aal", crop_size=args.crop, max_radius=2, max_steps=20, window_step=0.05)
    dcfg = dqn.DQNConfig(n_envs=16, chunk_steps=50, batch_size=64, gamma=0.9, learning_rate=1e-3, learning_starts=200,
                         replay_capacity=20000, eps_decay_steps=400, target_update_period=100, double=True)
    net = network_from_config({"trunk": {"name": "patch", "patch_size": 5, "group": 2, "width": 0.5},
                               "head": {"name": "q", "hidden": [64, 32]}, "n_actions": env.num_actions,
                               "crop_size": (args.crop,) * 3})
    fns = dqn.make_train(dcfg, env, params, net)
    state = None
    if args.dqn_chunks > 0:
        state, _ = learners.run_chunks(fns, train_bank, args.dqn_chunks)
        jax.block_until_ready(state)
    dqn_s = time.perf_counter() - t0
    rollout = jax.jit(lambda p, b, s: greedy_rollout(lambda o: dqn.greedy_action(net, p, o), env, params, b, s))
    print(f"threshold agent: {args.dqn_chunks * dcfg.env_steps_per_chunk} env steps in {dqn_s:.0f} s", flush=True)

    # ------------------------------------------------------------ voxel agents
    t0 = time.perf_counter()
    venv, vparams = make("voxel-seg-v0", structure="aal", crop_size=args.crop, patch_size=3, max_steps=8, start="atlas")
    vcfg = voxel_q.VoxelQConfig(n_envs=4, chunk_steps=25)
    vnet = voxel_q.network_for(venv)
    vfns = voxel_q.make_train(vcfg, venv, vparams, vnet)
    vstate = jax.jit(vfns.init)(jax.random.key(0), train_bank)
    vchunk = jax.jit(vfns.run_chunk)
    for _ in range(args.voxel_chunks):
        vstate, _ = vchunk(vstate, train_bank)
    jax.block_until_ready(vstate)
    voxel_s = time.perf_counter() - t0
    print(f"voxel agents: {args.voxel_chunks * vcfg.env_steps_per_chunk} env steps in {voxel_s:.0f} s", flush=True)

    # ------------------------------------------------------------ evaluation
    rows = {}
    for s, subjects in test.items():
        bank = build_seg_bank(subjects, "aal")
        labels = np.asarray(bank.labels_mask) > 0
        vfinal, _ = voxel_q.greedy_masks(vnet, vstate.params, venv, vparams, bank, venv.eval_states(vparams, bank, 1))
        methods = {
            "atlas transfer": np.asarray(bank.atlas) > 0,
            "Otsu + component": np.stack([otsu_component(np.asarray(bank.intensity(i))) for i in range(bank.n_volumes)]),
            "voxel agents": np.asarray(vfinal.prob) > 0.5,
        }
        if state is not None:
            final = rollout(state.params, bank, env.eval_states(params, bank, 4))["final_state"]
            thr = np.asarray(jax.vmap(env.mask, in_axes=(0, None))(final, bank)).reshape(len(subjects), 4, *labels.shape[1:])
            methods["threshold agent (DQN)"] = thr.mean(axis=1) > 0.5
        rows[s] = {}
        for m, pred in methods.items():
            d = [float(dice(jnp.asarray(p), jnp.asarray(t))) for p, t in zip(pred, labels)]
            h = [hausdorff95(p, t, args.spacing) for p, t in zip(pred, labels)]
            rows[s][m] = {"dice": d, "hd95_mm": h}
        print(s, {m: round(float(np.mean(v["dice"])), 3) for m, v in rows[s].items()}, flush=True)

    # ------------------------------------------------------------ report
    names = list(next(iter(rows.values())))
    lines = ["| structure | " + " | ".join(f"{m} Dice" for m in names) + " | "
             + " | ".join(f"{m} HD95 (mm)" for m in names) + " |",
             "|---|" + "---|" * (2 * len(names))]

    def fmt(v):
        v = np.asarray(v, np.float64)
        finite = np.isfinite(v)
        if finite.all():
            return f"{np.mean(v):.2f} ± {np.std(v):.2f}"
        return f"{np.mean(v[finite]):.2f} ({int(np.sum(~finite))} empty)"

    pooled = {m: {k: sum((rows[x][m][k] for x in rows), []) for k in ("dice", "hd95_mm")} for m in names}
    for s, r in list(rows.items()) + [("all", pooled)]:
        dice_cells = " | ".join(fmt(r[m]["dice"]) for m in names)
        lines.append(f"| {s} | {dice_cells} | " + " | ".join(fmt(r[m]["hd95_mm"]) for m in names) + " |")
    table = "\n".join(lines)
    result = {"structures": args.structures, "n_train": args.n_train, "n_test": args.n_test, "crop": args.crop,
              "spacing_mm": args.spacing, "dqn_env_steps": args.dqn_chunks * dcfg.env_steps_per_chunk,
              "voxel_env_steps": args.voxel_chunks * vcfg.env_steps_per_chunk, "data_s": data_s, "dqn_train_s": dqn_s,
              "voxel_train_s": voxel_s, "wall_s": time.perf_counter() - t_all, "load_avg_1min": os.getloadavg()[0],
              "per_structure": rows, "table": table}
    (out / "segmentation_colin27.json").write_text(json.dumps(result, indent=1))
    (out / "segmentation_colin27.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
