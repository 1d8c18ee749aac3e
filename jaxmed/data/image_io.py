"""Reading and writing 3D images: NIfTI via nibabel, DICOM series via pydicom (optional).

Every loaded image is checked (3D, finite, invertible affine), brought to RAS voxel order (the
voxel axes point as closely as possible to +R, +A, +S), optionally resampled onto an
axis-aligned isotropic grid, and optionally intensity-normalised. The voxel->world affine is
carried through every step, so a landmark's world position lands on the same anatomy.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from jaxmed.data import geometry
from jaxmed.data.volume import Volume
from jaxmed.errors import ConfigError, ImageError, check_writable

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: fewest voxels along any axis of an image jaxmed accepts (smaller is a slice stack or a mistake)
MIN_AXIS_VOXELS = 8
#: most voxels of an image jaxmed accepts (2**30: 4 GiB as float32, e.g. 1024^3)
MAX_VOXELS = 1 << 30


def _is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path) -> Volume:
    """Read a NIfTI file as it is stored (no reorientation or resampling).

    Returns a :class:`Volume` with float32 data ``(X, Y, Z)`` and nibabel's best voxel->world affine
    (sform, else qform). Raises :class:`ImageError` naming the file for every unusable input.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory; for a DICOM series use read_dicom_series / load_image")
    try:
        img = nib.load(str(path))
    except Exception as e:  # nibabel raises several types for a non-NIfTI file
        raise ImageError(f"{path}: not a readable NIfTI image ({type(e).__name__}: {e})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ImageError(f"{path}: not a NIfTI image (nibabel read it as {type(img).__name__})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ImageError(f"{path}: expected a 3D image, got shape {img.shape} ({len(img.shape)}D)")
    check_grid(shape, img.header.get_data_dtype(), str(path))  # from the header, before reading any voxel
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile) as e:
        raise ImageError(f"{path}: truncated or corrupt image data ({type(e).__name__}: {e})") from None
    return _checked_volume(data, img.affine, str(path))


def check_grid(shape, dtype, source: str) -> None:
    """Raise :class:`ImageError` naming ``source`` unless an image of ``shape`` (3 ints) and voxel
    ``dtype`` is usable: scalar integer or real float voxels (not RGB, complex or structured),
    at least :data:`MIN_AXIS_VOXELS` voxels per axis, at most :data:`MAX_VOXELS` voxels. Called with
    the header's values, before the voxel data are read."""
    dtype = np.dtype(dtype)
    if dtype.fields is not None or dtype.kind not in "biuf":
        kind = "RGB / multi-channel" if dtype.fields is not None else {"c": "complex"}.get(dtype.kind, "non-numeric")
        raise ImageError(f"{source}: {kind} voxels ({dtype}) are not supported; expected one scalar intensity per "
                         f"voxel (integer or real float); convert the image to a single-channel magnitude image first")
    shape = tuple(int(n) for n in shape)
    if min(shape) < MIN_AXIS_VOXELS:
        raise ImageError(f"{source}: image of shape {shape} is too small; jaxmed needs at least {MIN_AXIS_VOXELS} "
                         f"voxels along every axis")
    n = int(np.prod(np.array(shape, dtype=object)))
    if n > MAX_VOXELS:
        raise ImageError(f"{source}: image of shape {shape} has {n:.3g} voxels, more than the {MAX_VOXELS:.3g} "
                         f"jaxmed loads ({MAX_VOXELS * 4 / 2**30:.0f} GiB as float32); crop or downsample it first")


def _checked_volume(data: np.ndarray, affine: np.ndarray, source: str) -> Volume:
    if data.ndim != 3:
        raise ImageError(f"{source}: expected a 3D image, got shape {data.shape}")
    check_grid(data.shape, data.dtype, source)
    bad = ~np.isfinite(data)
    if bad.any():
        raise ImageError(f"{source}: {int(bad.sum())} voxels are NaN or Inf")
    return Volume(data=data, affine=geometry.check_affine(affine, source), source=source)


def read_dicom_series(directory: str | Path) -> Volume:
    """Read a DICOM series (one directory of single-frame slices) into a world-RAS :class:`Volume`.

    Slices are sorted along the slice normal by ImagePositionPatient; the affine is built from
    ImageOrientationPatient, PixelSpacing and the slice positions (DICOM is LPS; converted to RAS).
    Voxel axes of the result: (column, row, slice). Needs the optional ``pydicom`` package.
    """
    directory = Path(directory)
    try:
        import pydicom
    except ImportError:
        raise ImageError(
            f"{directory}: reading DICOM needs pydicom, which is not installed; run: pip install 'jaxmed[dicom]'"
        ) from None
    if not directory.is_dir():
        raise ImageError(f"{directory}: not a directory of DICOM slices")
    slices = []
    for f in sorted(p for p in directory.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(str(f))
        except Exception:
            continue
        if "ImagePositionPatient" in ds and "PixelData" in ds:
            slices.append(ds)
    if len(slices) < 2:
        raise ImageError(f"{directory}: found {len(slices)} DICOM image slices; a 3D series needs at least 2")
    series = {str(getattr(s, "SeriesInstanceUID", "")) for s in slices}
    if len(series) > 1:
        raise ImageError(f"{directory}: holds {len(series)} DICOM series; put one series per directory")
    iop = np.asarray(slices[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda s: float(np.dot(np.asarray(s.ImagePositionPatient, dtype=np.float64), normal)))
    ipp = np.array([np.asarray(s.ImagePositionPatient, dtype=np.float64) for s in slices])
    d_row, d_col = (float(v) for v in slices[0].PixelSpacing)  # spacing between rows, between columns
    step = (ipp[-1] - ipp[0]) / (len(slices) - 1)
    if np.linalg.norm(step) < 1e-6:
        raise ImageError(f"{directory}: DICOM slices share one position; cannot build a 3D volume")
    samples = int(getattr(slices[0], "SamplesPerPixel", 1))
    if samples != 1:
        raise ImageError(f"{directory}: DICOM slices with {samples} samples per pixel (colour) are not supported; "
                         f"expected one scalar intensity per voxel")
    check_grid((int(slices[0].Columns), int(slices[0].Rows), len(slices)), np.float32, str(directory))
    lps = np.eye(4)
    lps[:3, 0] = row_dir * d_col  # voxel i runs along a row (across columns)
    lps[:3, 1] = col_dir * d_row  # voxel j runs down the rows
    lps[:3, 2] = step
    lps[:3, 3] = ipp[0]
    stack = []
    for s in slices:
        px = s.pixel_array.astype(np.float32)
        px = px * float(getattr(s, "RescaleSlope", 1.0)) + float(getattr(s, "RescaleIntercept", 0.0))
        stack.append(px.T)  # (rows, cols) -> (cols, rows) = (i, j)
    data = np.stack(stack, axis=-1).astype(np.float32)
    return _checked_volume(data, geometry.LPS_TO_RAS @ lps, str(directory))


def reorient_to_ras(volume: Volume) -> Volume:
    """Permute/flip voxel axes so they point as closely as possible to +R, +A, +S.

    Exact: only axis permutations and flips; the affine is updated so every voxel keeps its world
    position. Oblique rotations stay in the affine (use :func:`resample_isotropic` to remove them).
    """
    ornt = nib.orientations.io_orientation(volume.affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ornt, ras)
    if np.array_equal(transform, ras):
        return volume
    data = nib.orientations.apply_orientation(volume.data, transform)
    affine = volume.affine @ nib.orientations.inv_ornt_aff(transform, volume.shape)
    return volume.replace(data=np.ascontiguousarray(data, dtype=np.float32), affine=affine)


def is_axis_aligned_ras(affine: np.ndarray, tol: float = 1e-6) -> bool:
    """True if the affine's linear part is diagonal with positive entries (voxel axes = R, A, S)."""
    lin = np.asarray(affine)[:3, :3]
    return bool(np.all(np.abs(lin - np.diag(np.diag(lin))) < tol) and np.all(np.diag(lin) > 0))


def resample_isotropic(volume: Volume, spacing: float = 1.0, order: int = 1, chunk_voxels: int = 4_000_000) -> Volume:
    """Resample onto an axis-aligned RAS grid of isotropic ``spacing`` mm covering the whole image.

    The output grid's voxel 0 sits at the minimum world corner of the input's voxel-centre bounding
    box. Interpolation: ``scipy.ndimage.map_coordinates`` of ``order`` (1 = trilinear), outside = 0.
    Processed in chunks of ``chunk_voxels`` output voxels to bound memory. A volume that already
    has this exact grid is returned unchanged.
    """
    if spacing <= 0:
        raise ImageError(f"{volume.source}: resampling spacing must be positive, got {spacing}")
    if is_axis_aligned_ras(volume.affine) and np.allclose(volume.spacing, spacing, atol=1e-6):
        return volume
    corners = np.array([[i, j, k] for i in (0, volume.shape[0] - 1) for j in (0, volume.shape[1] - 1) for k in (0, volume.shape[2] - 1)])
    world = volume.voxel_to_world(corners)
    lo, hi = world.min(0), world.max(0)
    out_shape = tuple(int(n) for n in np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1)
    out_affine = geometry.axis_aligned_affine(spacing, lo)
    to_input = np.linalg.inv(volume.affine) @ out_affine  # output voxel -> input voxel
    out = np.empty(out_shape, dtype=np.float32)
    plane = out_shape[0] * out_shape[1]
    zs_per_chunk = max(1, chunk_voxels // plane)
    ii, jj = np.meshgrid(np.arange(out_shape[0]), np.arange(out_shape[1]), indexing="ij")
    for z0 in range(0, out_shape[2], zs_per_chunk):
        zs = np.arange(z0, min(out_shape[2], z0 + zs_per_chunk))
        grid = np.stack(np.broadcast_arrays(ii[..., None], jj[..., None], zs[None, None, :]), axis=-1).reshape(-1, 3)
        coords = geometry.apply_affine(to_input, grid).T
        vals = ndimage.map_coordinates(volume.data, coords, order=order, mode="constant", cval=0.0, prefilter=order > 1)
        out[:, :, zs] = vals.reshape(out_shape[0], out_shape[1], len(zs))
    return volume.replace(data=out, affine=out_affine)


def normalise_intensity(volume: Volume, low_pct: float = 0.5, high_pct: float = 99.5) -> Volume:
    """Clip intensities to the ``[low_pct, high_pct]`` percentiles and scale that range to [0, 1].

    The choice and the raw values it mapped are recorded in ``Volume.normalisation`` (plain Python
    floats, JSON-serialisable).
    """
    if not 0 <= low_pct < high_pct <= 100:
        raise ImageError(f"{volume.source}: need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")
    lo, hi = (float(v) for v in np.percentile(volume.data, [low_pct, high_pct]))
    if hi <= lo:
        lo, hi = float(volume.data.min()), float(volume.data.max())
    if hi <= lo:
        raise ImageError(f"{volume.source}: image is constant ({lo}); cannot normalise intensities")
    data = ((np.clip(volume.data.astype(np.float64), lo, hi) - lo) / (hi - lo)).astype(np.float32)
    record = {"method": "percentile", "low_pct": float(low_pct), "high_pct": float(high_pct), "low_value": lo, "high_value": hi}
    return volume.replace(data=data, normalisation=record)


def conform(volume: Volume, spacing: float = 1.0) -> Volume:
    """Reorient to RAS and resample onto an axis-aligned isotropic grid of ``spacing`` mm.

    What agents need: one voxel step is the same distance along R, A and S in every volume.
    """
    return resample_isotropic(reorient_to_ras(volume), spacing)


def load_image(
    path: str | Path,
    *,
    spacing: float | None = None,
    normalise: bool = True,
    low_pct: float = 0.5,
    high_pct: float = 99.5,
) -> Volume:
    """Load a NIfTI file or DICOM series directory, ready for jaxmed.

    Steps: read and check -> reorient to RAS voxel order -> if ``spacing`` (mm) is given, resample
    to an axis-aligned isotropic grid -> if ``normalise``, percentile-normalise to [0, 1].
    """
    path = Path(path)
    vol = read_dicom_series(path) if path.is_dir() else read_nifti(path)
    vol = reorient_to_ras(vol) if spacing is None else conform(vol, spacing)
    if normalise:
        vol = normalise_intensity(vol, low_pct, high_pct)
    return vol


def save_nifti(volume: Volume, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``volume`` as NIfTI-1 (float32, sform and qform = its affine). Refuses to overwrite."""
    path = Path(path)
    if not _is_nifti_name(path):
        raise ImageError(f"{path}: output name must end in .nii or .nii.gz")
    check_writable(path, overwrite)
    img = nib.Nifti1Image(np.asarray(volume.data, dtype=np.float32), volume.affine)
    img.set_sform(volume.affine, code=1)
    img.set_qform(volume.affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def check_intensity_scales(scales, where: str) -> tuple[float, ...]:
    """``scales`` as a tuple of floats; :class:`ConfigError` naming ``where`` unless it is a non-empty
    sequence of finite numbers > 0 without repeats."""
    try:
        values = tuple(float(s) for s in scales)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a list of numbers > 0, got {scales!r}") from None
    if not values or any(not math.isfinite(s) or s <= 0 for s in values) or len(set(values)) != len(values):
        raise ConfigError(f"{where}: expected a non-empty list of distinct finite numbers > 0, got {list(scales)}")
    return values


def scaled_copies(volumes, scales: Sequence[float]) -> list:
    """Each volume once per factor of ``scales`` (volume after volume: ``len(volumes) * len(scales)``
    volumes), its intensities multiplied by the factor and clipped to the volume's own maximum (a
    normalised image stays in its range; a factor of 1 is the volume itself)."""
    out = []
    for v in volumes:
        data = np.asarray(v.data, np.float32)
        top = float(data.max())
        out.extend(v if s == 1.0 else v.replace(data=np.minimum(data * np.float32(s), np.float32(top))) for s in scales)
    return out
