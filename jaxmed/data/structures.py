"""Label maps of structures carried to synthetic subjects, and the :class:`SegBank` segmentation envs read.

A structure is a binary mask on the template grid: an ellipsoid phantom's organ
(:func:`ellipsoid_label`), a mask-defined AFIDs structure (:func:`jaxmed.data.anatomy.structure_mask`)
or the voxels of an atlas label map with given ids (:func:`label_mask`, e.g. AAL caudate 71 / 72).

Subjects: :func:`seg_subjects` draws the synthetic subjects of :mod:`jaxmed.data.synth` (the same
seeds, hence the same images as :func:`jaxmed.data.make_population`) and carries the template mask
through each subject's transform with *nearest-neighbour* lookup: every output voxel ``y`` (subject
world RAS mm) takes the template label at the template voxel nearest to ``B(y)``, the subject's
backward map. The structure's centroid is carried like a landmark (solving ``B(y) = x``).

Crops: every subject is cut to a fixed axis-aligned RAS grid of ``crop_size``³ voxels of
``spacing`` mm centred on its (carried) structure centroid, the image trilinearly (then its 1st /
99th percentiles mapped to 0 / 1, :func:`normalise_crop`), the label by nearest neighbour. The
*atlas* crop is the template's label cut on the same grid around the template centroid and simply
laid on the subject's crop (translation-only atlas transfer: the classical baseline and a starting
mask).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from scipy import ndimage

from jaxmed.data import geometry
from jaxmed.data.landmarks import Landmarks
from jaxmed.data.volume import Volume
from jaxmed.errors import ConfigError, LandmarkError

STORAGE = {"uint8": jnp.uint8, "float32": jnp.float32}
#: Normalised intensity stored as 255 in uint8 banks: fixed (the synthetic model's ``clip_max``), so
#: training, test and new images share one mapping.
INTENSITY_MAX = 1.2


# ------------------------------------------------------------------ template masks


def ellipsoid_label(volume: Volume, landmarks: Landmarks, name: str = "organ") -> np.ndarray:
    """The organ mask ``(X, Y, Z)`` bool of :func:`jaxmed.data.phantoms.ellipsoid_phantom`: its first
    six points ``"<name>#000".."#005"`` are the axis extremes ``centre ± semi`` (+x, -x, +y, -y, +z, -z),
    so the ellipsoid is recovered exactly. :class:`LandmarkError` if the points are missing."""
    labels = [f"{name}#{i:03d}" for i in range(6)]
    missing = [l for l in labels if l not in landmarks.labels]
    if missing:
        raise LandmarkError(f"{landmarks.source}: no ellipsoid '{name}' (missing points {', '.join(missing)})")
    p = landmarks.select(labels).positions
    centre = 0.5 * (p[0::2] + p[1::2]).mean(axis=0)
    semi = 0.5 * np.abs(p[0::2] - p[1::2])[[0, 1, 2], [0, 1, 2]]
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), -1)
    world = volume.voxel_to_world(idx)
    return np.sum(((world - centre) / semi) ** 2, axis=-1) <= 1.0


def label_mask(labels: Volume, ids: Sequence[int]) -> np.ndarray:
    """Voxels of an integer label map whose label is one of ``ids`` (bool); :class:`ConfigError` if
    none of the ids occurs (naming the map)."""
    data = np.asarray(labels.data)
    mask = np.isin(np.rint(data).astype(np.int64), np.asarray(list(ids), np.int64))
    if not mask.any():
        raise ConfigError(f"{labels.source}: no voxel carries label id(s) {list(ids)}")
    return mask


def template_structure_mask(volume: Volume, landmarks: Landmarks, structure: str) -> np.ndarray:
    """The template mask of ``structure``: an AFIDs mask-defined structure
    (:data:`jaxmed.data.anatomy.STRUCTURES`) or an ellipsoid phantom's organ (points ``"<structure>#i"``)."""
    from jaxmed.data.anatomy import STRUCTURES, structure_mask

    if structure in STRUCTURES:
        return structure_mask(volume, landmarks, structure)
    if f"{structure}#000" in landmarks.labels:
        return ellipsoid_label(volume, landmarks, structure)
    raise ConfigError(f"structure {structure!r}: neither an anatomy structure ({', '.join(STRUCTURES)}) nor an "
                      f"ellipsoid organ of {landmarks.source}")


def centroid_world(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """``(3,)`` world RAS mm, the mean voxel centre of ``mask`` (:class:`ConfigError` if empty)."""
    if not np.any(mask):
        raise ConfigError(f"{volume.source}: empty structure mask")
    return volume.voxel_to_world(np.argwhere(mask).mean(axis=0))


def structure_points(volume: Volume, mask: np.ndarray, name: str, n_points: int = 26) -> Landmarks:
    """Surface points of a label as landmarks ``"<name>#000" ...`` (world RAS mm; the six axis extremes
    first, :func:`jaxmed.data.anatomy.mask_points`): the form in which the box and corner-pair envs read
    a target, so a label map (e.g. an AAL structure) becomes a box target when these points are carried
    with the subjects like any landmark."""
    from jaxmed.data.anatomy import mask_points, point_labels

    points = mask_points(volume, np.asarray(mask, bool), n_points)
    return Landmarks(point_labels(name, n_points), points, source=f"{name} surface of {volume.source}")


def mask_box(volume: Volume, mask: np.ndarray, n_points: int = 26) -> tuple[np.ndarray, np.ndarray]:
    """Surface points of a label (:func:`jaxmed.data.anatomy.mask_points`) -> their world bounding box
    ``(min (3,), max (3,))`` mm: the target of the box envs for a label-defined structure."""
    from jaxmed.data.anatomy import box_from_points, mask_points

    return box_from_points(mask_points(volume, np.asarray(mask, bool), n_points))


# ------------------------------------------------------------------ crops


def crop_affine(centre, crop_size: int, spacing: float) -> np.ndarray:
    """``(4, 4)`` voxel -> world of the axis-aligned RAS grid of ``crop_size``³ voxels of ``spacing`` mm
    whose middle is ``centre`` (world mm)."""
    origin = np.asarray(centre, np.float64) - 0.5 * (crop_size - 1) * spacing
    return geometry.axis_aligned_affine(float(spacing), origin)


def _grid_world(affine: np.ndarray, crop_size: int) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(crop_size)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return geometry.voxel_to_world(affine, idx)


def sample(volume: Volume, world: np.ndarray, order: int) -> np.ndarray:
    """``volume`` at world points ``(n, 3)`` mm (``order`` 1: trilinear, 0: nearest), 0 outside."""
    vox = volume.world_to_voxel(world)
    if order == 0:
        vox = np.rint(vox)
    return ndimage.map_coordinates(np.asarray(volume.data, np.float32), vox.T, order=min(order, 1), mode="constant", cval=0.0)


def crop_volume(volume: Volume, centre, crop_size: int, spacing: float, order: int = 1) -> Volume:
    """The ``crop_size``³ grid of :func:`crop_affine` sampled from ``volume`` (order 1 or 0)."""
    affine = crop_affine(centre, crop_size, spacing)
    data = sample(volume, _grid_world(affine, crop_size), order).reshape((crop_size,) * 3)
    return Volume(data.astype(np.float32), affine, source=f"crop of {volume.source}")


#: Percentiles of a crop mapped to 0 and 1 by :func:`normalise_crop`.
CROP_PERCENTILES = (1.0, 99.0)


def normalise_crop(crop: Volume) -> Volume:
    """The crop's intensities mapped linearly so that its 1st / 99th percentiles become 0 / 1 (not
    clipped; a constant crop becomes 0). Every image crop a segmentation env sees (training subjects
    and new images alike) is normalised this way, so a threshold window means the same on both."""
    lo, hi = np.percentile(crop.data, CROP_PERCENTILES)
    data = (crop.data - lo) / (hi - lo) if hi > lo else np.zeros_like(crop.data)
    return Volume(np.maximum(data, 0).astype(np.float32), crop.affine, source=crop.source)


# ------------------------------------------------------------------ subjects with labels


@dataclasses.dataclass(frozen=True)
class SegSubject:
    """One segmentation example: ``image`` and ``label`` (0/1) crops on one grid, the ``atlas`` crop
    (template label, translation-only transfer) on the same grid, and the full ``volume`` it was cut from."""

    image: Volume
    label: Volume
    atlas: Volume
    volume: Volume
    seed: int


def warped_label(template: Volume, mask: np.ndarray, landmarks: Landmarks, seed: int, world: np.ndarray,
                 config=None) -> np.ndarray:
    """Template ``mask`` carried into synthetic subject ``seed`` at subject world points ``(n, 3)``:
    nearest-neighbour lookup at ``B(world)`` (the subject's backward map, redrawn from its seed with
    the same ``landmarks`` it was synthesised with). ``(n,)`` bool."""
    from jaxmed.data import synth

    config = synth.SynthConfig() if config is None else config
    transform, _ = synth._draw_transform(template, landmarks, np.random.default_rng(int(seed)), config)
    tpl_world = transform.backward(np.asarray(world, np.float64))
    vox = np.rint(template.world_to_voxel(tpl_world)).astype(np.int64)
    inside = np.all((vox >= 0) & (vox < np.asarray(template.shape)), axis=1)
    out = np.zeros(len(world), bool)
    v = vox[inside]
    out[inside] = np.asarray(mask, bool)[v[:, 0], v[:, 1], v[:, 2]]
    return out


def seg_subjects(template: Volume, mask: np.ndarray, n: int, *, split: str = "train", base_seed: int = 0,
                 crop_size: int = 24, spacing: float = 2.0, name: str = "structure", config=None) -> list[SegSubject]:
    """``n`` synthetic subjects of ``split`` (the seeds of :func:`jaxmed.data.synth.split_seeds`) with
    the template ``mask`` carried by nearest neighbour, cut to ``crop_size``³ crops of ``spacing`` mm
    around each subject's structure centroid (module docstring)."""
    from jaxmed.data import synth

    config = synth.SynthConfig() if config is None else config
    if crop_size < 3:
        raise ConfigError(f"seg_subjects: crop_size must be >= 3, got {crop_size}")
    mask = np.asarray(mask, bool)
    if mask.shape != template.shape:
        raise ConfigError(f"seg_subjects: mask shape {mask.shape} differs from the template's {template.shape}")
    centre = centroid_world(template, mask)
    landmarks = Landmarks((name,), centre[None], source=f"{template.source} {name} centroid")
    label_volume = Volume(mask.astype(np.float32), template.affine, source=f"{name} label of {template.source}")
    atlas = crop_volume(label_volume, centre, crop_size, spacing, order=0)
    out = []
    for seed in synth.split_seeds(split, n, base_seed):
        subject = synth.synthesize_subject(template, landmarks, seed, config)
        c = subject.landmarks.positions[0]
        image = normalise_crop(crop_volume(subject.volume, c, crop_size, spacing, order=1))
        world = _grid_world(image.affine, crop_size)
        label = warped_label(template, mask, landmarks, seed, world, config).reshape((crop_size,) * 3)
        out.append(SegSubject(image, Volume(label.astype(np.float32), image.affine, source=f"{name} label of seed {seed}"),
                              Volume(atlas.data, image.affine, source=f"{name} atlas on seed {seed}"), subject.volume, seed))
    return out


# ------------------------------------------------------------------ the bank


@struct.dataclass
class SegBank:
    """Image, label and atlas crops of ``N`` examples, stacked (a pytree: pass it to jitted envs).

    Attributes (``D`` = crop edge, voxels):
      images: ``(N, D, D, D)`` storage dtype (uint8 scaled to the bank's max, or float32).
      labels_mask: ``(N, D, D, D)`` uint8 0/1, the structure.
      atlas: ``(N, D, D, D)`` uint8 0/1, the template's label on the same grid (a prior / start).
      affines: ``(N, 4, 4)`` float32, crop voxel -> world RAS mm.
      intensity_scale: ``()`` float32, stored value times this = normalised intensity.
      structure: static name of the structure.
      labels: static, ``()`` (no landmarks; kept so the outer loop treats every bank alike).
    """

    images: jax.Array
    labels_mask: jax.Array
    atlas: jax.Array
    affines: jax.Array
    intensity_scale: jax.Array
    structure: str = struct.field(pytree_node=False)
    labels: tuple[str, ...] = struct.field(pytree_node=False, default=())

    @property
    def n_volumes(self) -> int:
        return int(self.images.shape[0])

    @property
    def crop_size(self) -> int:
        return int(self.images.shape[-1])

    def intensity(self, index) -> jax.Array:
        """``(D, D, D)`` float32 normalised intensities of example ``index``."""
        return self.images[index].astype(jnp.float32) * self.intensity_scale


def build_seg_bank(subjects: Sequence[SegSubject], structure: str, dtype: str = "uint8",
                   scale: float = INTENSITY_MAX) -> SegBank:
    """Stack :class:`SegSubject` crops (one grid size) into a :class:`SegBank`. uint8 storage maps
    normalised intensities ``[0, scale]`` to ``0..255`` (clipped)."""
    if not subjects:
        raise ConfigError("build_seg_bank: no subjects")
    if dtype not in STORAGE:
        raise ConfigError(f"build_seg_bank: dtype must be one of {sorted(STORAGE)}, got {dtype!r}")
    shapes = {s.image.shape for s in subjects}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or len(set(next(iter(shapes)))) != 1:
        raise ConfigError(f"build_seg_bank: crops must share one cubic shape, got {sorted(shapes)}")
    images = np.stack([s.image.data for s in subjects]).astype(np.float32)
    top = float(scale)
    if not top > 0:
        raise ConfigError(f"build_seg_bank: scale must be > 0, got {scale}")
    if dtype == "uint8":
        stored, factor = np.clip(np.rint(images / top * 255.0), 0, 255).astype(np.uint8), top / 255.0
    else:
        stored, factor = images, 1.0
    return SegBank(
        images=jnp.asarray(stored),
        labels_mask=jnp.asarray(np.stack([s.label.data > 0.5 for s in subjects]).astype(np.uint8)),
        atlas=jnp.asarray(np.stack([s.atlas.data > 0.5 for s in subjects]).astype(np.uint8)),
        affines=jnp.asarray(np.stack([s.image.affine for s in subjects]), jnp.float32),
        intensity_scale=jnp.asarray(factor, jnp.float32),
        structure=structure,
    )


def image_bank(image: Volume, atlas: np.ndarray, structure: str, dtype: str = "uint8") -> SegBank:
    """A one-example :class:`SegBank` of an unlabelled crop (for segmenting a new image): the label
    is empty and never read by a policy."""
    empty = Volume(np.zeros(image.shape, np.float32), image.affine)
    return build_seg_bank([SegSubject(image, empty, Volume(np.asarray(atlas, np.float32), image.affine), image, -1)],
                          structure, dtype)


def make_seg_bank(template: Volume, landmarks: Landmarks, structure: str, n: int, *, split: str = "train",
                  base_seed: int = 0, crop_size: int = 24, spacing: float = 2.0, dtype: str = "uint8"):
    """``(SegBank, subjects)``: :func:`seg_subjects` of the template's ``structure``
    (:func:`template_structure_mask`) stacked by :func:`build_seg_bank`."""
    mask = template_structure_mask(template, landmarks, structure)
    subjects = seg_subjects(template, mask, n, split=split, base_seed=base_seed, crop_size=crop_size,
                            spacing=spacing, name=structure)
    return build_seg_bank(subjects, structure, dtype), subjects


#: AAL atlas regions (label ids on the Colin27 grid, :func:`jaxmed.data.colin27.load_aal`) of the
#: deep grey-matter structures, left / right.
AAL_STRUCTURES = {"caudate_l": (71,), "caudate_r": (72,), "putamen_l": (73,), "putamen_r": (74,),
                  "thalamus_l": (77,), "thalamus_r": (78,), "hippocampus_l": (37,), "hippocampus_r": (38,)}


def colin27_structure(name: str, spacing: float | None = 2.0, image: str = "ch2"):
    """``(Colin27 volume, its AAL mask of structure name)`` on one grid (``spacing`` mm or 1 mm;
    the image normalised, the labels resampled by nearest neighbour). :class:`ConfigError` for an
    unknown name (listing :data:`AAL_STRUCTURES`); the data come from ``jaxmed data fetch colin27``."""
    from jaxmed.data import colin27

    if name not in AAL_STRUCTURES:
        raise ConfigError(f"unknown AAL structure {name!r}; available: {', '.join(AAL_STRUCTURES)}")
    volume, _ = colin27.load(image, spacing=spacing)
    labels, _ = colin27.load_aal(spacing=spacing)
    if labels.shape != volume.shape or not np.allclose(labels.affine, volume.affine, atol=1e-3):
        raise ConfigError(f"{labels.source}: the AAL grid {labels.shape} differs from the Colin27 image's {volume.shape}")
    return volume, label_mask(labels, AAL_STRUCTURES[name])
