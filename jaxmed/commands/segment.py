"""``jaxmed segment IMAGE --checkpoint RUN_DIR -o mask.nii.gz``: segment a structure with a trained
segmentation run: a threshold agent (``threshold-seg-v0``, :mod:`jaxmed.envs.threshold_seg`) or voxel
agents (``voxel-seg-v0``, :mod:`jaxmed.envs.voxel_seg`, learner ``voxel_q``).

The image (NIfTI or DICOM series, any orientation / voxel size) is read; a ``D``³ crop of the
run's voxel size (percentile-normalised like the training crops) is cut around ``--center`` (world RAS mm) or, by default, around
the structure's centroid in the run's template (right for images in the template's space). The
greedy agent runs from the env's fixed evaluation starts (no ground truth is read: the crop's
label is empty); the final masks of the starts are combined by majority vote. Voxel agents that start
from the atlas map get the template's label cut around the template centroid and laid on the crop
(the translation-only atlas transfer of their training crops). The mask is written
in the *input image's own grid* (its shape and affine, before any reorientation): every voxel takes
the crop's value at the nearest crop voxel, 0 outside the crop; uint8 0/1 NIfTI.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from jaxmed.commands import add_image_run_args, run_env_section
from jaxmed.errors import ConfigError, ImageError, check_writable

ENV_NAMES = ("threshold-seg-v0", "voxel-seg-v0")
ENV_NAME = ENV_NAMES[0]


def parse_center(text: str | None):
    """``"x,y,z"`` -> ``(3,)`` float64 world RAS mm (``None`` stays ``None``); :class:`ConfigError` otherwise."""
    if text is None:
        return None
    try:
        c = np.array([float(v) for v in str(text).split(",")], np.float64)
    except ValueError:
        c = np.zeros(0)
    if c.shape != (3,) or not np.all(np.isfinite(c)):
        raise ConfigError(f"--center must be three comma-separated numbers (world RAS mm), got {text!r}")
    return c


def _native_grid(image: Path):
    """The input's own grid as a :class:`Volume` (no reorientation)."""
    from jaxmed.data.image_io import read_dicom_series, read_nifti

    return read_dicom_series(image) if image.is_dir() else read_nifti(image)


def segment_volume(volume, centre, env, env_params, policy, *, crop_spacing: float, n_starts: int, seed: int = 0,
                   atlas=None):
    """Crop Volume of the 0/1 mask: the greedy agent on the crop of ``volume`` (normalised, RAS) around
    ``centre`` (world mm); majority vote over ``n_starts`` starts. ``atlas``: the crop's ``(D, D, D)``
    atlas map (start of atlas-started voxel agents; empty when ``None``)."""
    from jaxmed.agents.rollout import greedy_rollout
    from jaxmed.data.structures import crop_volume, image_bank, normalise_crop
    from jaxmed.data.volume import Volume

    d = env.config.crop_size
    crop = normalise_crop(crop_volume(volume, centre, d, crop_spacing, order=1))
    bank = image_bank(crop, np.zeros(crop.shape) if atlas is None else atlas, env.config.structure)
    states = env.eval_states(env_params, bank, n_starts, seed=seed)
    out = jax.jit(lambda b, s: greedy_rollout(policy, env, env_params, b, s))(bank, states)
    masks = np.asarray(jax.vmap(env.mask, in_axes=(0, None))(out["final_state"], bank))
    vote = masks.mean(axis=0) > 0.5
    return Volume(vote.astype(np.float32), crop.affine, source=f"segmentation of {volume.source}")


def to_native_grid(mask_crop, native) -> np.ndarray:
    """``mask_crop`` (a crop Volume) looked up by nearest neighbour at every voxel centre of ``native``'s
    grid; 0 outside the crop. ``native.shape`` uint8."""
    from jaxmed.data import geometry

    shape = native.shape
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    to_crop = np.linalg.inv(mask_crop.affine) @ native.affine
    vox = np.rint(geometry.apply_affine(to_crop, idx)).astype(np.int64)
    inside = np.all((vox >= 0) & (vox < np.asarray(mask_crop.shape)), axis=1)
    out = np.zeros(len(idx), np.uint8)
    v = vox[inside]
    out[inside] = np.asarray(mask_crop.data)[v[:, 0], v[:, 1], v[:, 2]] > 0.5
    return out.reshape(shape)


def write_mask(data: np.ndarray, affine: np.ndarray, out: Path, overwrite: bool) -> Path:
    """uint8 NIfTI with ``affine`` as sform and qform, written to a temporary name and renamed."""
    import nibabel as nib

    check_writable(out, overwrite)
    img = nib.Nifti1Image(np.asarray(data, np.uint8), affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if out.name.endswith(".nii.gz") else ".nii"
    tmp = out.with_name(out.name[: -len(suffix)] + ".part" + suffix)
    nib.save(img, str(tmp))
    tmp.replace(out)
    return out


def segment_command(image, checkpoint, out, *, center=None, n_starts: int = 4, overwrite: bool = False) -> dict:
    """What ``jaxmed segment`` does; returns a summary (voxels in the mask, its volume in mm³, the crop centre)."""
    from jaxmed.agents import learners
    from jaxmed.data import load_image
    from jaxmed.data.run_data import seg_template
    from jaxmed.data.structures import centroid_world, crop_volume
    from jaxmed.data.volume import Volume
    from jaxmed.runs import load_run, seed_params

    image, out = Path(image), Path(out)
    if not (out.name.endswith(".nii.gz") or out.name.endswith(".nii")):
        raise ImageError(f"{out}: output name must end in .nii or .nii.gz")
    check_writable(out, overwrite)  # refuse before any work
    if n_starts < 1:
        raise ConfigError(f"--n-starts must be >= 1, got {n_starts}")
    centre = parse_center(center)
    if not image.exists():
        raise ImageError(f"{image}: no such file or directory")
    run_env_section(checkpoint, ENV_NAMES, "`jaxmed segment` needs a threshold-seg-v0 or voxel-seg-v0 run (configs/seg/*.yaml)")
    exp, params = load_run(checkpoint)  # the env's evaluation params: eval_max_steps applied
    params = seed_params(exp.cfg, params, 0)  # a run trained with --seeds S answers with its first seed
    cfg, network, env, env_params = exp.cfg, exp.network, exp.env, exp.eval_params
    native = _native_grid(image)
    volume = load_image(image, normalise=False)  # the crop is normalised (like the training crops), not the image
    atlas = None
    if centre is None or getattr(env.config, "start", None) == "atlas":
        tpl, tpl_mask = seg_template(cfg.data, env.config.structure)
        tpl_centre = centroid_world(tpl, tpl_mask)
        centre = tpl_centre if centre is None else centre
        if getattr(env.config, "start", None) == "atlas":
            label = Volume(tpl_mask.astype(np.float32), tpl.affine)
            atlas = crop_volume(label, tpl_centre, env.config.crop_size, float(cfg.data.spacing), order=0).data > 0.5
    if not volume.contains(centre[None])[0]:
        raise ConfigError(f"{image}: the crop centre {np.round(centre, 1).tolist()} mm lies outside the image; give --center")
    learner = cfg.train.learner
    mask_crop = segment_volume(volume, centre, env, env_params, lambda obs: learners.policy_action(learner, network, params, obs),
                               crop_spacing=float(cfg.data.spacing), n_starts=n_starts, seed=cfg.train.seed, atlas=atlas)
    data = to_native_grid(mask_crop, native)
    write_mask(data, native.affine, out, overwrite)
    voxel_mm3 = float(abs(np.linalg.det(native.affine[:3, :3])))
    return {"out": str(out), "voxels": int(data.sum()), "volume_mm3": float(data.sum() * voxel_mm3),
            "center_mm": np.round(centre, 2).tolist(), "structure": env.config.structure}


def _run(args) -> int:
    doc = segment_command(args.image, args.checkpoint, args.out, center=args.center, n_starts=args.n_starts,
                          overwrite=args.overwrite)
    print(doc["out"])
    print(f"{doc['structure']}: {doc['voxels']} voxels ({doc['volume_mm3']:.0f} mm^3), crop centred at {doc['center_mm']} mm (RAS)")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``segment`` subcommand (handler in ``func``)."""
    p = subparsers.add_parser("segment", help="segment a structure with a trained threshold-seg or voxel-seg run, write a NIfTI mask")
    add_image_run_args(p, " or ".join(ENV_NAMES), "output mask (.nii / .nii.gz, uint8, the input image's grid)")
    p.add_argument("--center", help="crop centre x,y,z in world RAS mm (default: the structure's centroid in the run's template)")
    p.add_argument("--n-starts", type=int, default=4, help="start windows whose masks are majority-voted (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_run)
    return p
