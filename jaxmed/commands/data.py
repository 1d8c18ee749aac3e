"""``jaxmed data {fetch, synth, show}``: data sets, synthetic populations, landmark figures.

    jaxmed data fetch afids           download and verify the AFIDs template + 32 landmarks
    jaxmed data synth -n 8 -o DIR     write synthetic subjects (NIfTI + .fcsv) made from a template
    jaxmed data show IMG -l LM -o PNG draw an image with its landmarks
"""

from __future__ import annotations

import argparse
import time

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


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="data sets and synthetic populations")
    d = p.add_subparsers(dest="data_command", required=True)
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
