"""``jaxmed detect IMAGE --checkpoint RUN_DIR -o out.fcsv``: all trained landmarks in one pass."""

from __future__ import annotations

import argparse

import numpy as np


def _run(args) -> int:
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


def add_parser(subparsers) -> argparse.ArgumentParser:
    k = subparsers.add_parser("detect", help="find a trained run's landmarks in a new image, write a .fcsv")
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
    k.set_defaults(func=_run)
    return k
