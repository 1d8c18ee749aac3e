"""``jaxmed register FIXED MOVING -o transform.txt (--checkpoint RUN_DIR | --method optax)``: rigid registration.

Loads both images (NIfTI or DICOM, any orientation and voxel size; :func:`jaxmed.data.load_image`
reorients them to RAS, resamples them to isotropic voxels and normalises intensities) and finds the
rigid transform that aligns MOVING to FIXED, either

* with a trained registration agent (``--checkpoint``, a run of ``registration-v0``): greedy episode
  (or look-ahead search, ``--lookahead K``, :mod:`jaxmed.agents.lookahead`) from the identity, coarse
  to fine, on images conformed to the run's voxel size; ``--intensity-scales S ...`` and ``--starts N``
  run one episode per intensity copy of MOVING and start, in one batch, and pool their answers
  (:func:`jaxmed.registration_agent.pool_rigid`; the spread is printed); or
* with the classical optax baseline (``--method optax``, :mod:`jaxmed.registration_baseline`).

Output ``transform.txt``: a 4x4 homogeneous matrix (``#`` comment lines, then 4 rows) that maps
**fixed world RAS mm -> moving world RAS mm**: the anatomy at fixed-image point ``x`` is at
moving-image point ``T x``. (To bring the moving image onto the fixed grid, sample it at ``T x`` for
every fixed voxel position ``x``; that is what ``--resampled`` writes.) ``--resampled OUT.nii.gz``
writes the moving image (original intensities, trilinear, 0 outside) resampled on the fixed image's
own grid (its RAS-reoriented voxels and affine, original voxel size).

Rotation centre ``c`` (world mm of the fixed image): ``--centre X Y Z`` or, by default, the centre of
the fixed image's voxel grid. The agent's observation is centred there (a run trained with
``env.centre: landmarks`` expects the centroid of its TRE landmarks: give ``--centre`` for it).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmed.commands import run_env_section
from jaxmed.errors import ConfigError, ImageError, check_writable
from jaxmed.registration_agent import ENV_NAME, RegistrationAgent

TRANSFORM_HEADER = (
    "jaxmed rigid transform: 4x4 matrix mapping FIXED world RAS mm -> MOVING world RAS mm (x_moving = T @ [x_fixed, 1])\n"
    "fixed: {fixed}\nmoving: {moving}\nmethod: {method}"
)


# ------------------------------------------------------------------ checks and files


def check_registration_run(run_dir) -> dict:
    """The ``env:`` section of ``RUN_DIR/config.yaml`` if that run trained ``registration-v0``; else a
    :class:`ConfigError` (checked before anything is loaded)."""
    return run_env_section(run_dir, ENV_NAME, "`jaxmed register --checkpoint` needs a registration run (or use --method optax)")


def write_transform(path, matrix, *, fixed: str, moving: str, method: str, overwrite: bool = False) -> Path:
    """Write a 4x4 matrix as text (header comments, 4 rows); refuses to overwrite unless asked."""
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.asarray(matrix, np.float64).reshape(4, 4), fmt="%.8f",
               header=TRANSFORM_HEADER.format(fixed=fixed, moving=moving, method=method))
    return path


def read_transform(path) -> np.ndarray:
    """Read a transform written by :func:`write_transform`: ``(4, 4)`` float64."""
    path = Path(path)
    try:
        m = np.loadtxt(path, comments="#")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a transform file ({e})") from None
    if m.shape != (4, 4):
        raise ConfigError(f"{path}: expected a 4x4 matrix, got shape {m.shape}")
    return m


def resample_moving(fixed, moving, matrix, chunk: int = 1 << 20) -> np.ndarray:
    """``fixed.shape`` float32: ``moving`` sampled (trilinear, 0 outside) at ``matrix @ x`` for the world
    position ``x`` of every voxel of ``fixed`` (both :class:`~jaxmed.data.Volume`)."""
    from scipy import ndimage

    grid = np.linalg.inv(moving.affine) @ np.asarray(matrix, np.float64) @ fixed.affine  # fixed voxel -> moving voxel
    idx = np.indices(fixed.shape).reshape(3, -1).astype(np.float64)
    out = np.empty(idx.shape[1], np.float32)
    data = np.asarray(moving.data, np.float32)
    for s in range(0, idx.shape[1], chunk):
        pts = grid[:3, :3] @ idx[:, s : s + chunk] + grid[:3, 3:4]
        out[s : s + chunk] = ndimage.map_coordinates(data, pts, order=1, mode="constant", cval=0.0)
    return out.reshape(fixed.shape)


def _load(path, spacing: float):
    from jaxmed.data import load_image

    if not Path(path).exists():
        raise ImageError(f"{path}: image not found")
    return load_image(path, spacing=spacing)


# ------------------------------------------------------------------ the agent


def agent_transform(run, fixed, moving, *, centre=None, lookahead: int = 1, depth: int = 2, max_steps: int | None = None,
                    intensity_scales=None, starts: int = 1):
    """One pair with a trained run (seed 0): the :class:`~jaxmed.registration_agent.RegistrationAnswer`
    of a fresh :class:`~jaxmed.registration_agent.RegistrationAgent` (its seconds include compilation)."""
    agent = RegistrationAgent(run, lookahead=lookahead, depth=depth, max_steps=max_steps, intensity_scales=intensity_scales,
                              starts=starts)
    return agent.register(fixed, moving, centre=centre)


# ------------------------------------------------------------------ the command


def register_command(fixed_path, moving_path, out, *, checkpoint=None, method: str | None = None, loss: str = "ncc",
                     spacing: float | None = None, centre: Sequence[float] | None = None, lookahead: int = 1, depth: int = 2,
                     intensity_scales: Sequence[float] | None = None, starts: int = 1, resampled=None,
                     overwrite: bool = False) -> dict:
    """Run ``jaxmed register`` (module docstring); returns a summary dict."""
    from jaxmed.data import Volume, load_image, save_nifti

    if (checkpoint is None) == (method is None):
        raise ConfigError("give either --checkpoint RUN_DIR (a trained registration agent) or --method optax")
    if method is not None and method != "optax":
        raise ConfigError(f"unknown --method {method!r}; available: optax")
    check_writable(out, overwrite)
    if resampled is not None:
        if not str(resampled).endswith((".nii", ".nii.gz")):
            raise ImageError(f"{resampled}: --resampled must end in .nii or .nii.gz")
        check_writable(resampled, overwrite)
    if lookahead < 1 or depth < 0:
        raise ConfigError(f"--lookahead must be >= 1 and --depth >= 0, got {lookahead}, {depth}")
    if checkpoint is None and (intensity_scales is not None or starts != 1):
        raise ConfigError("--intensity-scales and --starts pool the episodes of an agent: they need --checkpoint")
    if starts < 1:
        raise ConfigError(f"--starts must be >= 1, got {starts}")
    run = None
    if checkpoint is not None:
        check_registration_run(checkpoint)  # fail before reading anything else
        from jaxmed.runs import load_params

        run = load_params(checkpoint)
        run_spacing = float(run[0].data.spacing)
        if spacing is not None and float(spacing) != run_spacing:
            raise ConfigError(f"--spacing {spacing} differs from the run's voxel size {run_spacing} mm; the agent needs the latter")
        spacing = run_spacing
    spacing = 2.0 if spacing is None else float(spacing)
    fixed, moving = _load(fixed_path, spacing), _load(moving_path, spacing)
    spread = None
    if run is not None:
        ans = agent_transform(run, fixed, moving, centre=centre, lookahead=lookahead, depth=depth,
                              intensity_scales=intensity_scales, starts=starts)
        matrix, seconds, steps = ans.matrix, ans.seconds, ans.steps
        how = f"agent {checkpoint}" + (f" with look-ahead top_k={lookahead} depth={depth}" if lookahead > 1 else " (greedy)")
        if ans.episodes > 1:
            spread = ans.spread_mm
            how += f", {ans.episodes} episodes pooled (spread {spread:.2f} mm)"
    else:
        from jaxmed.registration_baseline import BaselineConfig, register_volumes

        res = register_volumes(fixed, moving, BaselineConfig(loss=loss), centre=centre)
        matrix, seconds, steps = res.matrix, res.seconds, None
        how = f"optax baseline ({loss}, {spacing} mm)"
    write_transform(out, matrix, fixed=str(fixed_path), moving=str(moving_path), method=how, overwrite=overwrite)
    summary = {"transform": str(out), "matrix": matrix.tolist(), "seconds": seconds, "method": how, "steps": steps,
               "spread_mm": spread}
    if resampled is not None:
        fixed_native = load_image(fixed_path, normalise=False)
        moving_native = load_image(moving_path, normalise=False)
        data = resample_moving(fixed_native, moving_native, matrix)
        save_nifti(Volume(data, fixed_native.affine, source=str(resampled)), resampled, overwrite=overwrite)
        summary["resampled"] = str(resampled)
    return summary


def _run(args) -> int:
    s = register_command(args.fixed, args.moving, args.out, checkpoint=args.checkpoint, method=args.method, loss=args.loss,
                         spacing=args.spacing, centre=args.centre, lookahead=args.lookahead, depth=args.depth,
                         intensity_scales=args.intensity_scales, starts=args.starts, resampled=args.resampled,
                         overwrite=args.overwrite)
    print(s["transform"])
    if "resampled" in s:
        print(s["resampled"])
    m = np.asarray(s["matrix"])
    print(f"{s['method']}: {s['seconds']:.2f} s" + (f", {s['steps']} steps" if s["steps"] is not None else ""))
    print("fixed world RAS mm -> moving world RAS mm:")
    for row in m:
        print("  " + " ".join(f"{v:10.4f}" for v in row))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``register`` subcommand to an ``argparse`` subparsers object (handler in ``func``)."""
    p = subparsers.add_parser("register", help="rigidly register MOVING to FIXED (trained agent or optax baseline), write a 4x4 transform")
    p.add_argument("fixed", help="fixed image (NIfTI or DICOM directory)")
    p.add_argument("moving", help="moving image (NIfTI or DICOM directory)")
    p.add_argument("-o", "--out", required=True, help="output transform text file (4x4, fixed world RAS mm -> moving world RAS mm)")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--checkpoint", help="run directory of `jaxmed train` with env registration-v0")
    how.add_argument("--method", choices=("optax",), help="classical intensity-based registration instead of an agent")
    p.add_argument("--loss", choices=("ncc", "mi"), default="ncc",
                   help="optax similarity: ncc (same modality) or mi (multimodal); default %(default)s")
    p.add_argument("--spacing", type=float, help="voxel size (mm) images are conformed to (agent: the run's; optax default 2)")
    p.add_argument("--centre", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="rotation centre, fixed world RAS mm (default: the fixed image's grid centre)")
    p.add_argument("--lookahead", type=int, default=1, help="agent: look-ahead candidates per step (1 = greedy)")
    p.add_argument("--depth", type=int, default=2, help="agent: steps simulated per look-ahead candidate (default %(default)s)")
    p.add_argument("--intensity-scales", type=float, nargs="+", metavar="S",
                   help="agent: also register copies of MOVING with its intensities times each factor and pool the answers "
                        "(default: the run's eval.intensity_scales)")
    p.add_argument("--starts", type=int, default=1,
                   help="agent: episodes per copy, the identity and seeded starts within 5 mm / 5 deg of it, pooled (default %(default)s)")
    p.add_argument("--resampled", help="also write the moving image resampled on the fixed grid (.nii / .nii.gz)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_run)
    return p
