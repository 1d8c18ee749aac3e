"""Command-line subcommands, one module each, every one exposing ``add_parser(subparsers)`` (which sets
the handler as ``func``) so that :mod:`jaxmed.cli` only has to call it."""

from pathlib import Path

from jaxmed.errors import ConfigError


def run_env_section(run_dir, env_name: str | tuple[str, ...], advice: str) -> dict:
    """The ``env:`` section of ``RUN_DIR/config.yaml`` if that run trained ``env_name`` (or one of several
    names); else a :class:`ConfigError` ending with ``advice`` (what the user should run instead).
    Checked before any model is loaded."""
    from jaxmed.config import load_yaml

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a jaxmed run directory (no config.yaml)")
    env = load_yaml(path).get("env")
    name = env.get("name") if isinstance(env, dict) else None
    names = (env_name,) if isinstance(env_name, str) else tuple(env_name)
    if name not in names:
        trained = f"environment {name!r}" if name else "a landmark environment (no env.name)"
        wanted = " or ".join(repr(n) for n in names)
        raise ConfigError(f"{run_dir}: this run trained {trained}, not {wanted}; {advice}")
    return env


def add_image_run_args(p, env_id: str, out_help: str) -> None:
    """The arguments every command that applies a trained run to a new image takes: the positional
    ``image``, ``--checkpoint`` (a run of ``env_id``) and ``-o`` / ``--out`` (``out_help``)."""
    p.add_argument("image", help="NIfTI image (any orientation / voxel size) or DICOM directory")
    p.add_argument("--checkpoint", required=True, help=f"run directory of `jaxmed train` with env {env_id}")
    p.add_argument("-o", "--out", required=True, help=out_help)


def add_config_args(p, config_help: str, overrides_help: str) -> None:
    """The positional arguments of every command that runs an experiment YAML: ``config`` (the file,
    ``config_help``) and ``overrides`` (zero or more ``section.key=value`` strings applied on top of it,
    ``overrides_help``)."""
    p.add_argument("config", help=config_help)
    p.add_argument("overrides", nargs="*", help=overrides_help)


def add_run_args(p, run_dir_help: str) -> None:
    """The options of a command that trains into a run directory: ``--run-dir`` (``run_dir_help``; see
    :func:`run_dir`) and ``--quiet`` (no progress bar)."""
    p.add_argument("--run-dir", help=run_dir_help)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_dir(args, suffix: str = "") -> Path:
    """The run directory of a command with :func:`add_config_args` and :func:`add_run_args`: ``--run-dir``
    when given, else ``runs/<config file name without extension><suffix>``."""
    return Path(args.run_dir) if args.run_dir else Path("runs") / f"{Path(args.config).stem}{suffix}"


def add_detection_options(p) -> None:
    """The test-time options of landmark detection that ``jaxmed detect`` and ``jaxmed evaluate`` share
    (:class:`jaxmed.detect.LandmarkDetector`; :func:`detection_options` reads them back):
    ``--intensity-scales``, ``--split-starts`` and ``--level-step-limit``, each defaulting to the run's
    ``eval`` section, and ``--start-from`` / ``--start-radius``."""
    import argparse

    from jaxmed.detect import START_FROM

    p.add_argument("--intensity-scales", type=float, nargs="+", metavar="S",
                   help="landmark and registration runs: test-time intensity augmentation, each image also run with its intensities "
                        "times every S and all end points pooled (e.g. 0.7 0.85 1 1.15 1.3: five times the work; "
                        "default: the run's eval.intensity_scales, 1 unless set)")
    p.add_argument("--split-starts", action=argparse.BooleanOptionalAction, default=None,
                   help="with several intensity scales: each start runs on one copy only, so the copies cost one "
                        "copy's work (default: the run's eval.split_starts)")
    p.add_argument("--level-step-limit", type=int, metavar="N",
                   help="an agent that has made N moves at one search level without oscillating moves on to the "
                        "finer level (or ends at the finest); 0: no limit (default: the run's eval.level_step_limit, "
                        "else as in training)")
    p.add_argument("--start-from", choices=START_FROM, default="grid",
                   help="landmark runs: where the agents start: grid (the run's evaluation starts) or registration "
                        "(near each landmark's template position carried to the image by an affine registration; "
                        "the registration's seconds count in the detection time; default %(default)s)")
    p.add_argument("--start-radius", type=float, default=8.0, metavar="MM",
                   help="with --start-from registration: the other starts lie within MM of the registered point "
                        "(default %(default)s)")


def detection_options(args) -> dict:
    """The :func:`add_detection_options` of parsed ``args`` as :class:`jaxmed.detect.DetectionOptions` fields."""
    return {"intensity_scales": args.intensity_scales, "split_starts": args.split_starts,
            "level_step_limit": args.level_step_limit, "start_from": args.start_from, "start_radius_mm": args.start_radius}
