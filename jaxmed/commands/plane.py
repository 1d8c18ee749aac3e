"""``jaxmed plane IMAGE --checkpoint RUN_DIR -o plane.json [--png plane.png]``: find a view plane.

Loads any NIfTI / DICOM image, conforms it to the run's voxel size, runs the trained greedy
view-plane agent (:mod:`jaxmed.envs.plane`) from fixed starts that use no ground truth
(:meth:`PlaneEnv.prior_states`: the run's template plane placed relative to the image centre, see
:func:`template_prior`, or the world-axis plane through the centre when the run has no template;
plus seeded tilts), and answers the robust mean of the planes the episodes end on: the
coordinate-wise median of the unit normals (renormalised) and the median of the world offsets. Writes a JSON file with the normal, the
offset and a point on the plane (world RAS mm), and optionally a PNG of the image resliced on the
found plane beside a perpendicular slice showing the plane's trace.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.commands import add_image_run_args, run_env_section
from jaxmed.errors import ConfigError, check_writable

ENV_NAME = "plane-v0"


# ------------------------------------------------------------------ the run directory


def check_plane_run(run_dir: str | Path) -> dict:
    """Read ``RUN_DIR/config.yaml`` and check that it trained ``plane-v0``; returns the env section.

    Raises :class:`ConfigError` for a directory that is not a run or a run of another environment,
    before any model is loaded.
    """
    return run_env_section(run_dir, ENV_NAME, "`jaxmed plane` needs a view-plane run (for landmark runs use `jaxmed detect`)")


# ------------------------------------------------------------------ finding the plane


def robust_plane(normals: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, float]:
    """Robust mean of planes ``normals`` ``(n, 3)`` (unit, oriented alike), ``offsets`` ``(n,)`` (world,
    ``n . x = d``): the renormalised coordinate-wise median normal and the median offset."""
    n = np.median(np.asarray(normals, np.float64), axis=0)
    n = n / max(np.linalg.norm(n), 1e-12)
    return n, float(np.median(np.asarray(offsets, np.float64)))


def template_prior(data_cfg, env) -> tuple[np.ndarray, float] | None:
    """The start prior of a run: the env's plane on the run's template (``data.source``), as
    ``(normal (3,), offset about the template's grid centre)`` in the env's orientation; ``None`` when
    the data config names no template (then the world-axis plane is the prior)."""
    if getattr(data_cfg, "source", None) is None:
        return None
    from jaxmed.data import run_data

    reference = run_data.template(data_cfg)
    if reference is None:  # a source without an atlas (e.g. a folder of scans with no template)
        return None
    volume, landmarks = reference
    n, d = env.definition.from_landmarks(landmarks)
    if n[env.definition.normal_axis_index] < 0:
        n, d = -n, -d
    centre = volume.voxel_to_world((np.array(volume.shape) - 1) / 2)
    return n, float(d - n @ centre)


class PlaneSearch:
    """The greedy view-plane search of one policy, jitted once and run on many images.

    ``policy_fn(params, obs (E, 1, ...)) -> actions (E, 1)``; ``eval_params``: the env's evaluation
    parameters as the run builds them (:func:`jaxmed.experiment.make_env`; their ``max_steps`` bounds
    every search). ``jax.jit`` keeps one compiled search per bank shape, so the images of one shape
    (and every parameter set of one network) compile once."""

    def __init__(self, env, eval_params, policy_fn):
        from jaxmed.agents.rollout import greedy_rollout

        self.env, self.eval_params = env, eval_params
        steps = int(eval_params.max_steps)

        def search(params, states, bank):
            return greedy_rollout(lambda obs: policy_fn(params, obs), env, eval_params, bank, states, max_steps=steps)

        self._search = jax.jit(search)

    def find(self, volume, params, *, factors=(1,), dtype: str = "float32", n_starts: int = 9, seed: int = 0,
             prior: tuple[np.ndarray, float] | None = None, full_scale: float | None = None) -> dict:
        """Search ``volume`` (a conformed :class:`jaxmed.data.Volume`) with the policy's ``params`` from
        ``n_starts`` starts around ``prior`` (``(normal, offset about the image centre)``; default: the
        world-axis plane through the centre); ``factors``, ``dtype``, ``full_scale``: the bank's, as the
        run's ``data`` section has them.

        Returns ``{"normal" (3,), "offset", "point" (3,), "pivot" (3,), "normals" (E, 3), "offsets" (E,),
        "steps" (E,)}`` (NumPy, world RAS mm): the robust mean plane, the projection of the image
        centre onto it, and every start's final plane."""
        from jaxmed.data import Landmarks, build_bank

        env = self.env
        labels = env.required_labels
        # The bank needs landmark positions; nothing here reads them (no reward, no target stop).
        centre = volume.voxel_to_world((np.array(volume.shape) - 1) / 2)
        placeholder = Landmarks(labels, np.repeat(centre[None], len(labels), 0), source=str(volume.source))
        bank = build_bank([(volume, placeholder)], labels, factors=factors, max_crop=3, dtype=dtype, packed=env.wants_packed_bank,
                          full_scale=full_scale)
        max_tilt = min(10.0, 0.5 * float(self.eval_params.max_start_angle_deg))
        normal, offset = (None, 0.0) if prior is None else prior
        states = env.prior_states(bank, n_starts, seed=seed, max_angle_deg=max_tilt, normal=normal, offset=offset)
        res = self._search(params, states, bank)
        final = res["final_state"]
        normals, offsets = jax.vmap(env.plane_world, in_axes=(0, None))(final, bank)
        normals, offsets = np.asarray(normals)[:, 0], np.asarray(offsets)[:, 0]
        normal, offset = robust_plane(normals, offsets)
        pivot = np.asarray(env.pivot(bank, 0), np.float64)
        point = pivot - (normal @ pivot - offset) * normal
        return {"normal": normal, "offset": offset, "point": point, "pivot": pivot, "normals": normals,
                "offsets": offsets, "steps": np.asarray(res["steps"])}


def find_plane(volume, env, eval_params, policy, **search) -> dict:
    """One image searched by a greedy ``policy`` (``obs (E, 1, ...) -> actions (E, 1)``, parameters
    closed over): :meth:`PlaneSearch.find` with the same keywords (``factors``, ``dtype``,
    ``n_starts``, ``seed``, ``prior``, ``full_scale``). Compiles on every call; to search many images
    or seeds build one :class:`PlaneSearch`."""
    return PlaneSearch(env, eval_params, lambda _, obs: policy(obs)).find(volume, None, **search)


# ------------------------------------------------------------------ outputs


def plane_json(result: dict, definition, image: str, checkpoint: str) -> dict:
    """The JSON document written by ``jaxmed plane``."""
    normals = np.asarray(result["normals"])
    spread = np.degrees(np.arccos(np.clip(np.abs(normals @ result["normal"]), 0.0, 1.0)))
    return {
        "plane": definition.name,
        "description": definition.description,
        "coordinates": "world RAS mm; the plane is {x : normal . x = offset}",
        "normal": [round(float(v), 6) for v in result["normal"]],
        "offset_mm": round(float(result["offset"]), 4),
        "point_mm": [round(float(v), 4) for v in result["point"]],
        "image": str(image),
        "checkpoint": str(checkpoint),
        "starts": int(len(normals)),
        "start_spread_deg": {"median": round(float(np.median(spread)), 3), "max": round(float(spread.max()), 3)},
        "per_start": [{"normal": [round(float(v), 6) for v in n], "offset_mm": round(float(d), 4), "steps": int(s)}
                      for n, d, s in zip(normals, result["offsets"], result["steps"])],
    }


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    tmp.replace(path)


def reslice(volume, centre, normal, u, size: int, spacing: float) -> np.ndarray:
    """``(size, size)`` float32: ``volume`` sampled on the plane through ``centre`` with unit ``normal``,
    rows along ``u`` (unit, in the plane), ``spacing`` mm apart (outside the image: 0)."""
    v = np.cross(normal, u)
    stack = jnp.asarray(volume.data, jnp.float32)[None]
    out = _world_sampler()(stack, 0, np.linalg.inv(volume.affine), centre, normal, u, v, size=(size, size), n_slices=1,
                        spacing=spacing, slice_spacing=spacing)
    return np.asarray(out[0])


@functools.lru_cache(maxsize=1)
def _world_sampler():
    """:func:`jaxmed.ops.plane.sample_plane_world_from_stack`, jitted once per process."""
    from jaxmed.ops.plane import sample_plane_world_from_stack

    return jax.jit(sample_plane_world_from_stack, static_argnames=("size", "n_slices", "margin"))


def plot_plane(volume, result: dict, definition, path: Path, *, overwrite: bool = False) -> Path:
    """PNG: the image resliced on the found plane, and a perpendicular slice (through the same point,
    containing the normal) with the plane's trace in yellow."""
    from jaxmed.data.draw import pyplot
    from jaxmed.ops.plane import plane_basis

    check_writable(path, overwrite)
    plt = pyplot()
    n = np.asarray(result["normal"], np.float64)
    u = np.asarray(plane_basis(n, np.eye(3)[definition.in_plane_axis_index])[0], np.float64)
    spacing = float(np.min(volume.spacing))
    extent_mm = float(np.max(np.asarray(volume.shape) * volume.spacing))
    size = int(min(256, np.ceil(extent_mm / spacing)))
    half = (size - 1) / 2 * spacing
    found = reslice(volume, result["point"], n, u, size, spacing)
    across = reslice(volume, result["point"], u, n, size, spacing)  # rows along n: the found plane is row 0
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    box = (-half, half, -half, half)
    axes[0].imshow(found.T, cmap="gray", origin="lower", extent=box)
    axes[0].set_title(f"{definition.name}: the found plane", fontsize=9)
    axes[0].set_xlabel(f"mm along {definition.in_plane_axis} (projected)", fontsize=8)
    axes[1].imshow(across.T, cmap="gray", origin="lower", extent=box)
    axes[1].axvline(0.0, color="yellow", lw=1)  # zero along the normal: the found plane
    axes[1].set_title("perpendicular slice, plane in yellow", fontsize=9)
    axes[1].set_xlabel("mm along the normal", fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
    fig.suptitle(f"normal {np.round(n, 3).tolist()}, offset {result['offset']:.1f} mm (RAS)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ the subcommand


def plane_command(image: str | Path, checkpoint: str | Path, out: str | Path, png: str | Path | None = None, *,
                  overwrite: bool = False, n_starts: int = 9) -> dict:
    """What ``jaxmed plane`` does; returns the JSON document written to ``out``."""
    from jaxmed import experiment as ex
    from jaxmed.agents import learners
    from jaxmed.data import conform, load_image
    from jaxmed.runs import load_params, seed_params

    out = Path(out)
    check_writable(out, overwrite)  # refuse before any work
    if png is not None:
        check_writable(Path(png), overwrite)
    if n_starts < 1:
        raise ConfigError(f"--n-starts must be >= 1, got {n_starts}")
    check_plane_run(checkpoint)
    cfg, network, params = load_params(checkpoint)
    params = seed_params(cfg, params, 0)  # a run trained with --seeds S answers with its first seed, as jaxmed register
    env, _, eval_params = ex.make_env(cfg)  # as training and evaluation build it
    volume = conform(load_image(image), cfg.data.spacing)
    learner = cfg.train.learner
    result = find_plane(volume, env, eval_params, lambda obs: learners.policy_action(learner, network, params, obs),
                        factors=tuple(cfg.data.factors), dtype=cfg.data.dtype, n_starts=n_starts,
                        prior=template_prior(cfg.data, env), full_scale=cfg.data.intensity_ceiling)
    doc = plane_json(result, env.definition, str(image), str(checkpoint))
    _write_atomic(out, json.dumps(doc, indent=2) + "\n")
    if png is not None:
        plot_plane(volume, result, env.definition, Path(png), overwrite=overwrite)
    return doc


def _run(args) -> int:
    doc = plane_command(args.image, args.checkpoint, args.out, args.png, overwrite=args.overwrite, n_starts=args.n_starts)
    print(args.out)
    if args.png:
        print(args.png)
    print(f"{doc['plane']}: normal {doc['normal']} (RAS), offset {doc['offset_mm']} mm, "
          f"through {doc['point_mm']} mm; spread over {doc['starts']} starts: {doc['start_spread_deg']['median']} deg median")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``plane`` subcommand to an ``argparse`` subparsers object (handler in ``func``)."""
    p = subparsers.add_parser("plane", help="find a trained view plane (e.g. ACPC, mid-sagittal) in a new image, write JSON")
    add_image_run_args(p, ENV_NAME, "output JSON file (normal, offset, a point on the plane)")
    p.add_argument("--png", help="also write a PNG of the image resliced on the found plane")
    p.add_argument("--n-starts", type=int, default=9, help="start planes whose answers are robustly averaged (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=_run)
    return p
