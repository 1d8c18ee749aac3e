"""Synthetic subject populations: many distinct "subjects" from one template and its landmarks.

Model
-----
A subject is defined by a *backward* map ``B`` from subject world space ``y`` (RAS mm) to template
world space ``x`` (RAS mm)::

    x = B(y) = A^{-1}(y) + u(y),        A(x) = c + t + L (x - c)

* ``A`` is a random affine about the template's centre ``c`` (the world position of the centre of
  its voxel grid): ``L = R S H`` with ``R`` Euler rotations of up to ``±max_rotation_deg`` about each
  axis (:func:`jaxmed.data.geometry.rotation_matrix`), ``S`` per-axis scaling in ``scale_range``,
  ``H`` a unit upper-triangular shear with entries up to ``±max_shear``; ``t`` a translation of up to
  ``±max_translation_mm`` per axis.
* ``u`` is a smooth random displacement field (mm): a tensor-product cubic B-spline free-form
  deformation (Rueckert et al. 1999) with control points every ``warp_spacing_mm`` (default 25 mm).
  The control lattice lives in subject world space, aligned with the output image's voxel axes and
  anchored at its field of view, with full B-spline support everywhere on the image; outside that
  lattice ``u`` is extended as a constant (never needed in practice). Control vectors are drawn
  ``N(0, 1)`` per component and rescaled so that the peak ``|u|`` (sampled every half control
  spacing over the image) equals an amplitude drawn uniformly in ``[warp_max_mm / 2, warp_max_mm]``.
  With the defaults (3 mm over 25 mm) the warp's Jacobian has spectral norm below ~0.2, so ``B`` is
  smooth and invertible (det J_B > 0.7 in 40 tested seeds). Because the grid is aligned with the
  voxel axes, ``u`` on the whole image is three small matrix products (exact, no approximation), and
  the very same formula is evaluated at arbitrary points for the landmarks.

Intensity, applied to the template sampled at ``B(y)`` (trilinear, outside the template = 0):
``I = clip(bias(y) * max(T(B(y)), 0) ** gamma + noise, 0, clip_max)`` where ``bias = exp(b)`` and
``b`` is a coarse cubic B-spline field (control spacing ``bias_spacing_mm``, default 80 mm, i.e. a
low-order field) rescaled so that ``max |b| = log(1 + s)``, ``s`` drawn in
``[bias_max / 2, bias_max]`` (default ±20 %); ``gamma`` is drawn log-uniformly in ``gamma_range``;
the noise is Gaussian (or Rician: ``sqrt((I + n1)^2 + n2^2)``) with a standard deviation drawn in
``noise_std_range``. Setting ``bias_max = 0``, ``gamma_range = (1, 1)``, ``noise_std_range = (0, 0)``
turns the intensity model off (the image is then exactly the resampled template).

Domain randomisation (off by default; :mod:`jaxmed.data.domain_rand`): random tissue contrast per
template intensity class (including T2-like inversions), random skull removal, thick slices, blur and
sharpening. It draws from a random stream of its own, so a subject's geometry, gamma, bias and noise
parameters and its landmarks are the same with it on or off; thick slices change the voxel size along
one axis (the affine records it), never the world position of anything.

Output geometry: voxel size drawn from ``spacings`` (per voxel axis, mm; may be anisotropic),
axis order and directions drawn from ``orientations`` (NIfTI-style codes: ``"LPS"`` means voxel
axis 0 points Left, 1 Posterior, 2 Superior), tilted by an oblique rotation of up to
``±oblique_max_deg`` per axis. The field of view is the box, in those voxel axes, around the
transformed template foreground (voxels above ``foreground_threshold`` × max) grown by the warp
amplitude, plus a random margin per side drawn from ``margin_mm_range`` (negative = crop), but always
containing every landmark with ``landmark_margin_mm`` to spare. A loader must therefore reorient
(and, for oblique subjects, resample) to get RAS voxel order.

Landmarks: the subject landmark ``y_L`` solves ``B(y_L) = x_L`` (Newton's method with a central
finite-difference Jacobian, started from ``A(x_L)``); the residual ``|B(y_L) - x_L|`` is reported
(typically < 1e-9 mm) and a :class:`~jaxmed.errors.LandmarkError` is raised if it exceeds 0.05 mm.
So the anatomy under a subject landmark is exactly the anatomy under the template landmark.

Everything is drawn from ``numpy.random.default_rng(seed)`` in a fixed order: the same seed and
config give bit-identical subjects. :func:`split_seeds` keeps train / val / test seeds disjoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage

from jaxmed.config import bounded, check_fields
from jaxmed.data import geometry
from jaxmed.data.landmarks import Landmarks
from jaxmed.data.volume import Volume
from jaxmed.errors import ConfigError, LandmarkError, check_writable

_AXIS_LETTERS = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
_CHUNK_VOXELS = 1 << 20  # output voxels resampled per chunk (bounds memory to ~100 MB)
_MAX_RESIDUAL_MM = 0.05
_SPLITS = ("train", "val", "test")
_SPLIT_STRIDE = 1 << 32  # seeds per (base_seed, split) block


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Ranges of the random subject model (see the module docstring). Lengths in mm, angles in degrees.

    Attributes:
      max_rotation_deg: rotation about each world axis drawn in ``±max_rotation_deg``.
      max_translation_mm: translation per axis drawn in ``±max_translation_mm``.
      scale_range: per-axis scale factor range ``(lo, hi)``.
      max_shear: shear coefficients drawn in ``±max_shear`` (0 disables shear).
      warp_max_mm: peak displacement of the elastic warp (0 disables it).
      warp_spacing_mm: control-point spacing of the warp (its smoothness).
      bias_max: peak relative bias-field change (0.2 = ±20 %; 0 disables it).
      bias_spacing_mm: control-point spacing of the bias field.
      gamma_range: gamma drawn log-uniformly in ``(lo, hi)``.
      noise_std_range: noise standard deviation range (intensity units).
      noise: ``"gaussian"`` or ``"rician"``.
      clip_max: intensities are clipped to ``[0, clip_max]``.
      spacings: voxel-size choices, each ``(sx, sy, sz)`` mm per voxel axis.
      orientations: axis-code choices such as ``"RAS"``, ``"LPS"``, ``"PIR"``.
      oblique_max_deg: extra rotation of the voxel axes, per axis, in ``±oblique_max_deg``.
      margin_mm_range: margin added per side of the field of view (negative crops the head).
      landmark_margin_mm: every landmark stays at least this far inside the field of view.
      foreground_threshold: template voxels above this fraction of the maximum count as head.

    Domain randomisation (:mod:`jaxmed.data.domain_rand`; all off by default, intensities only):

    Attributes:
      tissue_classes: head intensity classes of the template (k-means), 0 = no tissue contrast
        randomisation (then ``p_tissue``, ``p_invert`` and ``p_skull_strip`` must be 0).
      p_tissue: probability of a random mean per class (else the template's contrast is kept).
      p_invert: probability of an inverted (T2-like) contrast: class means sorted darkest-brightest.
      class_mean_range: range of each class mean (normalised intensity units).
      class_std_range: range of each class's spread (per-voxel Gaussian, intensity units).
      p_skull_strip: probability of removing everything outside the template's brain mask.
      mask_margin_mm_range: the mask is grown by this much (negative: eroded), mm.
      p_thick_slice: probability of thick slices along one random voxel axis.
      slice_thickness_mm_range: slice thickness (mm; slices every round(thickness / spacing) voxels).
      blur_sigma_mm_range: Gaussian blur sigma (mm; 0 = none).
      sharpen_range: unsharp-mask amount (0 = none).
    """

    max_rotation_deg: float = bounded(10.0, 0.0)
    max_translation_mm: float = bounded(10.0, 0.0)
    scale_range: tuple[float, float] = (0.9, 1.1)
    max_shear: float = bounded(0.02, 0.0)
    warp_max_mm: float = bounded(3.0, 0.0)
    warp_spacing_mm: float = bounded(25.0, 0.0, low_open=True)
    bias_max: float = bounded(0.2, 0.0)
    bias_spacing_mm: float = bounded(80.0, 0.0, low_open=True)
    gamma_range: tuple[float, float] = (0.8, 1.25)
    noise_std_range: tuple[float, float] = (0.01, 0.04)
    noise: str = "gaussian"
    clip_max: float = bounded(1.2, 0.0, low_open=True)
    spacings: tuple[tuple[float, float, float], ...] = (
        (1.0, 1.0, 1.0),
        (1.2, 1.2, 1.2),
        (1.5, 1.5, 1.5),
        (1.0, 1.0, 1.5),
        (1.6, 1.2, 1.2),
        (1.2, 1.0, 1.6),
    )
    orientations: tuple[str, ...] = ("RAS", "LAS", "LPS", "RPI", "PIR", "ASL", "SAR", "LIP")
    oblique_max_deg: float = bounded(5.0, 0.0)
    margin_mm_range: tuple[float, float] = (-5.0, 15.0)
    landmark_margin_mm: float = bounded(5.0, 0.0)
    foreground_threshold: float = bounded(0.05, 0.0)
    tissue_classes: int = bounded(0, 0, 12)  # 0: off, else 3..12
    p_tissue: float = bounded(0.0, 0.0, 1.0)
    p_invert: float = bounded(0.0, 0.0, 1.0)
    class_mean_range: tuple[float, float] = (0.05, 1.0)
    class_std_range: tuple[float, float] = (0.0, 0.05)
    p_skull_strip: float = bounded(0.0, 0.0, 1.0)
    mask_margin_mm_range: tuple[float, float] = (-2.0, 4.0)
    p_thick_slice: float = bounded(0.0, 0.0, 1.0)
    slice_thickness_mm_range: tuple[float, float] = (3.0, 6.0)
    blur_sigma_mm_range: tuple[float, float] = (0.0, 0.0)
    sharpen_range: tuple[float, float] = (0.0, 0.0)

    @property
    def domain_randomised(self) -> bool:
        """Whether any domain-randomisation option is on."""
        return bool(self.tissue_classes or self.p_thick_slice or self.blur_sigma_mm_range[1] or self.sharpen_range[1])

    def __post_init__(self):
        check_fields(self)

        def pair(name, lo_min=-math.inf):
            v = getattr(self, name)
            if len(v) != 2 or not (lo_min <= v[0] <= v[1]) or not all(math.isfinite(x) for x in v):
                raise ConfigError(f"SynthConfig.{name}: expected (lo, hi) with {lo_min} <= lo <= hi, got {v!r}")
            object.__setattr__(self, name, (float(v[0]), float(v[1])))

        pair("scale_range", 1e-3)
        pair("gamma_range", 1e-3)
        pair("noise_std_range", 0.0)
        pair("margin_mm_range")
        pair("class_mean_range", 0.0)
        pair("class_std_range", 0.0)
        pair("mask_margin_mm_range")
        pair("slice_thickness_mm_range", 1e-3)
        pair("blur_sigma_mm_range", 0.0)
        pair("sharpen_range", 0.0)
        if self.tissue_classes in (1, 2):
            raise ConfigError(f"SynthConfig.tissue_classes must be 0 (off) or 3..12 classes, got {self.tissue_classes!r}")
        if not self.tissue_classes and (self.p_tissue or self.p_invert or self.p_skull_strip):
            raise ConfigError("SynthConfig: p_tissue, p_invert and p_skull_strip need tissue_classes >= 3 "
                              "(the template's intensity classes and brain mask)")
        if self.noise not in ("gaussian", "rician"):
            raise ConfigError(f"SynthConfig.noise: expected 'gaussian' or 'rician', got {self.noise!r}")
        spacings = tuple(tuple(float(s) for s in sp) for sp in self.spacings)
        if not spacings or any(len(sp) != 3 or min(sp) <= 0 for sp in spacings):
            raise ConfigError(f"SynthConfig.spacings: need one or more (sx, sy, sz) > 0, got {self.spacings!r}")
        object.__setattr__(self, "spacings", spacings)
        if not self.orientations:
            raise ConfigError("SynthConfig.orientations: need at least one axis code")
        for code in self.orientations:
            orientation_matrix(code)  # validates
        object.__setattr__(self, "orientations", tuple(self.orientations))


@dataclasses.dataclass(frozen=True)
class Subject:
    """One synthetic subject.

    Attributes:
      volume: the subject image (float32, its own voxel size / orientation / field of view).
      landmarks: the template's landmarks carried through the subject transform (world RAS mm).
      seed: the seed it was drawn from.
      params: the drawn parameters (JSON-serialisable; the warp / bias control values themselves are
        not stored, they are reproduced from ``seed``).
      landmark_residual_mm: ``max_L |B(y_L) - x_L|``, mm.
    """

    volume: Volume
    landmarks: Landmarks
    seed: int
    params: dict
    landmark_residual_mm: float


# ----------------------------------------------------------------------------------------------
# Small geometry helpers


def orientation_matrix(code: str) -> np.ndarray:
    """Signed permutation ``(3, 3)`` whose column ``i`` is the world direction of voxel axis ``i``.

    ``code`` is three letters from R/L, A/P, S/I, each world axis once (``"LPS"``, ``"PIR"``, ...).
    """
    code = str(code).upper()
    if len(code) != 3 or any(c not in _AXIS_LETTERS for c in code):
        raise ConfigError(f"orientation {code!r}: expected three letters from R/L, A/P, S/I")
    p = np.zeros((3, 3))
    for i, c in enumerate(code):
        axis, sign = _AXIS_LETTERS[c]
        p[axis, i] = sign
    if sorted(_AXIS_LETTERS[c][0] for c in code) != [0, 1, 2]:
        raise ConfigError(f"orientation {code!r}: each of R/L, A/P, S/I must appear exactly once")
    return p


def _bspline_weights(g: np.ndarray, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline weights for lattice coordinates ``g`` ``(n,)`` on ``n_nodes`` nodes.

    Returns ``(idx, w)``, both ``(n, 4)``: node indices ``floor(g) - 1 ... floor(g) + 2`` and their
    weights (summing to 1). ``g`` is clipped to ``[1, n_nodes - 2)`` so every index is valid.
    """
    g = np.clip(np.asarray(g, dtype=np.float64), 1.0, n_nodes - 2 - 1e-9)
    i = np.floor(g)
    f = g - i
    f2, f3 = f * f, f * f * f
    w = np.stack([(1 - f) ** 3, 3 * f3 - 6 * f2 + 4, -3 * f3 + 3 * f2 + 3 * f + 1, f3], axis=-1) / 6.0
    idx = i.astype(np.int64)[:, None] + np.arange(-1, 3)
    return idx, w


def _bspline_matrix(g: np.ndarray, n_nodes: int) -> np.ndarray:
    """Dense ``(n, n_nodes)`` matrix of cubic B-spline weights for lattice coordinates ``g`` ``(n,)``."""
    idx, w = _bspline_weights(g, n_nodes)
    m = np.zeros((len(idx), n_nodes))
    np.put_along_axis(m, idx, w, axis=1)
    return m


@dataclasses.dataclass(frozen=True)
class _GridSpline:
    """A tensor-product cubic B-spline field on a lattice aligned with an image's voxel axes.

    A point with frame coordinates ``w`` (mm along the voxel axes, from the image's first voxel) has
    lattice coordinates ``g = w / spacing + 1``. ``coef`` is ``(G0, G1, G2, C)``.
    """

    coef: np.ndarray
    spacing_mm: float

    @staticmethod
    def lattice_shape(extent_mm: np.ndarray, spacing_mm: float) -> tuple[int, int, int]:
        """Nodes per axis so that frame coordinates ``[0, extent_mm]`` have full support."""
        return tuple(int(math.ceil(e / spacing_mm)) + 4 for e in extent_mm)  # type: ignore[return-value]

    def at_points(self, w: np.ndarray) -> np.ndarray:
        """Field at frame coordinates ``w`` ``(n, 3)`` mm -> ``(n, C)``."""
        g = np.asarray(w, dtype=np.float64) / self.spacing_mm + 1.0
        (i0, w0), (i1, w1), (i2, w2) = (_bspline_weights(g[:, a], self.coef.shape[a]) for a in range(3))
        c = self.coef[i0[:, :, None, None], i1[:, None, :, None], i2[:, None, None, :]]  # (n, 4, 4, 4, C)
        wt = w0[:, :, None, None] * w1[:, None, :, None] * w2[:, None, None, :]
        return np.einsum("nijk,nijkc->nc", wt, c)

    def on_grid(self, w0: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
        """Field on the grid ``w0 x w1 x w2`` (1D frame coordinates, mm) -> ``(n0, n1, n2, C)``."""
        m0, m1, m2 = (_bspline_matrix(np.asarray(w) / self.spacing_mm + 1.0, self.coef.shape[a])
                      for a, w in enumerate((w0, w1, w2)))
        t = np.tensordot(m0, self.coef, axes=(1, 0))  # (n0, G1, G2, C)
        t = np.tensordot(m1, t, axes=(1, 1))  # (n1, n0, G2, C)
        t = np.tensordot(m2, t, axes=(1, 2))  # (n2, n1, n0, C)
        return t.transpose(2, 1, 0, 3)

    @classmethod
    def random(cls, rng: np.random.Generator, extent_mm: np.ndarray, spacing_mm: float, n_comp: int,
               peak: float) -> "_GridSpline":
        """Random field whose peak norm over the image (sampled every half spacing) equals ``peak``."""
        coef = rng.standard_normal(cls.lattice_shape(extent_mm, spacing_mm) + (n_comp,))
        field = cls(coef, spacing_mm)
        probe = [np.linspace(0.0, e, max(2, int(math.ceil(2 * e / spacing_mm)) + 1)) for e in extent_mm]
        top = float(np.linalg.norm(field.on_grid(*probe), axis=-1).max())
        return cls(coef * (peak / top if top > 0 else 0.0), spacing_mm)


@dataclasses.dataclass(frozen=True)
class _SubjectTransform:
    """The backward map ``B`` of one subject and its output grid.

    Attributes:
      centre: ``(3,)`` template centre ``c``, mm.  translation: ``(3,)`` ``t``, mm.
      linear: ``(3, 3)`` ``L``.  frame: ``(3, 3)`` orthonormal output voxel axes (columns, world).
      lo: ``(3,)`` frame coordinate of the first voxel, mm.  spacing: ``(3,)`` voxel size, mm.
      shape: output grid shape.  warp: the displacement ``u`` (C = 3, mm), or ``None``.
    """

    centre: np.ndarray
    translation: np.ndarray
    linear: np.ndarray
    frame: np.ndarray
    lo: np.ndarray
    spacing: np.ndarray
    shape: tuple[int, int, int]
    warp: _GridSpline | None

    @property
    def affine(self) -> np.ndarray:
        """Output voxel -> subject world RAS mm, ``(4, 4)``."""
        a = np.eye(4)
        a[:3, :3] = self.frame * self.spacing
        a[:3, 3] = self.frame @ self.lo
        return a

    @property
    def forward_affine(self) -> np.ndarray:
        """``A``: template world -> subject world (the affine part only), ``(4, 4)``."""
        a = np.eye(4)
        a[:3, :3] = self.linear
        a[:3, 3] = self.centre + self.translation - self.linear @ self.centre
        return a

    def to_frame(self, y: np.ndarray) -> np.ndarray:
        """Subject world ``(n, 3)`` -> frame coordinates ``(n, 3)`` mm from the first voxel."""
        return y @ self.frame - self.lo

    def backward(self, y: np.ndarray) -> np.ndarray:
        """``B(y)``: subject world ``(n, 3)`` mm -> template world ``(n, 3)`` mm."""
        x = geometry.apply_affine(np.linalg.inv(self.forward_affine), y)
        if self.warp is not None:
            x = x + self.warp.at_points(self.to_frame(y))
        return x

    def solve(self, x: np.ndarray, iters: int = 30, tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
        """Solve ``B(y) = x`` for ``x`` ``(n, 3)`` by Newton's method; returns ``(y, residual_mm (n,))``."""
        y = geometry.apply_affine(self.forward_affine, x)
        eps = 1e-3
        for _ in range(iters):
            r = self.backward(y) - x
            if np.max(np.linalg.norm(r, axis=-1), initial=0.0) < tol:
                break
            jac = np.stack([(self.backward(y + eps * e) - self.backward(y - eps * e)) / (2 * eps)
                            for e in np.eye(3)], axis=-1)  # (n, 3 outputs, 3 inputs)
            y = y - np.linalg.solve(jac, r[..., None])[..., 0]
        return y, np.linalg.norm(self.backward(y) - x, axis=-1)


# ----------------------------------------------------------------------------------------------
# Drawing a subject


def _uniform(rng: np.random.Generator, lo, hi, size=None) -> np.ndarray:
    return rng.uniform(lo, hi, size) if hi > lo else np.full(size or (), float(lo))


def _foreground_corners(template: Volume, threshold: float) -> np.ndarray:
    """World corners ``(8, 3)`` mm of the bounding box of template voxels above ``threshold`` × max."""
    data = np.asarray(template.data)
    top = float(np.nanmax(data))
    mask = data > threshold * top if top > 0 else np.ones(data.shape, bool)
    if not mask.any():
        mask = np.ones(data.shape, bool)
    lo = np.array([np.flatnonzero(mask.any(axis=tuple(b for b in range(3) if b != a)))[[0, -1]] for a in range(3)])
    box = np.stack([lo[:, 0] - 0.5, lo[:, 1] + 0.5], axis=1)  # (3, 2) voxel bounds
    corners = np.array(np.meshgrid(*box, indexing="ij")).reshape(3, -1).T
    return template.voxel_to_world(corners)


def _draw_affine(rng, cfg: SynthConfig) -> dict[str, np.ndarray]:
    rot = _uniform(rng, -cfg.max_rotation_deg, cfg.max_rotation_deg, 3)
    trans = _uniform(rng, -cfg.max_translation_mm, cfg.max_translation_mm, 3)
    scale = _uniform(rng, *cfg.scale_range, 3)
    shear = _uniform(rng, -cfg.max_shear, cfg.max_shear, 3)
    h = np.eye(3)
    h[0, 1], h[0, 2], h[1, 2] = shear
    return {"rotation_deg": rot, "translation_mm": trans, "scale": scale, "shear": shear,
            "linear": geometry.rotation_matrix(rot) @ np.diag(scale) @ h}


def _draw_transform(template: Volume, landmarks: Landmarks, rng, cfg: SynthConfig) -> tuple[_SubjectTransform, dict]:
    """Draw ``A``, the output grid and the warp (in that order); returns the transform and its params."""
    aff = _draw_affine(rng, cfg)
    centre = template.voxel_to_world((np.asarray(template.shape) - 1) / 2.0)
    spacing = np.asarray(cfg.spacings[rng.integers(len(cfg.spacings))])
    orientation = cfg.orientations[rng.integers(len(cfg.orientations))]
    oblique = _uniform(rng, -cfg.oblique_max_deg, cfg.oblique_max_deg, 3)
    margins = _uniform(rng, *cfg.margin_mm_range, (2, 3))
    warp_peak = _uniform(rng, cfg.warp_max_mm / 2, cfg.warp_max_mm)
    frame = geometry.rotation_matrix(oblique) @ orientation_matrix(orientation)

    t0 = _SubjectTransform(centre, aff["translation_mm"], aff["linear"], frame, np.zeros(3), spacing, (1, 1, 1), None)
    fwd = t0.forward_affine
    pad = cfg.warp_max_mm * float(np.abs(aff["linear"]).sum(axis=1).max())  # bound on |y - A(x)|
    head = _foreground_corners(template, cfg.foreground_threshold)
    hw = geometry.apply_affine(fwd, head) @ frame
    lw = geometry.apply_affine(fwd, landmarks.positions) @ frame if len(landmarks) else hw
    lo = np.minimum(hw.min(0) - pad - margins[0], lw.min(0) - pad - cfg.landmark_margin_mm)
    hi = np.maximum(hw.max(0) + pad + margins[1], lw.max(0) + pad + cfg.landmark_margin_mm)
    shape = tuple(int(n) for n in np.ceil((hi - lo) / spacing).astype(int) + 1)
    extent = (np.asarray(shape) - 1) * spacing
    warp = (_GridSpline.random(rng, extent, cfg.warp_spacing_mm, 3, warp_peak) if cfg.warp_max_mm > 0 else None)
    tr = dataclasses.replace(t0, lo=lo, shape=shape, warp=warp)
    params = {
        "rotation_deg": aff["rotation_deg"], "translation_mm": aff["translation_mm"], "scale": aff["scale"],
        "shear": aff["shear"], "centre_mm": centre, "template_to_subject_affine": fwd,
        "warp_peak_mm": warp_peak if warp is not None else 0.0, "warp_spacing_mm": cfg.warp_spacing_mm,
        "spacing_mm": spacing, "orientation": orientation, "oblique_deg": oblique,
        "margins_mm": margins, "shape": list(shape), "affine": tr.affine,
    }
    return tr, params


def _draw_intensity(rng, cfg: SynthConfig, tr: _SubjectTransform) -> tuple[dict, _GridSpline | None]:
    """Draw gamma, bias field and noise level (after the geometry, in that order)."""
    lg = np.log(cfg.gamma_range)
    gamma = float(np.exp(_uniform(rng, lg[0], lg[1])))
    bias_peak = float(_uniform(rng, cfg.bias_max / 2, cfg.bias_max))
    noise_std = float(_uniform(rng, *cfg.noise_std_range))
    bias = None
    if cfg.bias_max > 0:
        extent = (np.asarray(tr.shape) - 1) * tr.spacing
        bias = _GridSpline.random(rng, extent, cfg.bias_spacing_mm, 1, math.log1p(bias_peak))
    return {"gamma": gamma, "bias_peak": bias_peak, "noise_std": noise_std, "noise": cfg.noise}, bias


def _render(template: Volume, tr: _SubjectTransform, intensity: dict, bias: _GridSpline | None,
            rng, clip_max: float) -> np.ndarray:
    """Subject image ``tr.shape`` float32: the template at ``B(voxel world)``, then intensity model.

    Works in slabs along voxel axis 0 of at most ``_CHUNK_VOXELS`` voxels.
    """
    n0, n1, n2 = tr.shape
    w = [np.arange(n) * s for n, s in zip(tr.shape, tr.spacing)]  # frame coordinates, mm
    # template voxel = T^-1 (A^-1 (frame @ w + frame @ lo) + u) = M w + m + T^-1_lin u
    tinv = np.linalg.inv(template.affine)
    to_tpl = tinv @ np.linalg.inv(tr.forward_affine) @ tr.affine @ np.diag([*(1 / tr.spacing), 1.0])
    m, off = to_tpl[:3, :3], to_tpl[:3, 3]
    warp_vox = None if tr.warp is None else _GridSpline(tr.warp.coef @ tinv[:3, :3].T, tr.warp.spacing_mm)
    data = np.asarray(template.data, dtype=np.float32)
    out = np.empty(tr.shape, np.float32)
    step = max(1, _CHUNK_VOXELS // (n1 * n2))
    for a in range(0, n0, step):
        w0 = w[0][a:a + step]
        coords = (w0[:, None, None, None] * m[:, 0] + w[1][None, :, None, None] * m[:, 1]
                  + w[2][None, None, :, None] * m[:, 2] + off)
        if warp_vox is not None:
            coords += warp_vox.on_grid(w0, w[1], w[2])
        vals = ndimage.map_coordinates(data, coords.reshape(-1, 3).T, order=1, mode="constant", cval=0.0)
        vals = vals.reshape(coords.shape[:3])
        out[a:a + step] = _intensity(vals, w0, w, intensity, bias, rng, clip_max)
    return out


def _intensity(vals: np.ndarray, w0: np.ndarray, w: list, intensity: dict, bias: _GridSpline | None,
               rng, clip_max: float) -> np.ndarray:
    """Apply gamma, bias and noise to one slab ``(k, n1, n2)`` float32."""
    np.maximum(vals, 0.0, out=vals)
    if intensity["gamma"] != 1.0:
        vals = np.power(vals, np.float32(intensity["gamma"]))
    if bias is not None:
        vals = vals * np.exp(bias.on_grid(w0, w[1], w[2])[..., 0]).astype(np.float32)
    s = intensity["noise_std"]
    if s > 0:
        vals = vals + np.float32(s) * rng.standard_normal(vals.shape, dtype=np.float32)
        if intensity["noise"] == "rician":
            vals = np.hypot(vals, np.float32(s) * rng.standard_normal(vals.shape, dtype=np.float32))
    return np.clip(vals, 0.0, clip_max)


def _jsonable(x: Any) -> Any:
    """Convert NumPy arrays / scalars (nested in dicts, lists, tuples) to plain Python."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def synthesize_subject(template: Volume, landmarks: Landmarks, seed: int,
                       config: SynthConfig = SynthConfig()) -> Subject:
    """Draw one subject from ``template`` (world RAS, intensities ~[0, 1]) and its ``landmarks``.

    Returns a :class:`Subject` whose volume has its own voxel size, orientation and field of view,
    and whose landmarks (world RAS mm) are the template landmarks under the same transform.
    Deterministic in ``(seed, config)``. Raises :class:`LandmarkError` if a landmark cannot be
    carried through to within 0.05 mm or falls outside the subject image.
    """
    seed = int(seed)
    rng = np.random.default_rng(seed)
    tr, params = _draw_transform(template, landmarks, rng, config)
    intensity, bias = _draw_intensity(rng, config, tr)
    y, residual = tr.solve(landmarks.positions)
    worst = float(residual.max(initial=0.0))
    source = f"synth(seed={seed}, template={template.source})"
    if not worst <= _MAX_RESIDUAL_MM:
        bad = [l for l, r in zip(landmarks.labels, residual) if not r <= _MAX_RESIDUAL_MM]
        raise LandmarkError(f"{source}: could not carry landmarks {bad} through the warp "
                            f"(residual {worst:.3g} mm > {_MAX_RESIDUAL_MM} mm); lower warp_max_mm")
    affine, domain = tr.affine, None
    if config.domain_randomised:
        from jaxmed.data import domain_rand

        # a stream of its own: the geometry and the intensity model above are the same with or without it
        drng = np.random.default_rng([seed, domain_rand.DOMAIN_STREAM])
        domain = {}
        if config.tissue_classes:
            model = domain_rand.tissue_model(template.data, template.spacing, config.tissue_classes,
                                             config.foreground_threshold)
            domain["tissue"] = domain_rand.draw_tissue(drng, len(model.centres), config)
            template = template.replace(data=domain_rand.randomise_template(template.data, model, domain["tissue"], drng))
        domain["degrade"] = domain_rand.draw_degrade(drng, config)
    data = _render(template, tr, intensity, bias, rng, config.clip_max)
    if domain is not None:
        data, affine = domain_rand.degrade(data, affine, domain["degrade"], config.clip_max)
    volume = Volume(data, affine, source=source, normalisation=template.normalisation)
    subject_landmarks = Landmarks(landmarks.labels, y, landmarks.descriptions, source)
    subject_landmarks.check_inside(volume)
    params.update(intensity)
    if domain is not None:
        params["domain"] = domain
        params["affine"] = affine
        params["shape"] = list(data.shape)
    params["config"] = dataclasses.asdict(config)
    return Subject(volume, subject_landmarks, seed, _jsonable(params), worst)


# ----------------------------------------------------------------------------------------------
# Populations


def split_seeds(split: str, n: int, base_seed: int = 0) -> list[int]:
    """``n`` seeds for ``split`` in ``{"train", "val", "test"}``.

    Seed ``i`` of a split is ``(3 * base_seed + k) * 2**32 + i`` with ``k`` the split's index, so the
    seeds of every (base_seed, split) pair are disjoint for any ``n <= 2**32``.
    """
    if split not in _SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {', '.join(_SPLITS)}")
    if not 0 <= int(n) <= _SPLIT_STRIDE:
        raise ConfigError(f"split_seeds: n must be in [0, 2**32], got {n}")
    if int(base_seed) < 0:
        raise ConfigError(f"split_seeds: base_seed must be >= 0, got {base_seed}")
    start = (3 * int(base_seed) + _SPLITS.index(split)) * _SPLIT_STRIDE
    return list(range(start, start + int(n)))


def make_population(template: Volume, landmarks: Landmarks, n: int, split: str = "train", base_seed: int = 0,
                    config: SynthConfig = SynthConfig()) -> list[Subject]:
    """``n`` subjects of ``split`` (seeds from :func:`split_seeds`). Memory: all images are kept."""
    return [synthesize_subject(template, landmarks, s, config) for s in split_seeds(split, n, base_seed)]


def write_population(subjects: Sequence[Subject], out_dir, overwrite: bool = False) -> list[Path]:
    """Write each subject as ``sub-XXXX_T1w.nii.gz`` (float32, its affine as sform and qform) and
    ``sub-XXXX_landmarks.fcsv`` (RAS), numbered from 1 in order, plus ``population.json`` (ids, seeds,
    file names, residuals, params).

    Checks every target path before writing anything; raises :class:`~jaxmed.errors.OverwriteError`
    if one exists and ``overwrite`` is false. Returns the written paths: image and landmark file of
    each subject in order, then the manifest.
    """
    import nibabel as nib

    from jaxmed.data.landmark_files import write_landmarks

    subjects = list(subjects)
    out = Path(out_dir)
    width = max(4, len(str(len(subjects))))
    ids = [f"sub-{i + 1:0{width}d}" for i in range(len(subjects))]
    targets = [(out / f"{sid}_T1w.nii.gz", out / f"{sid}_landmarks.fcsv") for sid in ids]
    manifest_path = out / "population.json"
    for p in [*(p for pair in targets for p in pair), manifest_path]:
        check_writable(p, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    entries = []
    for sid, subj, (img_path, lm_path) in zip(ids, subjects, targets):
        img = nib.Nifti1Image(np.asarray(subj.volume.data, dtype=np.float32), subj.volume.affine)
        img.header.set_qform(subj.volume.affine, code=1)
        img.header.set_sform(subj.volume.affine, code=1)
        img.header.set_xyzt_units("mm")
        nib.save(img, img_path)
        written.append(img_path)
        written.append(Path(write_landmarks(subj.landmarks, lm_path, overwrite=overwrite)))
        entries.append({"id": sid, "seed": subj.seed, "image": img_path.name, "landmarks": lm_path.name,
                        "landmark_residual_mm": subj.landmark_residual_mm, "params": subj.params})
    manifest_path.write_text(json.dumps({"subjects": entries}, indent=1))
    written.append(manifest_path)
    return written


def iter_population(template: Volume, landmarks: Landmarks, seeds: Iterable[int],
                    config: SynthConfig = SynthConfig()):
    """Yield subjects one at a time (bounded memory), e.g. ``write_population`` in batches."""
    for s in seeds:
        yield synthesize_subject(template, landmarks, s, config)
