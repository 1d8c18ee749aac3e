"""``jaxmed detect IMG [IMG ...] | DIR | 'glob*' | manifest.csv --checkpoint RUN_DIR -o OUT``: a run's
landmarks in new images.

One image: ``-o`` is the landmark file (``.fcsv``, ``.mrk.json``, ``.csv``, ``.json``). Several
images (or a folder, a glob pattern, a manifest): ``-o`` is a directory and one landmark file per image
is written there (``<image name>.fcsv``, or ``--format``), each atomically; the run is loaded and
compiled once for all of them (per bucketed image size) and the seconds per image after start-up are
printed. An image that cannot be read stops the batch with an error naming it (the files already
written stay, complete) unless ``--keep-going``, which skips it and reports it at the end (exit
status 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from jaxmed.commands import add_detection_options, detection_options

FORMATS = (".fcsv", ".mrk.json", ".csv", ".json")


def _single(args, image) -> int:
    from jaxmed.data import write_landmarks
    from jaxmed.detect import detect, detect_goal
    from jaxmed.errors import check_writable

    check_writable(Path(args.out), args.overwrite)  # before the run is loaded
    if args.goal is not None or args.goal_patch is not None:  # a goal-conditioned run, goal given by example
        found = detect_goal(args.checkpoint, image, goal=args.goal, goal_patch=args.goal_patch, n_starts=args.starts,
                            aggregate=args.aggregate)
    else:
        found = detect(args.checkpoint, image, labels=args.labels, n_starts=args.starts, aggregate=args.aggregate,
                       shape=args.shape, **detection_options(args))
    print(write_landmarks(found, args.out, overwrite=args.overwrite))
    for label, p in zip(found.labels, found.positions):
        print(f"{label}: {np.round(p, 2).tolist()} mm (RAS)")
    return 0


def _batch(args, images) -> int:
    from jaxmed.detect import LandmarkDetector, detect_files
    from jaxmed.errors import ConfigError

    if args.goal is not None or args.goal_patch is not None:
        raise ConfigError("--goal / --goal-patch take one image at a time")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: with several images -o must be a directory (one landmark file per image is written there)")
    t0 = time.perf_counter()
    detector = LandmarkDetector.from_run(args.checkpoint, labels=args.labels, n_starts=args.starts, aggregate=args.aggregate,
                                         ensemble=args.ensemble, shape=args.shape, **detection_options(args))
    load_s = time.perf_counter() - t0

    def report(image, result, seconds):
        if seconds is None:
            print(f"skipped {image}: {result}", file=sys.stderr)
        else:
            answers = (f"{l} {np.round(p, 1).tolist()}" for l, p in zip(result.labels, result.positions))
            print(f"{image}: {seconds:.3f} s  " + "  ".join(answers))

    res = detect_files(detector, images, out, suffix=args.format, overwrite=args.overwrite, keep_going=args.keep_going,
                       on_result=report, group=args.group)
    total = time.perf_counter() - t0
    sec = np.asarray(res["seconds"])
    print(f"\n{len(res['written'])} landmark file(s) in {out}/; start-up {load_s:.1f} s (load the run), "
          f"{res['compilations']} compilation(s) {res['compile_seconds']:.1f} s, "
          f"{(sec.mean() if sec.size else float('nan')):.3f} s per image after start-up (agents only; "
          f"{(total - load_s - res['compile_seconds']) / max(1, sec.size):.2f} s with reading and conforming); total {total:.1f} s")
    if res["failed"]:
        print(f"{len(res['failed'])} image(s) skipped: " + ", ".join(p for p, _ in res["failed"]), file=sys.stderr)
        return 1
    return 0


def _run(args) -> int:
    from jaxmed.detect import expand_inputs

    images = expand_inputs(args.images)
    if len(images) == 1 and not Path(args.out).is_dir():
        return _single(args, images[0])
    return _batch(args, images)


def add_parser(subparsers) -> argparse.ArgumentParser:
    k = subparsers.add_parser("detect", help="find a trained run's landmarks in new images, write landmark files")
    k.add_argument("images", nargs="+", metavar="IMAGE",
                   help="NIfTI images (any orientation / voxel size) or DICOM directories; folders of NIfTI images, "
                        "glob patterns ('scans/*.nii.gz') or a manifest .csv/.tsv (column 'image')")
    k.add_argument("--checkpoint", required=True, help="run directory of `jaxmed train`")
    k.add_argument("-o", "--out", required=True, help="one image: the landmark file (.fcsv, .mrk.json, .csv, .json); "
                   "several: a directory for one file per image")
    k.add_argument("--format", choices=FORMATS, default=".fcsv", help="file type written per image in batch mode (default %(default)s)")
    k.add_argument("--keep-going", action="store_true", help="batch: skip images that cannot be read (reported at the end, exit status 1)")
    k.add_argument("--group", type=int, default=8, help="batch: images run together in one bank (default %(default)s)")
    k.add_argument("--labels", nargs="*", help="subset of the trained landmarks")
    k.add_argument("--ensemble", action="store_true",
                   help="a run trained with --seeds S: run every seed's agents and pool their end points (S times the work)")
    k.add_argument("--starts", type=int, help="start points per agent (27: the 3x3x3 grid; default: the run's env.eval_starts)")
    k.add_argument("--aggregate", choices=("median", "mean", "trimmed", "geomedian"), default="median",
                   help="how the end points of all agents and starts of one landmark are combined (default %(default)s)")
    k.add_argument("--shape", choices=("none", "affine"), default="none",
                   help="affine: check every image's answers against the template's landmark configuration (a robust "
                        "affine fit; needs a model of >= 8 landmarks) and replace the ones that disagree with it "
                        "(tagged shape_outlier in the file; default %(default)s)")
    add_detection_options(k)
    k.add_argument("--goal", metavar="LABEL",
                   help="goal-conditioned run: walk to this template landmark (shown by its template crop; need not be trained)")
    k.add_argument("--goal-patch", metavar="FILE", help="goal-conditioned run: walk to the centre of this .npy goal image "
                   "(crop_size x coarsest factor voxels per edge at the run's spacing)")
    k.add_argument("--overwrite", action="store_true")
    k.set_defaults(func=_run)
    return k
