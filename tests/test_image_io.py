"""Reading NIfTI / DICOM, reorientation, isotropic resampling, normalisation, bad input."""


import nibabel as nib
import numpy as np
import pytest

from jaxmed.data import geometry
from jaxmed.data.image_io import (
    is_axis_aligned_ras,
    load_image,
    normalise_intensity,
    read_nifti,
    reorient_to_ras,
    resample_isotropic,
    save_nifti,
)
from jaxmed.data.phantoms import blob_phantom
from jaxmed.data.volume import Volume
from jaxmed.errors import ImageError, OverwriteError


def _oblique_flipped_affine():
    """Voxel axes stored as (S, -R, A)-ish with anisotropic spacing and a 12 degree obliquity."""
    perm = np.array([[0, -1, 0], [0, 0, 1], [1, 0, 0]], dtype=float)  # voxel i->S, j->-R, k->A
    lin = geometry.rotation_matrix([12.0, -7.0, 5.0]) @ perm @ np.diag([2.5, 1.2, 0.8])
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = [40.0, -30.0, 12.0]
    return aff


def _phantom_in_scanner_geometry(tmp_path):
    """The blob phantom resampled into an oblique, flipped, anisotropic grid and saved as NIfTI."""
    vol, lm = blob_phantom(shape=(40, 40, 40), spacing=2.0, seed=3, noise=0.0)
    aff = _oblique_flipped_affine()
    lin = aff[:3, :3]
    # pick a grid that covers the phantom: centre it on the world origin
    shape = (36, 70, 100)
    aff[:3, 3] = -lin @ ((np.array(shape) - 1) / 2)
    from scipy import ndimage

    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    src = vol.world_to_voxel(geometry.voxel_to_world(aff, idx)).T
    data = ndimage.map_coordinates(vol.data, src, order=1, cval=0.0).reshape(shape).astype(np.float32)
    path = tmp_path / "scanner.nii.gz"
    nib.save(nib.Nifti1Image(data * 1000.0 + 50.0, aff), str(path))
    return path, vol, lm


def test_reorient_is_exact_and_ras(tmp_path):
    path, _, lm = _phantom_in_scanner_geometry(tmp_path)
    raw = read_nifti(path)
    ras = reorient_to_ras(raw)
    assert nib.aff2axcodes(ras.affine) == ("R", "A", "S")
    # every voxel keeps its world position: compare values at the landmarks' world points
    for p in lm.positions:
        a = raw.data[tuple(np.rint(raw.world_to_voxel(p)).astype(int))]
        b = ras.data[tuple(np.rint(ras.world_to_voxel(p)).astype(int))]
        assert a == b


def test_loaded_landmarks_land_on_same_anatomy(tmp_path):
    """Oblique + flipped + anisotropic input, resampled to 1.5 mm: the blob peaks stay at the landmarks."""
    path, _, lm = _phantom_in_scanner_geometry(tmp_path)
    vol = load_image(path, spacing=1.5, normalise=False)  # geometry only: keep the blob peaks unclipped
    assert is_axis_aligned_ras(vol.affine)
    np.testing.assert_allclose(vol.spacing, 1.5)
    for p in lm.positions:
        v = np.rint(vol.world_to_voxel(p)).astype(int)
        win = vol.data[v[0] - 4 : v[0] + 5, v[1] - 4 : v[1] + 5, v[2] - 4 : v[2] + 5]
        w = np.clip(win - 0.5 * (win.max() + np.median(win)), 0, None)  # the blob's bright core
        idx = np.stack(np.meshgrid(*[np.arange(9)] * 3, indexing="ij"), -1) - 4 + v
        centroid = vol.voxel_to_world((w[..., None] * idx).sum((0, 1, 2)) / w.sum())
        assert np.linalg.norm(centroid - p) < 1.0  # mm, after two resamplings of a 2 mm phantom


def test_resample_matches_direct_sampling():
    vol, _ = blob_phantom(shape=(24, 24, 24), spacing=2.0, seed=1)
    aff = vol.affine.copy()
    aff[:3, :3] = geometry.rotation_matrix([0, 0, 20]) @ aff[:3, :3]
    obl = vol.replace(affine=aff)
    iso = resample_isotropic(obl, 1.0)
    # a voxel of the output maps back into the input where trilinear interpolation gives its value
    from scipy import ndimage

    rng = np.random.default_rng(0)
    pts = rng.integers(0, np.array(iso.shape), size=(50, 3))
    src = obl.world_to_voxel(iso.voxel_to_world(pts))
    ref = ndimage.map_coordinates(obl.data, src.T, order=1, cval=0.0)
    np.testing.assert_allclose(iso.data[tuple(pts.T)], ref, atol=1e-5)


def test_resample_is_noop_on_matching_grid():
    vol, _ = blob_phantom(shape=(16, 16, 16), spacing=2.0)
    assert resample_isotropic(vol, 2.0) is vol


def test_normalisation_is_recorded_and_robust():
    rng = np.random.default_rng(0)
    data = rng.normal(100, 10, size=(20, 20, 20)).astype(np.float32)
    data[0, 0, 0] = 1e6  # a hot pixel must not compress the range
    out = normalise_intensity(Volume(data, np.eye(4)), 1.0, 99.0)
    rec = out.normalisation
    assert rec["method"] == "percentile" and rec["low_pct"] == 1.0 and rec["high_pct"] == 99.0
    assert type(rec["low_value"]) is float and type(rec["high_value"]) is float
    assert out.data.min() == 0.0 and out.data.max() == 1.0
    assert 0.3 < np.median(out.data) < 0.7


def test_save_and_reload_round_trip(tmp_path):
    vol, _ = blob_phantom(shape=(12, 14, 16), spacing=1.5)
    p = save_nifti(vol, tmp_path / "v.nii.gz")
    back = read_nifti(p)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    np.testing.assert_array_equal(back.data, vol.data)
    with pytest.raises(OverwriteError):
        save_nifti(vol, p)
    save_nifti(vol, p, overwrite=True)


def test_dicom_series_matches_nifti_world(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    vol = rng.integers(0, 1000, size=(10, 9, 8)).astype(np.uint16)  # (cols i, rows j, slices k)
    row_dir = np.array([1.0, 0.0, 0.0])  # LPS
    col_dir = np.array([0.0, 0.0, -1.0])  # coronal slices
    normal = np.cross(row_dir, col_dir)
    series = generate_uid()
    ddir = tmp_path / "dicom"
    ddir.mkdir()
    for k in [2, 0, 3, 1, 7, 5, 4, 6]:  # written out of order on purpose
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(ddir / f"s{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SeriesInstanceUID = series
        ds.ImageOrientationPatient = [*row_dir, *col_dir]
        ds.ImagePositionPatient = list(np.array([-10.0, 5.0, 30.0]) + k * 2.0 * normal)
        ds.PixelSpacing = [0.9, 0.7]  # row spacing, column spacing
        ds.Rows, ds.Columns = 9, 10
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 2, -5
        ds.PixelData = np.ascontiguousarray(vol[:, :, k].T).tobytes()
        ds.save_as(str(ddir / f"s{k}.dcm"), enforce_file_format=True)
    out = load_image(ddir, normalise=False)
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    # voxel (i, j, k) of the series sits at LPS IPP0 + i*0.7*row + j*0.9*col + k*2*normal
    for i, j, k in [(0, 0, 0), (9, 8, 7), (2, 3, 1)]:
        lps = np.array([-10.0, 5.0, 30.0]) + i * 0.7 * row_dir + j * 0.9 * col_dir + k * 2.0 * normal
        ras = lps * [-1, -1, 1]
        v = np.rint(out.world_to_voxel(ras)).astype(int)
        assert out.data[tuple(v)] == vol[i, j, k] * 2 - 5


# ---- bad input -------------------------------------------------------------------------------


def _nifti(tmp_path, data, affine=np.eye(4), name="img.nii.gz"):
    p = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), str(p))
    return p


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="nope.nii.gz: file not found"):
        load_image(tmp_path / "nope.nii.gz")


def test_not_a_nifti(tmp_path):
    p = tmp_path / "notes.nii"
    p.write_text("this is not an image\n" * 40)
    with pytest.raises(ImageError, match="notes.nii"):
        load_image(p)


def test_truncated_gz(tmp_path):
    p = _nifti(tmp_path, np.random.default_rng(0).random((30, 30, 30)))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageError, match="img.nii.gz: truncated or corrupt"):
        load_image(p)


@pytest.mark.parametrize("shape", [(10, 10), (5, 5, 5, 3)])
def test_wrong_dimensionality(tmp_path, shape):
    p = _nifti(tmp_path, np.ones(shape))
    with pytest.raises(ImageError, match=r"img.nii.gz: expected a 3D image"):
        load_image(p)


def test_single_volume_4d_is_accepted(tmp_path):
    p = _nifti(tmp_path, np.random.default_rng(0).random((8, 9, 10, 1)))
    assert load_image(p).shape == (8, 9, 10)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_voxels(tmp_path, bad):
    d = np.ones((8, 8, 8))
    d[2, 3, 4] = bad
    with pytest.raises(ImageError, match="img.nii.gz: 1 voxels are NaN or Inf"):
        load_image(_nifti(tmp_path, d))


def test_singular_affine(tmp_path):
    # nibabel refuses to save a singular affine, so write the header fields by hand
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((8, 8, 8))
    hdr.set_data_dtype(np.float32)
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]
    hdr["vox_offset"], hdr["magic"] = 352, b"n+1"
    p = tmp_path / "flat.nii"
    with open(p, "wb") as f:
        hdr.write_to(f)
        f.write(b"\0" * 4 + np.random.default_rng(0).random((8, 8, 8)).astype(np.float32).tobytes(order="F"))
    with pytest.raises(ImageError, match="flat.nii: affine is singular"):
        load_image(p)


def test_dicom_dir_without_slices(tmp_path):
    pytest.importorskip("pydicom")
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ImageError, match="found 0 DICOM image slices"):
        load_image(tmp_path)


def _header_only_nifti(path, shape, dtype=np.float32, nifti2=False):
    """A NIfTI file whose header claims ``shape`` but holds only a few bytes of voxel data: loading
    it must fail on the header, never try to allocate or read the voxels."""
    hdr = (nib.Nifti2Header if nifti2 else nib.Nifti1Header)()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 544 if nifti2 else 352
    with open(path, "wb") as f:
        hdr.write_to(f)
        f.write(b"\0" * (int(hdr["vox_offset"]) - f.tell()) + b"\0" * 64)
    return path


def test_huge_image_is_refused_from_the_header(tmp_path):
    p = _header_only_nifti(tmp_path / "huge.nii", (100_000, 100_000, 100_000), nifti2=True)
    with pytest.raises(ImageError, match=r"huge.nii: image of shape \(100000, 100000, 100000\) has 1e\+15 voxels, more than"):
        load_image(p)
    p = _header_only_nifti(tmp_path / "wide.nii", (32767, 32767, 8))
    with pytest.raises(ImageError, match="wide.nii: .* crop or downsample"):
        read_nifti(p)


def test_rgb_image_is_refused(tmp_path):
    rgb = np.zeros((10, 10, 10), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    p = tmp_path / "rgb.nii.gz"
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), str(p))
    with pytest.raises(ImageError, match=r"rgb.nii.gz: RGB / multi-channel voxels .* not supported"):
        load_image(p)


def test_complex_image_is_refused(tmp_path):
    p = tmp_path / "cplx.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.complex64), np.eye(4)), str(p))
    with pytest.raises(ImageError, match=r"cplx.nii.gz: complex voxels \(complex64\) are not supported"):
        load_image(p)


@pytest.mark.parametrize("shape", [(3, 3, 3), (64, 64, 7)])
def test_too_small_image_is_refused(tmp_path, shape):
    p = _nifti(tmp_path, np.ones(shape))
    with pytest.raises(ImageError, match=rf"img.nii.gz: image of shape \({shape[0]}, {shape[1]}, {shape[2]}\) is too small; .*at least 8"):
        load_image(p)


def test_small_dicom_series_is_refused_before_reading_pixels(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    series = generate_uid()
    for k in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(tmp_path / f"s{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SeriesInstanceUID = series
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.PixelSpacing = [1.0, 1.0]
        ds.Rows, ds.Columns = 16, 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = b"\0" * 8  # far too short: the size check must come before the pixels are decoded
        ds.save_as(str(tmp_path / f"s{k}.dcm"), enforce_file_format=True)
    with pytest.raises(ImageError, match=r"image of shape \(16, 16, 3\) is too small"):
        load_image(tmp_path)
