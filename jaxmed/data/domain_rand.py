"""Domain randomisation of synthetic subjects: intensities that look like many real scanners.

One template (one contrast, with a skull, smooth) is turned into subjects that differ in contrast,
skull, resolution and sharpness, in the spirit of SynthSeg (Billot et al. 2023). Only intensities
change; geometry and landmarks stay on the exact path of :mod:`jaxmed.data.synth`.

Model (all drawn per subject from ``numpy.random.default_rng([seed, DOMAIN_STREAM])``, a stream
separate from the geometry's, so turning it on or off never changes a subject's pose or landmarks):

* **Tissue classes.** :func:`tissue_model` clusters the template's head voxels (intensity above
  ``foreground_threshold`` × max) into ``k`` classes with a seeded one-dimensional k-means (Lloyd's
  algorithm on the intensity histogram, started at evenly spaced quantiles, so it is deterministic).
  Class ``0`` is the background (centre 0, mean 0: air stays dark). A subject draws a mean ``mu_k``
  uniformly in ``class_mean_range`` and a spread ``sigma_k`` in ``class_std_range`` per head class; the template
  intensity ``I`` becomes ``interp(I; centres, mu) + interp(I; centres, sigma) * n`` (``n`` standard
  normal per template voxel): a random, piecewise-linear look-up table through the class centres, so
  partial-volume voxels between two classes keep a value between their means. With probability
  ``p_invert`` the drawn head means are sorted against the class order (darkest head class brightest:
  a T2-like contrast); otherwise, with probability ``p_tissue``, they are random (any order), else the
  template's own intensities are kept.
* **Skull removal.** :func:`brain_mask` derives a brain mask from the template (threshold between
  the cerebrospinal-fluid and grey-matter classes, erosion to cut the brain from the scalp, largest
  connected component, dilation back, holes filled). With probability ``p_skull_strip`` every voxel
  farther than ``r`` mm outside that mask is set to 0, ``r`` drawn in ``mask_margin_mm_range``
  (negative erodes, positive dilates: different skull-stripping tools cut at different depths).
  The mask and its distance map are computed on a grid of about 2 mm and interpolated back.
* **Resolution and sharpness** (in the subject's own voxel grid, after the intensity model): with
  probability ``p_thick_slice`` one voxel axis is averaged over a slice profile (Gaussian, FWHM = the
  thickness drawn in ``slice_thickness_mm_range``) and kept every ``k``-th slice (``k`` = round of
  thickness / spacing): the subject's voxel size along that axis becomes ``k`` × the old one (its
  affine says so; world coordinates and landmarks are unchanged). Then a Gaussian blur with sigma drawn
  in ``blur_sigma_mm_range`` (mm) and an unsharp mask ``I + a (I - G_1mm * I)`` with ``a`` drawn in
  ``sharpen_range``.

The tissue model and brain mask are computed once per template (cached by the template's bytes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
from scipy import ndimage

#: Second entry of the seed sequence of the domain-randomisation random stream.
DOMAIN_STREAM = 0x646F6D


@dataclasses.dataclass(frozen=True)
class TissueModel:
    """Intensity classes and brain mask of one template.

    Attributes:
      centres: ``(k + 1,)`` increasing class centres in template intensity units; ``centres[0] = 0``
        is the background.
      signed_distance_mm: ``template.shape`` float32, distance to the brain-mask surface in mm,
        positive outside the mask, negative inside.
    """

    centres: np.ndarray
    signed_distance_mm: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """The brain mask, ``template.shape`` bool."""
        return self.signed_distance_mm <= 0


def kmeans_1d(values: np.ndarray, k: int, iters: int = 100, bins: int = 1024) -> np.ndarray:
    """Centres ``(k,)`` (increasing) of a 1D k-means of ``values`` (Lloyd's algorithm on a histogram).

    Started at the quantiles ``(i + 0.5) / k``: deterministic, no random state.
    """
    values = np.asarray(values, np.float64).ravel()
    if values.size < k or k < 1:
        raise ValueError(f"kmeans_1d: need at least k={k} >= 1 values, got {values.size}")
    counts, edges = np.histogram(values, bins=bins)
    mids = 0.5 * (edges[:-1] + edges[1:])
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        assign = np.argmin(np.abs(mids[:, None] - centres[None]), axis=1)
        mass = np.bincount(assign, weights=counts, minlength=k)
        total = np.bincount(assign, weights=counts * mids, minlength=k)
        new = np.where(mass > 0, total / np.maximum(mass, 1e-12), centres)
        if np.allclose(new, centres, atol=1e-9):
            break
        centres = new
    return np.sort(centres)


def brain_mask(data: np.ndarray, spacing_mm, centres: np.ndarray, erode_mm: float = 8.0) -> np.ndarray:
    """A brain mask ``data.shape`` bool of a T1 head image with tissue class ``centres`` (increasing, ``[0]`` background).

    Voxels above the grey-matter centre (``centres[2]``: with 4 or more classes the first two are
    background and cerebrospinal fluid / bone) are eroded by ``erode_mm`` (cuts the scalp, which is
    thinner, from the brain), the largest connected component is kept and dilated back by the same
    distance (keeping voxels brighter than half the darkest head class: sulcal fluid stays), and holes
    (ventricles) are filled. Erosion and dilation are thresholded Euclidean distance maps. On the
    MNI152NLin2009cAsym template the mask follows the brain over the convexity and leaks into the
    neck below the cerebellum (there is no sharp intensity boundary there).
    """
    if len(centres) < 4:
        raise ValueError("brain_mask: need at least 3 tissue classes besides the background")
    spacing_mm = np.asarray(spacing_mm, np.float64)
    fg = data > centres[2]
    core = ndimage.distance_transform_edt(fg, sampling=spacing_mm) > erode_mm
    lab, n = ndimage.label(core)
    if n == 0:
        return np.zeros(data.shape, bool)
    sizes = ndimage.sum(core, lab, index=np.arange(1, n + 1))
    brain = lab == (1 + int(np.argmax(sizes)))
    brain = (ndimage.distance_transform_edt(~brain, sampling=spacing_mm) <= erode_mm) & (data > 0.5 * centres[1])
    return ndimage.binary_fill_holes(brain)


_CACHE: dict[tuple, TissueModel] = {}


def tissue_model(data: np.ndarray, spacing_mm, n_classes: int = 5, foreground_threshold: float = 0.05) -> TissueModel:
    """The :class:`TissueModel` of a template ``data`` (normalised intensities) with ``n_classes`` head
    classes; cached by the array's bytes, spacing and options."""
    data = np.asarray(data, np.float32)
    spacing_mm = np.asarray(spacing_mm, np.float64)
    key = (hashlib.sha1(data.tobytes()).hexdigest(), data.shape, tuple(np.round(spacing_mm, 6)), int(n_classes),
           float(foreground_threshold))
    if key not in _CACHE:
        top = float(data.max())
        head = data[data > foreground_threshold * top]
        centres = np.concatenate([[0.0], kmeans_1d(head, int(n_classes))])
        # the mask and its distance map on a grid of about 2 mm (smooth: trilinear back to the template)
        f = max(1, int(round(2.0 / float(spacing_mm.min()))))
        small, sp = data[::f, ::f, ::f], spacing_mm * f
        mask = brain_mask(small, sp, centres)
        sd = (ndimage.distance_transform_edt(~mask, sampling=sp) - ndimage.distance_transform_edt(mask, sampling=sp))
        if f > 1:
            sd = ndimage.map_coordinates(sd.astype(np.float32), np.indices(data.shape, np.float32) / f, order=1, mode="nearest")
        _CACHE.clear()  # one template at a time (each model holds a template-sized array)
        _CACHE[key] = TissueModel(centres, sd.astype(np.float32))
    return _CACHE[key]


def draw_tissue(rng: np.random.Generator, n_centres: int, cfg) -> dict:
    """Per-subject class means / spreads and skull choice from a :class:`~jaxmed.data.synth.SynthConfig`.

    Returns ``{"mode": "template" | "random" | "inverted", "means": (n_centres,), "stds": (n_centres,),
    "skull_strip": bool, "mask_margin_mm": float}`` (plain lists / floats).
    """
    u_invert, u_tissue, u_strip = rng.uniform(size=3)
    means = rng.uniform(*cfg.class_mean_range, n_centres)
    stds = rng.uniform(*cfg.class_std_range, n_centres)
    means[0] = stds[0] = 0.0  # the background (air) stays dark in every contrast
    margin = float(rng.uniform(*cfg.mask_margin_mm_range))
    if u_invert < cfg.p_invert:
        mode = "inverted"
        means[1:] = np.sort(means[1:])[::-1]
    elif u_tissue < cfg.p_tissue:
        mode = "random"
    else:
        mode, means, stds = "template", np.zeros(n_centres), np.zeros(n_centres)
    return {"mode": mode, "means": means.tolist(), "stds": stds.tolist(), "skull_strip": bool(u_strip < cfg.p_skull_strip),
            "mask_margin_mm": margin}


def randomise_template(data: np.ndarray, model: TissueModel, tissue: dict, rng: np.random.Generator) -> np.ndarray:
    """The template intensities ``data`` with the drawn ``tissue`` contrast and skull (float32, same shape)."""
    out = np.asarray(data, np.float32)
    if tissue["mode"] != "template":
        means = np.asarray(tissue["means"], np.float64)
        stds = np.asarray(tissue["stds"], np.float64)
        c = model.centres
        lut_x = np.linspace(0.0, float(max(out.max(), c[-1])), 2048)
        mu = np.interp(lut_x, c, means).astype(np.float32)
        sd = np.interp(lut_x, c, stds).astype(np.float32)
        idx = np.clip(np.rint(out * ((len(lut_x) - 1) / lut_x[-1])).astype(np.int32), 0, len(lut_x) - 1)
        noise = rng.standard_normal(out.shape, dtype=np.float32)
        out = np.maximum(mu[idx] + sd[idx] * noise, 0.0)
    if tissue["skull_strip"]:
        out = np.where(model.signed_distance_mm <= tissue["mask_margin_mm"], out, np.float32(0.0))
    return out


def draw_degrade(rng: np.random.Generator, cfg) -> dict:
    """Per-subject resolution / sharpness: ``{"thick_axis": int or -1, "thickness_mm", "blur_sigma_mm", "sharpen"}``."""
    u_thick, axis, thickness, blur, sharpen = rng.uniform(size=5)
    thick = u_thick < cfg.p_thick_slice
    lo, hi = cfg.slice_thickness_mm_range
    blo, bhi = cfg.blur_sigma_mm_range
    slo, shi = cfg.sharpen_range
    return {"thick_axis": int(axis * 3) if thick else -1, "thickness_mm": float(lo + thickness * (hi - lo)) if thick else 0.0,
            "blur_sigma_mm": float(blo + blur * (bhi - blo)), "sharpen": float(slo + sharpen * (shi - slo))}


def degrade(data: np.ndarray, affine: np.ndarray, degrade_params: dict, clip_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Thick slices, blur and sharpening of a subject image ``data`` ``(X, Y, Z)`` with voxel->world
    ``affine`` ``(4, 4)``; returns the new ``(data, affine)`` (float32; the affine changes only for
    thick slices, whose kept slices sit exactly where they were)."""
    data = np.asarray(data, np.float32)
    affine = np.array(affine, np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    axis = degrade_params["thick_axis"]
    if axis >= 0:
        k = max(1, int(round(degrade_params["thickness_mm"] / spacing[axis])))
        if k > 1:
            sigma = degrade_params["thickness_mm"] / (2.0 * math.sqrt(2.0 * math.log(2.0))) / spacing[axis]
            data = ndimage.gaussian_filter1d(data, sigma, axis=axis, mode="nearest")
            data = np.ascontiguousarray(np.take(data, np.arange(0, data.shape[axis], k), axis=axis))
            affine[:3, axis] *= k
            spacing[axis] *= k
    if degrade_params["blur_sigma_mm"] > 0:
        data = ndimage.gaussian_filter(data, degrade_params["blur_sigma_mm"] / spacing, mode="nearest")
    if degrade_params["sharpen"] > 0:
        smooth = ndimage.gaussian_filter(data, 1.0 / spacing, mode="nearest")
        data = data + np.float32(degrade_params["sharpen"]) * (data - smooth)
    return np.clip(data, 0.0, clip_max).astype(np.float32), affine
