"""Sub-voxel end points, robust aggregation and per-landmark uncertainty (jaxmed.inference)."""

from __future__ import annotations

import types

import numpy as np
import pytest
from scipy import optimize

from jaxmed import inference
from jaxmed.data.landmark_files import read_landmarks, write_landmarks
from jaxmed.detect import robust_mean
from jaxmed.errors import ConfigError, LandmarkError


def test_aggregates_match_a_numpy_hand_computation():
    rng = np.random.default_rng(0)
    p = rng.normal([10.0, -5.0, 3.0], 2.0, (40, 3))
    med = np.array([np.sort(p[:, i])[19:21].mean() for i in range(3)])  # 40 points: mean of the middle two
    np.testing.assert_allclose(inference.aggregate(p, "median").position, med)
    np.testing.assert_allclose(inference.aggregate(p, "mean").position, p.sum(0) / 40)
    d = np.sqrt(((p - med) ** 2).sum(1))
    closest = np.argsort(d)[:32]  # trim 0.2 of 40 points: the 32 closest to the median
    np.testing.assert_allclose(inference.aggregate(p, "trimmed", trim=0.2).position, p[closest].mean(0))
    est = inference.aggregate(p, "mean")
    assert est.n_points == 40
    assert est.uncertainty_mm == pytest.approx(np.median(np.sqrt(((p - p.mean(0)) ** 2).sum(1))))
    np.testing.assert_allclose(robust_mean(p, "trimmed"), p[closest].mean(0))  # detect delegates here


def test_geometric_median_minimises_the_summed_distance():
    rng = np.random.default_rng(1)
    p = rng.normal(0.0, 3.0, (25, 3)) * [1.0, 2.0, 0.5]
    gm = inference.geometric_median(p)
    cost = lambda y: np.linalg.norm(p - y, axis=1).sum()  # noqa: E731
    best = optimize.minimize(cost, p.mean(0), method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000}).x
    assert cost(gm) <= cost(best) + 1e-6
    np.testing.assert_allclose(gm, best, atol=1e-3)


def test_robust_aggregates_ignore_lost_agents():
    rng = np.random.default_rng(2)
    truth = np.array([1.0, 2.0, 3.0])
    good = truth + rng.normal(0.0, 0.3, (20, 3))
    lost = truth + np.array([[60.0, 0, 0], [0, -70.0, 0], [40.0, 40.0, 40.0], [80.0, 10.0, -30.0], [-50.0, 20.0, 0.0],
                             [0.0, 0.0, 90.0], [30.0, -60.0, 10.0], [70.0, 70.0, 0.0]])  # 8 of 28 agents lost
    pts = np.concatenate([good, lost])
    for method in ("median", "trimmed", "geomedian"):
        est = inference.aggregate(pts, method, trim=0.35)
        assert np.linalg.norm(est.position - truth) < 0.5, method
        assert est.uncertainty_mm < 1.5, method  # the median distance ignores the lost minority
    assert np.linalg.norm(inference.aggregate(pts, "mean").position - truth) > 5
    # duplicates: most agents end on the same voxel
    same = np.repeat(truth[None], 9, 0)
    np.testing.assert_allclose(inference.aggregate(np.concatenate([same, lost[:3]]), "geomedian").position, truth, atol=1e-6)
    assert inference.aggregate(same, "geomedian").uncertainty_mm == 0.0


def test_oscillation_centre_is_between_voxels():
    # 2 starts x 2 agents, ring of 6 positions (newest first)
    history = np.zeros((2, 2, 6, 3), np.int32)
    history[0, 0] = [[10, 10, 10], [11, 10, 10], [10, 10, 10], [11, 10, 10], [9, 9, 9], [0, 0, 0]]
    history[0, 1] = [[5, 5, 5]] * 6
    history[1, 0] = [[20, 20, 20], [20, 21, 20], [40, 40, 40], [40, 40, 40], [40, 40, 40], [40, 40, 40]]
    history[1, 1] = [[7, 7, 8], [7, 7, 7], [7, 7, 8], [7, 7, 7], [7, 7, 8], [7, 7, 7]]
    since = np.array([[3, 10], [1, 10]])  # agent (1, 0) switched to the finest level 1 step ago
    state = types.SimpleNamespace(pos=history[:, :, 0], history=history, since_switch=since)
    got = inference.end_points(state, osc_window=4)
    np.testing.assert_allclose(got[0, 0], [10.5, 10, 10])
    np.testing.assert_allclose(got[0, 1], [5, 5, 5])
    np.testing.assert_allclose(got[1, 0], [20, 20.5, 20])  # only its 2 finest-level positions
    np.testing.assert_allclose(got[1, 1], [7, 7, 7.5])
    np.testing.assert_array_equal(inference.end_points(state, 4, mode="final"), history[:, :, 0])
    with pytest.raises(ConfigError):
        inference.end_points(state, 4, mode="last")


@pytest.mark.parametrize("suffix", [".fcsv", ".csv", ".json", ".mrk.json"])
def test_uncertainty_is_written_with_the_answer_and_read_back(tmp_path, suffix):
    # 5 starts, 3 agents: two on AC, one on PC
    rng = np.random.default_rng(3)
    ac, pc = np.array([0.5, 4.0, -5.9]), np.array([0.3, -23.2, -3.7])
    pts = np.stack([ac + rng.normal(0, 0.5, (5, 3)), pc + rng.normal(0, 2.0, (5, 3)), ac + rng.normal(0, 0.5, (5, 3))], axis=1)
    found = inference.estimate_landmarks(pts, ("AC", "PC", "AC"), ("AC", "PC"), "geomedian", source="test")
    ac_est = inference.aggregate(pts[:, [0, 2]].reshape(-1, 3), "geomedian")
    np.testing.assert_allclose(found["AC"], ac_est.position)
    path = write_landmarks(found, tmp_path / f"found{suffix}")
    back = read_landmarks(path)
    np.testing.assert_allclose(back.positions, found.positions, atol=1e-4)
    unc = inference.read_uncertainty(back)
    assert set(unc) == {"AC", "PC"}
    assert unc["AC"] == pytest.approx(ac_est.uncertainty_mm, abs=0.006)
    assert unc["PC"] > unc["AC"]  # the scattered landmark is the uncertain one


def test_description_keeps_text_and_replaces_an_old_value():
    d = inference.uncertainty_description(1.234, "anterior commissure")
    assert d == "anterior commissure; uncertainty_mm=1.23"
    assert inference.uncertainty_description(0.5, d) == "anterior commissure; uncertainty_mm=0.50"


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="unknown aggregate"):
        inference.aggregate(np.zeros((3, 3)), "mode")
    with pytest.raises(LandmarkError):
        inference.aggregate(np.zeros((0, 3)))
    with pytest.raises(LandmarkError):
        inference.aggregate(np.array([[0.0, np.nan, 0.0]]))
    with pytest.raises(LandmarkError, match="no agent hunts"):
        inference.estimate_landmarks(np.zeros((2, 1, 3)), ("AC",), ("PC",))
    with pytest.raises(LandmarkError):
        inference.estimate_landmarks(np.zeros((2, 2, 3)), ("AC",), ("AC",))
