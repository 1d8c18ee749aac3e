"""The ``jaxmed`` command line: a dispatcher over :mod:`jaxmed.commands`, one module per subcommand.

    jaxmed train CONFIG.yaml          train any learner on any env (see configs/), evaluate on held-out subjects
    jaxmed evaluate RUN_DIR           evaluate a run again
    jaxmed detect IMAGE --checkpoint RUN_DIR -o out.fcsv   all trained landmarks in one pass
    jaxmed quickstart                 fetch AFIDs, build a small synthetic population, write figures
    jaxmed data fetch afids           download and verify the AFIDs template + 32 landmarks
    jaxmed data synth -n 8 -o DIR     write synthetic subjects (NIfTI + .fcsv) made from a template
    jaxmed data show IMG -l LM -o PNG draw an image with its landmarks
    jaxmed cv CONFIG.yaml --folds K   K-fold cross-validation on your own labelled scans
    jaxmed register / plane / sweep / bench   see ``jaxmed COMMAND --help``
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jaxmed.errors import JaxmedError

#: Subcommand modules under ``jaxmed/commands`` (each has ``add_parser(subparsers)``), in help order.
COMMAND_MODULES: tuple[str, ...] = ("quickstart", "train", "evaluate", "detect", "register", "plane", "segment", "sweep", "bench",
                                    "data", "cv")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxmed", description="Reinforcement learning on 3D medical images, in JAX.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"jaxmed.commands.{name}").add_parser(sub)
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
