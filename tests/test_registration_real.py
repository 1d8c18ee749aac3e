"""benchmarks/registration_real.py: Colin27 written under known poses and read back puts the anatomy where the pose says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from jaxmed.data import blob_phantom, load_image, save_nifti

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "registration_real.py"
_spec = importlib.util.spec_from_file_location("registration_real", _PATH)
rr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rr)


def test_moved_images_put_the_anatomy_where_the_pose_says(tmp_path):
    """A phantom written under a pose and read back as a user's file (reoriented, resampled to 2 mm):
    each landmark's bright blob lies at ``G`` applied to its original world position."""
    volume, landmarks = blob_phantom(shape=(40, 40, 40), spacing=2.0, n_landmarks=3, seed=2)
    path = save_nifti(volume, tmp_path / "phantom.nii.gz")
    centre = volume.voxel_to_world((np.array(volume.shape) - 1) / 2)
    poses = np.array([[6.0, -4.0, 2.0, 12.0, -8.0, 15.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    pairs = rr.moved_images(tmp_path, {"phantom": path}, poses, centre)
    assert [p["pose"] for p in pairs] == [0, 1] and np.allclose(pairs[1]["G"], np.eye(4), atol=1e-6)
    for pair in pairs:
        moved = load_image(pair["path"], spacing=2.0, normalise=False)  # unclipped: one peak per blob
        for p in landmarks.positions:
            q = pair["G"][:3, :3] @ p + pair["G"][:3, 3]  # where the pose carries the landmark
            vox = np.round(moved.world_to_voxel(q[None])[0]).astype(int)
            lo = np.maximum(vox - 3, 0)
            patch = moved.data[lo[0]:vox[0] + 4, lo[1]:vox[1] + 4, lo[2]:vox[2] + 4]
            peak = lo + np.array(np.unravel_index(np.argmax(patch), patch.shape))
            assert np.linalg.norm(moved.voxel_to_world(peak[None])[0] - q) <= 2.0
    assert not np.allclose(pairs[0]["G"], np.eye(4))
