"""benchmarks/real_scan_variants.py: every acquisition variant keeps its landmarks on the anatomy.

A small volume with a bright cube at a landmark goes through each variant, is written as NIfTI and
read back the way a user's scan is read (reoriented to RAS, resampled to 1 mm): the variant's
landmark must still sit in the cube, and the variants that move the head must move it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from jaxmed.data import load_image

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "real_scan_variants.py"
_spec = importlib.util.spec_from_file_location("real_scan_variants", _PATH)
rv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rv)


def _phantom():
    """``(data (60, 64, 72) uint8, affine, points (2, 3))``: dim background, bright 8 mm cubes at two
    landmarks (1 mm voxels, RAS, origin off centre)."""
    data = np.full((60, 64, 72), 20, np.uint8)
    affine = np.eye(4)
    affine[:3, 3] = (-30.0, -40.0, -30.0)
    centres = np.array([[28, 30, 40], [28, 42, 44]])
    for c in centres:
        data[c[0] - 4:c[0] + 4, c[1] - 4:c[1] + 4, c[2] - 4:c[2] + 4] = 220
    points = (centres - 0.5) + affine[:3, 3]  # the cube centres (voxel c - 0.5 is the middle of 8 voxels)
    return data, affine, points


@pytest.mark.parametrize("name", rv.VARIANTS)
def test_each_variant_keeps_its_landmarks_in_the_bright_cubes(tmp_path, name):
    data, affine, points = _phantom()
    vdata, vaffine, vpoints = rv.variant(name, data, affine, points)
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(vdata, vaffine), str(path))
    vol = load_image(path, spacing=1.0, normalise=False)
    vox = vol.world_to_voxel(vpoints)
    values = map_coordinates(np.asarray(vol.data, np.float32), vox.T, order=1)
    assert np.all(values > 150), (name, values)  # inside the cube (background 20, cube 220; noise and bias are mild)
    # and at its centre: the centroid (world mm) of the bright voxels within 8 mm of the landmark
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), -1).reshape(-1, 3)
    world = vol.voxel_to_world(grid)
    bright = np.asarray(vol.data, np.float32).reshape(-1) > 120
    for p in vpoints:
        near = bright & (np.linalg.norm(world - p, axis=1) < 8.0)
        assert np.linalg.norm(world[near].mean(0) - p) < 0.5, (name, world[near].mean(0), p)
    moved = np.linalg.norm(vpoints - points, axis=1)
    if name == "oblique":
        assert np.all(moved > 5.0)  # the head moved in the world, and its landmarks with it
    else:
        np.testing.assert_allclose(vpoints, points)
    if name == "thick-axial":
        assert np.allclose(np.abs(np.diag(vaffine)[:3]), [1.0, 1.0, 4.0]) and vdata.shape[2] == data.shape[2] // 4
    if name == "lps-storage":
        assert vaffine[0, 0] < 0 and vaffine[1, 1] < 0
        np.testing.assert_array_equal(np.asarray(vol.data), np.asarray(load_image(_save(tmp_path, data, affine), spacing=1.0,
                                                                                  normalise=False).data))


def _save(tmp_path, data, affine) -> Path:
    path = tmp_path / "orig.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_an_unknown_variant_is_refused():
    data, affine, points = _phantom()
    with pytest.raises(ValueError, match="unknown variant 'sideways'"):
        rv.variant("sideways", data, affine, points)
