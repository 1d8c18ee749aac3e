"""benchmarks/registration_real.py: the best rigid fit, the scores of an answer, the moved images."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxmed.data import blob_phantom, load_image, save_nifti

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "registration_real.py"
_spec = importlib.util.spec_from_file_location("registration_real", _PATH)
rr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rr)


def _rigid(rotvec_deg, translation) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(np.radians(rotvec_deg)).as_matrix()
    m[:3, 3] = translation
    return m


def test_best_rigid_recovers_a_rigid_map_and_fits_noisy_points_least_squares():
    rng = np.random.default_rng(0)
    src = rng.normal(0.0, 30.0, size=(32, 3))
    truth = _rigid([10.0, -5.0, 20.0], [4.0, -7.0, 2.5])
    np.testing.assert_allclose(rr.best_rigid(src, rr.apply(truth, src)), truth, atol=1e-9)
    noisy = rr.apply(truth, src) + rng.normal(0.0, 2.0, size=src.shape)
    fit = rr.best_rigid(src, noisy)
    residual = np.linalg.norm(rr.apply(fit, src) - noisy, axis=1)
    for tweak in (_rigid([1.0, 0, 0], [0, 0, 0]), _rigid([0, 0, 0], [0.5, 0, 0])):  # any other rigid map fits worse
        assert np.sum(residual ** 2) < np.sum(np.linalg.norm(rr.apply(fit @ tweak, src) - noisy, axis=1) ** 2)


def test_scores_of_the_best_fit_a_rotated_and_a_shifted_answer():
    rng = np.random.default_rng(1)
    tpl = rng.normal(0.0, 30.0, size=(32, 3))
    subject = rr.apply(_rigid([3.0, 0, -4.0], [2.0, 1.0, 0.0]), tpl) + rng.normal(0.0, 1.5, size=tpl.shape)
    g = _rigid([0, 15.0, 5.0], [10.0, -8.0, 3.0])  # the pose the subject was scanned in
    best = g @ rr.best_rigid(tpl, subject)
    moved = rr.apply(g, subject)
    exact = rr.pair_scores(best, best, tpl, moved)
    floor = np.linalg.norm(rr.apply(best, tpl) - moved, axis=1).mean()
    assert exact["to_best_mm"] < 1e-9 and exact["rotation_deg"] < 1e-5 and exact["success"]
    assert exact["tre_mm"] == pytest.approx(floor) and floor > 1.0
    shifted = rr.pair_scores(best @ _rigid([0, 0, 0], [3.0, 0, 0]), best, tpl, moved)
    assert shifted["to_best_mm"] == pytest.approx(3.0) and shifted["rotation_deg"] < 1e-5 and not shifted["success"]
    turned = rr.pair_scores(best @ _rigid([0, 0, 7.0], [0, 0, 0]), best, tpl, moved)
    assert turned["rotation_deg"] == pytest.approx(7.0, abs=1e-6) and turned["tre_mm"] > exact["tre_mm"]
    assert rr.pair_scores(np.eye(4), best, tpl, moved)["to_best_mm"] > 10.0


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
            q = rr.apply(pair["G"], p[None])[0]  # where the pose carries the landmark
            vox = np.round(moved.world_to_voxel(q[None])[0]).astype(int)
            lo = np.maximum(vox - 3, 0)
            patch = moved.data[lo[0]:vox[0] + 4, lo[1]:vox[1] + 4, lo[2]:vox[2] + 4]
            peak = lo + np.array(np.unravel_index(np.argmax(patch), patch.shape))
            assert np.linalg.norm(moved.voxel_to_world(peak[None])[0] - q) <= 2.0
    assert not np.allclose(pairs[0]["G"], np.eye(4))


def test_error_to_the_pose_is_zero_for_the_pose_and_its_distance_to_the_best_fit():
    rng = np.random.default_rng(4)
    tpl = rng.normal(0.0, 30.0, size=(32, 3))
    subject = rr.apply(_rigid([2.0, 1.0, 0.0], [1.0, -2.0, 0.5]), tpl) + rng.normal(0.0, 1.0, size=tpl.shape)
    g = _rigid([5.0, -10.0, 8.0], [-6.0, 4.0, 9.0])
    best = g @ rr.best_rigid(tpl, subject)
    at_pose = rr.pair_scores(g, best, tpl, rr.apply(g, subject), g)
    assert at_pose["to_pose_mm"] < 1e-9
    assert at_pose["to_best_mm"] == pytest.approx(np.linalg.norm(rr.apply(rr.best_rigid(tpl, subject), tpl) - tpl, axis=1).mean())
    assert "to_pose_mm" not in rr.pair_scores(g, best, tpl, rr.apply(g, subject))
