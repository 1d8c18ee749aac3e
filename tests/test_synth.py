"""Synthetic subject populations: landmarks follow the anatomy, geometry and intensity vary, splits stay apart."""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from jaxmed.data import geometry
from jaxmed.data.landmarks import Landmarks
from jaxmed.data.synth import (
    SynthConfig,
    make_population,
    orientation_matrix,
    split_seeds,
    synthesize_subject,
    write_population,
)
from jaxmed.data.volume import Volume
from jaxmed.errors import ConfigError, OverwriteError

N, SP = 48, 2.0
BLOB_SIGMA_MM = 5.0
# blob centres on template voxel nodes, so the trilinear template has its maxima exactly there
BLOB_VOXELS = np.array([[15, 24, 24], [33, 24, 24], [24, 13, 28], [24, 35, 20], [24, 24, 36], [19, 30, 13]])
QUIET = SynthConfig(bias_max=0.0, gamma_range=(1.0, 1.0), noise_std_range=(0.0, 0.0))


@pytest.fixture(scope="module")
def template():
    """48^3, 2 mm, RAS, centred on 0: a soft ellipsoid "head" (0.3) with bright Gaussian blobs (1.0)."""
    affine = geometry.axis_aligned_affine(SP, np.full(3, -SP * (N - 1) / 2))
    vol_world = geometry.voxel_to_world(affine, np.stack(np.meshgrid(*[np.arange(N)] * 3, indexing="ij"), -1))
    r = np.linalg.norm(vol_world / np.array([38.0, 42.0, 36.0]), axis=-1)
    data = 0.3 / (1 + np.exp((r - 1) * 20))
    centres = geometry.voxel_to_world(affine, BLOB_VOXELS)
    for c in centres:
        data = data + 0.7 * np.exp(-np.sum((vol_world - c) ** 2, -1) / (2 * BLOB_SIGMA_MM**2))
    vol = Volume(data.astype(np.float32), affine, source="test-template")
    lms = Landmarks(tuple(f"B{i}" for i in range(len(centres))), centres, source="test-landmarks")
    return vol, lms


@pytest.fixture(scope="module")
def quiet_population(template):
    return make_population(*template, 6, split="val", base_seed=3, config=QUIET)


def _trilinear(vol: Volume, world: np.ndarray) -> np.ndarray:
    return ndimage.map_coordinates(vol.data, vol.world_to_voxel(world).T, order=1, mode="constant", cval=0.0)


def test_same_seed_same_subject_and_different_seeds_differ(template):
    a, b, c = (synthesize_subject(*template, s) for s in (7, 7, 8))
    np.testing.assert_array_equal(a.volume.data, b.volume.data)
    np.testing.assert_array_equal(a.volume.affine, b.volume.affine)
    np.testing.assert_array_equal(a.landmarks.positions, b.landmarks.positions)
    assert a.params == b.params
    assert a.volume.data.dtype == np.float32
    assert not np.allclose(a.landmarks.positions, c.landmarks.positions, atol=0.1)
    assert a.volume.shape != c.volume.shape or not np.array_equal(a.volume.data, c.volume.data)
    json.dumps(a.params)  # serialisable
    assert 0.0 <= a.volume.data.min() and a.volume.data.max() <= SynthConfig().clip_max
    assert a.volume.data.std() > 0.05


def test_landmark_residuals_are_tiny(template, quiet_population):
    subjects = [*quiet_population, synthesize_subject(*template, 11)]
    for s in subjects:
        assert s.landmark_residual_mm < 1e-6
        s.landmarks.check_inside(s.volume)
        assert s.landmarks.labels == template[1].labels


def test_anatomy_follows_landmarks(template, quiet_population):
    tpl, lms = template
    expected = _trilinear(tpl, lms.positions)  # the blob peaks, ~1.0
    for s in quiet_population:
        got = _trilinear(s.volume, s.landmarks.positions)
        # both images are trilinear, so a blob's cone-shaped peak loses ~0.03-0.05 between voxels
        np.testing.assert_allclose(got, expected, atol=0.07)
        # the local maximum of the subject image lies within one voxel of each subject landmark
        for y in s.landmarks.positions:
            c = np.round(s.volume.world_to_voxel(y)).astype(int)
            lo, hi = np.maximum(c - 5, 0), np.minimum(c + 6, s.volume.shape)
            box = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
            vals = s.volume.data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            peak = s.volume.voxel_to_world(box.reshape(-1, 3)[np.argmax(vals)])
            assert np.linalg.norm(peak - y) <= s.volume.spacing.max()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_image_content_at_subject_landmark_equals_template_content(template, axis):
    """On a linear ramp template (reproduced exactly by trilinear interpolation), the subject image
    at y_L must equal the template at x_L: the image encodes the template coordinate it came from."""
    tpl, lms = template
    world = tpl.voxel_to_world(np.stack(np.meshgrid(*[np.arange(N)] * 3, indexing="ij"), -1))
    ramp = tpl.replace(data=(0.5 + world[..., axis] / 200).astype(np.float32))
    for seed in (21, 22):
        s = synthesize_subject(ramp, lms, seed, QUIET)
        got = _trilinear(s.volume, s.landmarks.positions)
        np.testing.assert_allclose(got, 0.5 + lms.positions[:, axis] / 200, atol=5e-5)  # 5e-5 = 0.01 mm
        # the template prior is measurably wrong on the same image
        prior = _trilinear(s.volume, lms.positions)
        assert np.abs(prior - got).max() > 5e-3


def test_geometry_varies_and_template_prior_is_far_off(template, quiet_population):
    tpl, lms = template
    spacings = {tuple(np.round(s.volume.spacing, 3)) for s in quiet_population}
    codes = {nib.aff2axcodes(s.volume.affine) for s in quiet_population}
    assert len(spacings) >= 2 and len(codes) >= 2
    assert any(c != ("R", "A", "S") for c in codes)
    assert any(len(set(np.round(s.volume.spacing, 3))) > 1 for s in quiet_population)  # anisotropic ones
    # oblique: the direction cosines are not all signed unit vectors
    cosines = [s.volume.affine[:3, :3] / s.volume.spacing for s in quiet_population]
    assert max(np.abs(np.abs(c).max(axis=0) - 1).max() for c in cosines) > 1e-4
    prior_err = np.concatenate([np.linalg.norm(s.landmarks.positions - lms.positions, axis=-1)
                                for s in quiet_population])
    assert prior_err.mean() > 4.0
    assert len({s.volume.shape for s in quiet_population}) == len(quiet_population)


def test_orientation_matrix():
    np.testing.assert_array_equal(orientation_matrix("RAS"), np.eye(3))
    np.testing.assert_array_equal(orientation_matrix("LPS"), np.diag([-1.0, -1.0, 1.0]))
    p = orientation_matrix("PIR")
    np.testing.assert_array_equal(p @ [1, 0, 0], [0, -1, 0])
    with pytest.raises(ConfigError):
        orientation_matrix("RAR")
    with pytest.raises(ConfigError):
        SynthConfig(orientations=("RAX",))
    with pytest.raises(ConfigError):
        SynthConfig(scale_range=(1.1, 0.9))


def test_split_seeds_are_disjoint():
    n = 10**6
    sets = {sp: set(split_seeds(sp, n)) for sp in ("train", "val", "test")}
    assert all(len(s) == n for s in sets.values())
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    other = set(split_seeds("train", n, base_seed=1))
    assert not other & (sets["train"] | sets["val"] | sets["test"])
    assert split_seeds("val", 3) == split_seeds("val", 5)[:3]
    with pytest.raises(ConfigError):
        split_seeds("validation", 3)


def test_write_population_round_trip_and_refuses_overwrite(template, quiet_population, tmp_path):
    pytest.importorskip("jaxmed.data.landmark_files")
    from jaxmed.data.landmark_files import read_landmarks

    subjects = quiet_population[:2]
    paths = write_population(subjects, tmp_path / "pop")
    names = sorted(p.name for p in paths)
    assert names == sorted(["sub-0001_T1w.nii.gz", "sub-0001_landmarks.fcsv", "sub-0002_T1w.nii.gz",
                            "sub-0002_landmarks.fcsv", "population.json"])
    for i, s in enumerate(subjects, start=1):
        img = nib.load(tmp_path / "pop" / f"sub-{i:04d}_T1w.nii.gz")
        np.testing.assert_allclose(img.affine, s.volume.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(img.dataobj), s.volume.data)
        assert img.get_data_dtype() == np.float32
        back = read_landmarks(tmp_path / "pop" / f"sub-{i:04d}_landmarks.fcsv")
        assert back.labels == s.landmarks.labels
        np.testing.assert_allclose(back.positions, s.landmarks.positions, atol=1e-4)
    manifest = json.loads((tmp_path / "pop" / "population.json").read_text())
    assert [e["seed"] for e in manifest["subjects"]] == [s.seed for s in subjects]
    with pytest.raises(OverwriteError):
        write_population(subjects, tmp_path / "pop")
    write_population(subjects[:1], tmp_path / "pop", overwrite=True)


def test_write_population_refuses_before_writing_anything(quiet_population, tmp_path):
    out = tmp_path / "pop"
    out.mkdir()
    (out / "population.json").write_text("{}")
    with pytest.raises(OverwriteError):
        write_population(quiet_population[:1], out)
    assert sorted(p.name for p in out.iterdir()) == ["population.json"]


def test_intensity_model_changes_values_not_anatomy(template):
    tpl, lms = template
    cfg = dataclasses.replace(QUIET, bias_max=0.2, gamma_range=(0.8, 1.25), noise_std_range=(0.02, 0.02),
                              noise="rician")
    quiet = synthesize_subject(tpl, lms, 5, QUIET)
    noisy = synthesize_subject(tpl, lms, 5, cfg)
    np.testing.assert_array_equal(quiet.volume.affine, noisy.volume.affine)
    np.testing.assert_allclose(quiet.landmarks.positions, noisy.landmarks.positions)
    diff = noisy.volume.data - quiet.volume.data
    assert 0.01 < diff.std() < 0.2
