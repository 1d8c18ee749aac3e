"""The robust affine shape model: least trimmed squares against an exhaustive search, outliers found
and mended from the other landmarks, inliers untouched, descriptions carried, clear errors."""

import itertools

import numpy as np
import pytest

from jaxmed.data import Landmarks, read_landmarks, write_landmarks
from jaxmed.errors import ConfigError, LandmarkError
from jaxmed.inference import read_uncertainty, uncertainty_description
from jaxmed.shape_model import apply_affine, check_landmarks, check_shape, fit_affine, robust_affine


def _scene(k=32, seed=0, noise=0.8):
    """A template configuration ``(k, 3)`` (brain-sized spread, mm), a random affine, and the mapped
    configuration with ``noise`` mm of Gaussian scatter per axis."""
    rng = np.random.default_rng(seed)
    template = rng.normal(scale=[25.0, 35.0, 20.0], size=(k, 3))
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag([1.1, 0.95, 1.05]) @ (np.eye(3) + rng.normal(scale=0.08, size=(3, 3)))
    matrix[:3, 3] = rng.uniform(-20, 20, 3)
    return template, matrix, apply_affine(matrix, template) + rng.normal(scale=noise, size=(k, 3))


def test_fit_affine_recovers_an_exact_map():
    template, matrix, _ = _scene(k=10)
    np.testing.assert_allclose(fit_affine(template, apply_affine(matrix, template)), matrix, atol=1e-9)


def test_lts_matches_an_exhaustive_search_of_the_best_subset():
    """With ``K = 9`` and ``keep = 2/3`` (6 landmarks kept) every 6-subset can be tried: the fit's
    trimmed cost equals the exhaustive optimum's (two answers 15-20 mm off, one 6 mm off)."""
    template, _, answers = _scene(k=9, seed=3)
    answers[[1, 5]] += [[15.0, 0, 0], [0, -20.0, 3.0]]
    answers[7] += [0, 0, 6.0]
    fit = robust_affine(template, answers, keep=2 / 3, seed=0)

    def trimmed_cost(m):
        r = np.linalg.norm(apply_affine(m, template) - answers, axis=1)
        return np.sort(r)[:6] ** 2

    best = min(trimmed_cost(fit_affine(template[list(s)], answers[list(s)])).sum() for s in itertools.combinations(range(9), 6))
    assert trimmed_cost(fit.matrix).sum() == pytest.approx(best, rel=1e-6)
    assert not fit.support[[1, 5]].any() and fit.support.sum() == 6


def test_outliers_are_found_and_replaced_by_the_other_landmarks_prediction():
    template, matrix, answers = _scene(seed=1)
    truth = apply_affine(matrix, template)
    lost = [3, 17, 30]  # agents that locked onto the wrong structure, 12-25 mm away
    answers[lost] += [[12.0, 0, 0], [0, 25.0, 0], [-9.0, 9.0, -9.0]]
    check = check_shape(answers, template)
    assert check.outliers.tolist() == [i in lost for i in range(32)]
    np.testing.assert_array_equal(check.positions[~check.outliers], answers[~check.outliers])  # inliers untouched
    assert np.linalg.norm(check.positions[lost] - truth[lost], axis=1).max() < 2.0  # mended from the rest
    assert check.residuals_mm[lost].min() > check.threshold_mm >= 5.0
    np.testing.assert_allclose(check.matrix[:3, :3], matrix[:3, :3], atol=0.05)  # 0.8 mm scatter
    np.testing.assert_allclose(check.matrix[:3, 3], matrix[:3, 3], atol=0.5)


def test_a_consistent_configuration_is_left_alone():
    template, _, answers = _scene(seed=2, noise=1.0)
    check = check_shape(answers, template)
    assert not check.outliers.any()
    np.testing.assert_array_equal(check.positions, answers)


def test_landmarks_carry_residuals_outlier_tags_and_uncertainty_through_a_file(tmp_path):
    template, _, answers = _scene(k=10, seed=4)
    answers[2] += [0, 0, 30.0]
    labels = tuple(f"L{i}" for i in range(10))
    found = Landmarks(labels, answers, tuple(uncertainty_description(0.5, "jaxmed") for _ in labels), source="scan.nii.gz")
    checked, check = check_landmarks(found, Landmarks(labels[::-1], template[::-1], source="tpl"))  # any label order
    assert check.outliers.tolist() == [i == 2 for i in range(10)]
    write_landmarks(checked, tmp_path / "a.fcsv")
    back = read_landmarks(tmp_path / "a.fcsv")
    unc = read_uncertainty(back)
    assert unc["L0"] == pytest.approx(0.5) and unc["L2"] == pytest.approx(check.residuals_mm[2], abs=0.01)
    assert "shape_outlier" in back.descriptions[2] and "shape_outlier" not in back.descriptions[0]
    assert all("shape_residual_mm=" in d and "jaxmed" in d for d in back.descriptions)
    again, _ = check_landmarks(checked, Landmarks(labels, template))  # re-checking replaces the tags, never stacks them
    assert all(d.count("shape_residual_mm") == 1 and d.count("uncertainty_mm") == 1 for d in again.descriptions)


def test_bad_inputs_are_clear_errors():
    template, _, answers = _scene(k=10)
    with pytest.raises(ConfigError, match="at least 8 landmarks"):
        check_shape(answers[:5], template[:5])
    flat = template.copy()
    flat[:, 2] = 0.0
    with pytest.raises(LandmarkError, match="span 3-D"):
        check_shape(answers, flat)
    bad = answers.copy()
    bad[0, 0] = np.nan
    with pytest.raises(LandmarkError, match="NaN"):
        check_shape(bad, template)
    with pytest.raises(ConfigError, match="keep"):
        robust_affine(template, answers, keep=0.2)
    labels = tuple(f"L{i}" for i in range(10))
    with pytest.raises(LandmarkError, match="scan.nii.gz.*has no L9"):
        check_landmarks(Landmarks(labels, answers, source="scan.nii.gz"), Landmarks(labels[:9], template[:9], source="tpl"))
