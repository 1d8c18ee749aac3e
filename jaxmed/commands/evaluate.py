"""``jaxmed evaluate RUN_DIR``: evaluate a trained run again on its held-out subjects."""

from __future__ import annotations

import argparse
import dataclasses


def _run(args) -> int:
    from jaxmed.train import evaluate_run, load_params

    cfg, _, params = load_params(args.run_dir)
    if args.n_test:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, n_test=args.n_test))
    ev = evaluate_run(cfg, params, args.run_dir)
    print(ev["table"])
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    e = subparsers.add_parser("evaluate", help="evaluate a trained run on held-out subjects")
    e.add_argument("run_dir")
    e.add_argument("--n-test", type=int, help="number of held-out subjects (default: the run's data.n_test)")
    e.set_defaults(func=_run)
    return e
