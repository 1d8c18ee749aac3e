"""The ``jaxmed`` command line.

    jaxmed train CONFIG.yaml          train any learner on any env (see configs/), evaluate on held-out subjects
    jaxmed evaluate RUN_DIR           evaluate a run again
    jaxmed detect IMAGE --checkpoint RUN_DIR -o out.fcsv   all trained landmarks in one pass
    jaxmed quickstart                 fetch AFIDs, build a small synthetic population, write figures
    jaxmed data fetch afids           download and verify the AFIDs template + 32 landmarks
    jaxmed data synth -n 8 -o DIR     write synthetic subjects (NIfTI + .fcsv) made from a template
    jaxmed data show IMG -l LM -o PNG draw an image with its landmarks
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxmed.errors import JaxmedError

#: Subcommand modules under ``jaxmed/commands`` (each has ``add_parser(subparsers)``).
COMMAND_MODULES: tuple[str, ...] = ("register", "plane", "sweep", "bench")


def _cmd_fetch(args) -> int:
    from jaxmed.data import afids

    if args.dataset != "afids":
        raise JaxmedError(f"unknown data set {args.dataset!r}; available: afids")
    files = afids.fetch(force=args.force, wheel=args.wheel)
    for key, p in files.items():
        print(f"{key}: {p}")
    return 0


def _template(args):
    from jaxmed.data import afids
    from jaxmed.data.image_io import load_image
    from jaxmed.data.landmark_files import read_landmarks

    if args.template is None:
        return afids.load()
    if args.landmarks is None:
        raise JaxmedError("--template needs --landmarks (the template's landmark file)")
    vol = load_image(args.template)
    lm = read_landmarks(args.landmarks)
    lm.check_inside(vol)
    return vol, lm


def _cmd_synth(args) -> int:
    from jaxmed.data.synth import make_population, write_population

    template, landmarks = _template(args)
    t0 = time.perf_counter()
    subjects = make_population(template, landmarks, args.n, split=args.split, base_seed=args.seed)
    paths = write_population(subjects, args.out, overwrite=args.overwrite)
    print(f"wrote {len(subjects)} {args.split} subjects to {args.out} in {time.perf_counter() - t0:.1f} s ({len(paths)} files)")
    return 0


def _cmd_show(args) -> int:
    from jaxmed.data.image_io import load_image
    from jaxmed.data.landmark_files import read_landmarks
    from jaxmed.viz import plot_landmarks

    vol = load_image(args.image)
    lm = read_landmarks(args.landmarks)
    lm.check_inside(vol)
    print(plot_landmarks(vol, lm, args.out, overwrite=args.overwrite))
    return 0


def _cmd_quickstart(args) -> int:
    """Fetch AFIDs, synthesise held-out-style subjects, draw them, report the template-prior error."""
    from jaxmed.data import afids
    from jaxmed.data.synth import make_population
    from jaxmed.viz import plot_landmarks

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    template, landmarks = afids.load()
    print(f"AFIDs template {template.shape} voxels, spacing {template.spacing.round(2).tolist()} mm, {len(landmarks)} landmarks")
    plot_landmarks(template, landmarks, out / "afids_template.png", overwrite=True, title="AFIDs on MNI152NLin2009cAsym (32 landmarks)")
    t0 = time.perf_counter()
    subjects = make_population(template, landmarks, args.n_subjects, split="test", base_seed=args.seed)
    dt = (time.perf_counter() - t0) / max(1, args.n_subjects)
    rows = []
    for s in subjects:
        err = np.linalg.norm(s.landmarks.positions - landmarks.positions, axis=1)
        rows.append(err)
        plot_landmarks(s.volume, s.landmarks, out / f"subject_{s.seed}.png", overwrite=True,
                       title=f"synthetic subject seed {s.seed}: {s.volume.shape} voxels, {s.volume.spacing.round(2).tolist()} mm")
    err = np.array(rows)
    print(f"\nsynthesised {len(subjects)} test subjects ({dt:.1f} s each); template-prior error "
          "(answering the template's coordinate, no model), mm:")
    print(f"{'landmark':<32}{'mean':>8}{'max':>8}")
    for j, lab in enumerate(landmarks.labels):
        if lab in afids.CORE_LABELS:
            print(f"{lab:<32}{err[:, j].mean():8.2f}{err[:, j].max():8.2f}")
    print(f"{'all 32':<32}{err.mean():8.2f}{err.max():8.2f}")
    summary = {"n_subjects": len(subjects), "seconds_per_subject": dt, "template_prior_error_mm_mean": float(err.mean())}
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2))
    print(f"\nfigures and summary in {out}/")
    return 0


def _experiment(args):
    from jaxmed.config import apply_overrides, load_yaml
    from jaxmed.experiment import ExperimentConfig

    return ExperimentConfig.from_dict(apply_overrides(load_yaml(args.config), args.overrides), args.config)


def _cmd_train(args) -> int:
    from jaxmed.train import run_training

    cfg = _experiment(args)
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=args.seeds))
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / Path(args.config).stem
    summary = run_training(cfg, run_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet, evaluate=not args.no_eval)
    if "evaluation" in summary:
        ev = summary["evaluation"]
        print(f"\nheld-out test subjects: {cfg.data.n_test}, episodes: {ev['episodes']}, "
              f"{ev['seconds_per_subject']:.2f} s per subject for all agents")
        print(ev["table"])
    print(f"\ntrained {summary['env_steps']:,} env steps in {summary['train_wall_s']:.0f} s; run directory: {run_dir}")
    return 0


def _cmd_evaluate(args) -> int:
    from jaxmed.train import evaluate_run, load_params

    cfg, _, params = load_params(args.run_dir)
    if args.n_test:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_test=args.n_test))
    ev = evaluate_run(cfg, params, args.run_dir)
    print(ev["table"])
    return 0


def _cmd_detect(args) -> int:
    from jaxmed.data import write_landmarks
    from jaxmed.detect import detect, detect_goal

    if args.goal is not None or args.goal_patch is not None:  # a goal-conditioned run, goal given by example
        found = detect_goal(args.checkpoint, args.image, goal=args.goal, goal_patch=args.goal_patch, n_starts=args.starts, aggregate=args.aggregate)
    else:
        found = detect(args.checkpoint, args.image, labels=args.labels, n_starts=args.starts, aggregate=args.aggregate)
    print(write_landmarks(found, args.out, overwrite=args.overwrite))
    for label, p in zip(found.labels, found.positions):
        print(f"{label}: {np.round(p, 2).tolist()} mm (RAS)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxmed", description="Reinforcement learning on 3D medical images, in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="fetch AFIDs, build a small population, write figures")
    q.add_argument("--out", default="outputs/quickstart", help="output directory (default: %(default)s)")
    q.add_argument("--n-subjects", type=int, default=3)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_cmd_quickstart)

    t = sub.add_parser("train", help="train any learner on any env from a YAML config (see configs/)")
    t.add_argument("config", help="experiment YAML (see configs/)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. dqn.learning_rate=3e-4")
    t.add_argument("--run-dir", help="output directory (default: runs/CONFIG_NAME)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation at the end")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--seeds", type=int, help="train this many seeds at once in one compiled program (train.seeds); "
                   "the evaluation reports mean ± std across seeds")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a trained run on held-out subjects")
    e.add_argument("run_dir")
    e.add_argument("--n-test", type=int, help="number of held-out subjects (default: the run's data.n_test)")
    e.set_defaults(func=_cmd_evaluate)

    k = sub.add_parser("detect", help="find a trained run's landmarks in a new image, write a .fcsv")
    k.add_argument("image", help="NIfTI image (any orientation / voxel size) or DICOM directory")
    k.add_argument("--checkpoint", required=True, help="run directory of `jaxmed train`")
    k.add_argument("-o", "--out", required=True, help="output landmark file (.fcsv, .mrk.json, .csv, .json)")
    k.add_argument("--labels", nargs="*", help="subset of the trained landmarks")
    k.add_argument("--starts", type=int, default=27, help="start points per agent (27: the 3x3x3 grid; default %(default)s)")
    k.add_argument("--aggregate", choices=("median", "mean", "trimmed"), default="median",
                   help="how the end points of all agents and starts of one landmark are combined (default %(default)s)")
    k.add_argument("--goal", metavar="LABEL", help="goal-conditioned run: walk to this template landmark (shown by its template crop; need not be trained)")
    k.add_argument("--goal-patch", metavar="FILE", help="goal-conditioned run: walk to the centre of this .npy goal image "
                   "(crop_size x coarsest factor voxels per edge at the run's spacing)")
    k.add_argument("--overwrite", action="store_true")
    k.set_defaults(func=_cmd_detect)

    for name in COMMAND_MODULES:  # task commands (register, plane, ...) live in jaxmed.commands
        importlib.import_module(f"jaxmed.commands.{name}").add_parser(sub)

    d = sub.add_parser("data", help="data sets and synthetic populations").add_subparsers(dest="data_command", required=True)
    f = d.add_parser("fetch", help="download and verify a data set")
    f.add_argument("dataset", help="afids")
    f.add_argument("--force", action="store_true", help="download again even if the cache verifies")
    f.add_argument("--wheel", help="use a local afids_cnn-0.2.1 wheel instead of downloading")
    f.set_defaults(func=_cmd_fetch)

    s = d.add_parser("synth", help="write synthetic subjects made from a template")
    s.add_argument("-n", type=int, default=8, help="number of subjects")
    s.add_argument("-o", "--out", required=True, help="output directory")
    s.add_argument("--split", choices=("train", "val", "test"), default="train")
    s.add_argument("--seed", type=int, default=0, help="base seed (splits stay disjoint for any base seed)")
    s.add_argument("--template", help="template image (default: AFIDs MNI152NLin2009cAsym)")
    s.add_argument("--landmarks", help="the template's landmark file")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_synth)

    v = d.add_parser("show", help="draw an image with its landmarks")
    v.add_argument("image")
    v.add_argument("-l", "--landmarks", required=True)
    v.add_argument("-o", "--out", required=True)
    v.add_argument("--overwrite", action="store_true")
    v.set_defaults(func=_cmd_show)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except JaxmedError as e:
        print(f"jaxmed: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
