"""Classical intensity-based registration with optax: the baseline beside the registration agent and,
with landmark transfer, beside the landmark agents.

``register_volumes(fixed, moving)`` finds the transform ``T`` (fixed world RAS mm -> moving
world RAS mm, the same direction as :mod:`jaxmed.envs.registration` and ``jaxmed register``) that
makes ``moving(T x)`` look like ``fixed(x)``:

* parameters (``transform="rigid"``): 6 (translations mm, Euler angles degrees,
  :func:`jaxmed.ops.rigid.rigid_matrix`) about a centre ``c`` (default: the centre of the fixed
  image's voxel grid), starting from the identity (or, with ``init="moments"``, from the translation aligning the intensity centroids);
* ``transform="affine"``: 12 = those 6 + per-axis scale changes (percent) + 3 shears (percent),
  ``T x = R S H (x - c) + c + t`` (:func:`affine_matrix`); the levels listed in ``rigid_levels``
  optimise the rigid 6 only (a rigid start, then the full affine, as classical pipelines do);
* multi-resolution: both images are average-pooled by ``factors`` (coarse to fine, e.g. 4 then 2 on
  2 mm images: 8 mm then 4 mm voxels); at each level every fixed voxel inside the fixed image whose
  mapped position falls inside the moving image contributes; the moving image is sampled
  trilinearly (:func:`jaxmed.ops.resample.trilinear`);
* loss: ``"ncc"`` (negative normalised cross-correlation: mono-modal) or ``"mi"`` (negative mutual
  information from a soft joint histogram with Gaussian Parzen windows over ``bins`` bins of the
  intensities clipped to ``[0, 1]``: multimodal);
* optimiser: Adam (optax) with a fixed number of iterations and a learning rate (mm, degrees and
  percent per step) per level; the whole level is one jitted ``lax.scan``.

:func:`transfer_landmarks` registers an annotated template to a subject and carries the template's
landmarks over (``T^{-1}`` of each template point): the registration baseline of landmark
evaluation (:mod:`jaxmed.evaluation`).

Compilation is per image shape: ``pad_to`` pads every level to a fixed shape so that a benchmark
over many pairs compiles once (padding is masked out). The reported seconds are the wall time of
the whole call (pyramid, optimisation, device sync), compilation included unless it happened in an
earlier call with the same shapes.

:func:`pair_from_env` builds the same synthetic pairs the registration env renders (the fixed bank
volume and the moving image under the ground-truth perturbation, with the env's intensity remap).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmed.data.bank import _avg_pool, _level_affine
from jaxmed.data.volume import Volume
from jaxmed.errors import ConfigError
from jaxmed.ops.resample import trilinear
from jaxmed.ops.rigid import rigid_matrix

LOSSES = ("ncc", "mi")
TRANSFORMS = ("rigid", "affine")


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """Settings of :func:`register_volumes` (all per level lists are coarse to fine).

    Attributes:
      loss: ``"ncc"`` or ``"mi"``.
      factors: average-pooling factors of the levels, e.g. ``(4, 2)``.
      iterations: Adam iterations per level.
      learning_rate: Adam learning rate per level (mm and degrees per step).
      bins: histogram bins of the ``"mi"`` loss.
      transform: ``"rigid"`` (6 parameters) or ``"affine"`` (12).
      rigid_levels: how many of the first (coarsest) levels optimise the rigid parameters only
        (affine transform only; the others optimise all 12).
      init: ``"identity"`` or ``"moments"`` (start with the translation that aligns the intensity
        centroids of the two images, as classical pipelines do: large offsets are then no problem).
      samples: fixed voxels the loss reads per level (a fixed random subset, as Mattes MI samples;
        0: every voxel). Bounds the cost of fine levels.
    """

    loss: str = "ncc"
    factors: tuple[int, ...] = (4, 2)
    iterations: tuple[int, ...] = (80, 40)
    learning_rate: tuple[float, ...] = (1.0, 0.3)
    bins: int = 24
    transform: str = "rigid"
    rigid_levels: int = 0
    init: str = "identity"
    samples: int = 0

    def __post_init__(self):
        for name in ("factors", "iterations", "learning_rate"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if np.ndim(value) == 0 else tuple(value))
        if self.loss not in LOSSES:
            raise ConfigError(f"BaselineConfig: loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        n = len(self.factors)
        if n == 0 or len(self.iterations) != n or len(self.learning_rate) != n:
            raise ConfigError(f"BaselineConfig: factors, iterations and learning_rate need one entry per level, got {self.factors}, "
                              f"{self.iterations}, {self.learning_rate}")
        if (any(int(f) < 1 for f in self.factors) or any(int(i) < 1 for i in self.iterations)
                or any(not lr > 0 for lr in self.learning_rate)):
            raise ConfigError("BaselineConfig: factors and iterations must be >= 1 and learning rates > 0")
        if int(self.bins) < 4:
            raise ConfigError(f"BaselineConfig: bins must be >= 4, got {self.bins}")
        if self.transform not in TRANSFORMS:
            raise ConfigError(f"BaselineConfig: transform must be one of {', '.join(TRANSFORMS)}, got {self.transform!r}")
        if self.init not in ("identity", "moments"):
            raise ConfigError(f"BaselineConfig: init must be 'identity' or 'moments', got {self.init!r}")
        if int(self.samples) < 0:
            raise ConfigError(f"BaselineConfig: samples must be >= 0, got {self.samples}")
        if not 0 <= int(self.rigid_levels) <= n:
            raise ConfigError(f"BaselineConfig: rigid_levels must be in [0, {n}], got {self.rigid_levels}")


#: The landmark baseline: 12-dof affine, moments start, rigid at 8 mm then affine at 8, 4 and 2 mm
#: voxels (factors of a 2 mm image), mutual information (robust to intensity differences).
AFFINE_LANDMARK = BaselineConfig(loss="mi", factors=(4, 4, 2, 1), iterations=(60, 80, 60, 30),
                                 learning_rate=(1.0, 0.5, 0.2, 0.1), transform="affine", rigid_levels=1, init="moments",
                                 samples=50_000)


@dataclasses.dataclass(frozen=True)
class BaselineResult:
    """``matrix`` ``(4, 4)`` float64 fixed world -> moving world; ``params`` ``(6,)`` (rigid) or
    ``(12,)`` (affine, :func:`affine_matrix`) about ``centre``
    ``(3,)`` world mm; ``seconds`` wall time; ``loss`` the final loss of each level."""

    matrix: np.ndarray
    params: np.ndarray
    centre: np.ndarray
    seconds: float
    loss: tuple[float, ...]


# ------------------------------------------------------------------ losses


def ncc_loss(f, m, w):
    """Negative normalised cross-correlation of samples ``f``, ``m`` ``(N,)`` with weights ``w`` ``(N,)``."""
    n = jnp.maximum(w.sum(), 1.0)
    fc = f - jnp.sum(w * f) / n
    mc = m - jnp.sum(w * m) / n
    cov = jnp.sum(w * fc * mc)
    return -cov / jnp.sqrt(jnp.sum(w * fc * fc) * jnp.sum(w * mc * mc) + 1e-8)


def mi_loss(f, m, w, bins: int):
    """Negative mutual information (nats) of ``f``, ``m`` ``(N,)`` (clipped to ``[0, 1]``) with weights
    ``w``: soft joint histogram, Gaussian Parzen windows of width one bin spacing."""
    centres = jnp.linspace(0.0, 1.0, bins)
    sigma = 1.0 / (bins - 1)

    def window(v):
        k = jnp.exp(-0.5 * ((jnp.clip(v, 0.0, 1.0)[:, None] - centres[None, :]) / sigma) ** 2)
        return k / jnp.sum(k, axis=1, keepdims=True)

    wf, wm = window(f) * w[:, None], window(m)
    joint = wf.T @ wm / jnp.maximum(w.sum(), 1.0) + 1e-10
    joint = joint / joint.sum()
    pf, pm = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    return -jnp.sum(joint * jnp.log(joint / (pf * pm)))


# ------------------------------------------------------------------ transforms


def affine_matrix(params, centre):
    """``(4, 4)`` float32 ``T x = R S H (x - c) + c + t`` of ``params`` ``(12,)``: translation ``t`` (mm),
    Euler angles (degrees, :func:`jaxmed.ops.rigid.rigid_matrix`'s convention), scale changes
    ``S = diag(1 + s / 100)`` (percent) and shears ``H = [[1, h0, h1], [0, 1, h2], [0, 0, 1]] / 100``
    (percent); ``params[:6]`` alone give the rigid transform."""
    p = jnp.asarray(params, jnp.float32)
    rigid = rigid_matrix(p[:6], centre)
    r = rigid[:3, :3]
    h = p[9:12] / 100.0
    shear = jnp.eye(3, dtype=jnp.float32).at[0, 1].set(h[0]).at[0, 2].set(h[1]).at[1, 2].set(h[2])
    linear = r @ jnp.diag(1.0 + p[6:9] / 100.0) @ shear
    c = jnp.asarray(centre, jnp.float32)
    t = c + p[:3] - linear @ c
    return jnp.concatenate([jnp.concatenate([linear, t[:, None]], axis=1), jnp.asarray([[0.0, 0.0, 0.0, 1.0]], jnp.float32)], axis=0)


def _matrix(params, centre):
    return rigid_matrix(params, centre) if params.shape[-1] == 6 else affine_matrix(params, centre)


# ------------------------------------------------------------------ one level


@functools.partial(jax.jit, static_argnames=("loss", "iterations", "bins", "rigid_only", "samples"))
def _optimise_level(fixed, fixed_affine, fixed_extent, moving, moving_affine, moving_extent, params, centre, learning_rate, *,
                    loss: str, iterations: int, bins: int, rigid_only: bool = False, samples: int = 0):
    """Adam on the 6 or 12 parameters at one level (``rigid_only``: the first 6 of 12 move, the others
    stay). Arrays may be zero-padded beyond their ``*_extent``."""
    idx = jnp.stack(jnp.meshgrid(*(jnp.arange(s, dtype=jnp.float32) for s in fixed.shape), indexing="ij"), -1).reshape(-1, 3)
    f_vals = fixed.reshape(-1)
    if 0 < samples < idx.shape[0]:  # a fixed random subset of the fixed grid (same every iteration)
        pick = jax.random.choice(jax.random.key(0), idx.shape[0], (samples,), replace=False)
        idx, f_vals = idx[pick], f_vals[pick]
    f_valid = jnp.all(idx < fixed_extent.astype(jnp.float32), axis=-1)
    world = idx @ fixed_affine[:3, :3].T + fixed_affine[:3, 3]
    m_inv = jnp.linalg.inv(moving_affine)
    m_hi = moving_extent.astype(jnp.float32) - 1.0

    free = jnp.arange(params.shape[0]) < (6 if rigid_only else params.shape[0])

    def objective(p):
        t = _matrix(p, centre)
        mw = world @ t[:3, :3].T + t[:3, 3]
        mv = mw @ m_inv[:3, :3].T + m_inv[:3, 3]
        inside = jnp.all((mv >= 0.0) & (mv <= m_hi), axis=-1)
        w = (f_valid & inside).astype(jnp.float32)
        m_vals = trilinear(moving, mv)
        if loss == "ncc":
            return ncc_loss(f_vals, m_vals, w)
        return mi_loss(f_vals, m_vals, w, bins)

    opt = optax.adam(learning_rate)
    grad = jax.value_and_grad(objective)

    def body(carry, _):
        p, state = carry
        value, g = grad(p)
        g = jnp.where(free, g, 0.0)
        upd, state = opt.update(g, state, p)
        return (optax.apply_updates(p, upd), state), value

    (params, _), values = jax.lax.scan(body, (params, opt.init(params)), None, length=iterations)
    return params, objective(params)


def _pyramid(volume: Volume, factor: int, pad_to: Sequence[int] | None):
    data = _avg_pool(np.asarray(volume.data, np.float32), factor).astype(np.float32)
    extent = np.array(data.shape, np.int32)
    if pad_to is not None:
        target = [max(int(np.ceil(p / factor)), s) for p, s in zip(pad_to, data.shape)]
        data = np.pad(data, [(0, t - s) for t, s in zip(target, data.shape)])
    return data, _level_affine(np.asarray(volume.affine, np.float64), factor).astype(np.float32), extent


def grid_centre(volume: Volume) -> np.ndarray:
    """``(3,)`` world mm of the centre of a volume's voxel grid."""
    return volume.voxel_to_world((np.asarray(volume.shape, np.float64) - 1) / 2)


def intensity_centroid(volume: Volume) -> np.ndarray:
    """``(3,)`` world mm: the intensity-weighted centre of a volume (its grid centre if it is all zero)."""
    data = np.clip(np.asarray(volume.data, np.float64), 0.0, None)
    total = data.sum()
    if not total > 0:
        return grid_centre(volume)
    vox = np.array([(data.sum(axis=tuple(a for a in range(3) if a != i)) * np.arange(data.shape[i])).sum() for i in range(3)]) / total
    return volume.voxel_to_world(vox)


def register_volumes(fixed: Volume, moving: Volume, config: BaselineConfig = BaselineConfig(), *, centre=None,
                     pad_to: Sequence[int] | None = None) -> BaselineResult:
    """Register ``moving`` to ``fixed`` (module docstring; rigid or affine after ``config.transform``);
    intensities should be normalised to about ``[0, 1]`` (:func:`jaxmed.data.load_image` does).

    Args:
      centre: rotation centre, world mm (default: the fixed image's grid centre).
      pad_to: pad both images (level 0) to this shape so calls on different shapes share one
        compilation; must be at least as large as both images.
    """
    if not isinstance(config, BaselineConfig):
        raise ConfigError(f"register_volumes: config must be a BaselineConfig, got {type(config).__name__}")
    t0 = time.perf_counter()
    if pad_to is not None:
        pad_to = tuple(int(p) for p in pad_to)
        for v in (fixed, moving):
            if len(pad_to) != 3 or any(p < s for p, s in zip(pad_to, v.shape)):
                raise ConfigError(f"register_volumes: pad_to {pad_to} is smaller than {v.source} {v.shape}")
    c = grid_centre(fixed) if centre is None else np.asarray(centre, np.float64).reshape(3)
    params = np.zeros((6 if config.transform == "rigid" else 12,), np.float32)
    if config.init == "moments":
        params[:3] = intensity_centroid(moving) - intensity_centroid(fixed)
    params = jnp.asarray(params)
    losses = []
    for level, (factor, iters, lr) in enumerate(zip(config.factors, config.iterations, config.learning_rate)):
        f, fa, fe = _pyramid(fixed, int(factor), pad_to)
        m, ma, me = _pyramid(moving, int(factor), pad_to)
        params, value = _optimise_level(f, fa, fe, m, ma, me, params, jnp.asarray(c, jnp.float32), jnp.float32(lr),
                                        loss=config.loss, iterations=int(iters), bins=int(config.bins),
                                        rigid_only=config.transform == "affine" and level < int(config.rigid_levels),
                                        samples=int(config.samples))
        losses.append(value)
    params = np.asarray(jax.block_until_ready(params), np.float64)
    matrix = np.asarray(_matrix(jnp.asarray(params, jnp.float32), c), np.float64)
    return BaselineResult(matrix=matrix, params=params, centre=c, seconds=time.perf_counter() - t0, loss=tuple(float(v) for v in losses))


# ------------------------------------------------------------------ landmark transfer


def transfer_landmarks(template: Volume, template_points, subject: Volume, config: BaselineConfig = AFFINE_LANDMARK, *,
                       pad_to: Sequence[int] | None = None) -> tuple[np.ndarray, BaselineResult]:
    """Register the annotated ``template`` to ``subject`` and carry its landmarks over.

    Args:
      template: the atlas image (conformed like the subject). template_points: ``(K, 3)`` its
        landmarks, world RAS mm. subject: the image to annotate.
      config: the registration (default :data:`AFFINE_LANDMARK`, 12-dof affine).
      pad_to: as in :func:`register_volumes` (one compilation for many subjects).
    Returns:
      ``(points, result)``: ``(K, 3)`` the landmarks in the subject's world RAS mm, and the
      registration (``result.matrix`` maps subject world -> template world; ``result.seconds`` its
      wall time).
    """
    res = register_volumes(subject, template, config, pad_to=pad_to)
    pts = np.asarray(template_points, np.float64).reshape(-1, 3)
    inv = np.linalg.inv(res.matrix)
    return pts @ inv[:3, :3].T + inv[:3, 3], res


def transfer_to_subjects(template: Volume, template_points, subjects: Sequence[Volume],
                         config: BaselineConfig = AFFINE_LANDMARK) -> tuple[np.ndarray, np.ndarray]:
    """:func:`transfer_landmarks` to every subject with one compilation (all padded to the largest
    shape; a first, untimed registration compiles). Returns ``(points (S, K, 3) world RAS mm of each
    subject, seconds (S,) per registration)``."""
    pad = tuple(int(v) for v in np.max([v.shape for v in list(subjects) + [template]], axis=0))
    transfer_landmarks(template, template_points, subjects[0], config, pad_to=pad)  # compile once, untimed
    points, seconds = [], []
    for v in subjects:
        pts, res = transfer_landmarks(template, template_points, v, config, pad_to=pad)
        points.append(pts)
        seconds.append(res.seconds)
    return np.asarray(points), np.asarray(seconds)


# ------------------------------------------------------------------ the env's pairs


def pair_from_env(env, bank, state) -> tuple[Volume, Volume, np.ndarray]:
    """``(fixed, moving, centre)`` of one (unbatched) registration env state, at bank level 0: the
    fixed volume (normalised intensities, unpadded) and the moving image on the same grid,
    ``M(x) = remap(F(G^{-1} x))`` (trilinear, 0 outside), with the env's centre ``c``."""
    from jaxmed.envs.registration import remap_intensity
    from jaxmed.ops.rigid import invert_rigid

    volume = int(state.volume)
    m = bank.margin
    ext = np.asarray(bank.shapes[0, volume])
    stored = np.asarray(bank.levels[0][volume])[m : m + ext[0], m : m + ext[1], m : m + ext[2]]
    data = (stored.astype(np.float32) * float(bank.intensity_scale)).astype(np.float32)
    affine = np.asarray(bank.affines[0, volume], np.float64)
    centre = np.asarray(env.center(bank, volume), np.float64)
    g_inv = np.asarray(invert_rigid(rigid_matrix(state.gt, centre)), np.float64)
    grid = np.linalg.inv(affine) @ g_inv @ affine  # fixed voxel -> voxel where its moving value is read
    moving = _resample_whole(jnp.asarray(data), jnp.asarray(grid, jnp.float32))
    moving = np.asarray(remap_intensity(np.asarray(moving), env.config.remap), np.float32)
    fixed_vol = Volume(data, affine, source=f"bank volume {volume} (fixed)")
    moving_vol = Volume(moving, affine, source=f"bank volume {volume} under the ground-truth perturbation (moving)")
    return fixed_vol, moving_vol, centre


@jax.jit
def _resample_whole(data, grid):
    idx = jnp.stack(jnp.meshgrid(*(jnp.arange(s, dtype=jnp.float32) for s in data.shape), indexing="ij"), -1)
    return trilinear(data, idx @ grid[:3, :3].T + grid[:3, 3])


def tre_of_matrix(matrix, gt_matrix, points) -> float:
    """Mean distance (mm) between ``points`` ``(K, 3)`` mapped by an estimate and by the ground truth."""
    hom = np.c_[np.asarray(points, np.float64), np.ones(len(points))]
    return float(np.linalg.norm(hom @ np.asarray(matrix, np.float64).T - hom @ np.asarray(gt_matrix, np.float64).T, axis=1).mean())
