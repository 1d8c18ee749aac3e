"""jaxmed.registration_evaluation: the best rigid fit, the scores of an answer, and
``jaxmed evaluate REG_RUN --data SPEC`` end to end on a phantom run."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxmed import registration_evaluation as rr
from jaxmed.data.geometry import apply_affine


def _rigid(rotvec_deg, translation) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_rotvec(np.radians(rotvec_deg)).as_matrix()
    m[:3, 3] = translation
    return m


def test_best_rigid_recovers_a_rigid_map_and_fits_noisy_points_least_squares():
    rng = np.random.default_rng(0)
    src = rng.normal(0.0, 30.0, size=(32, 3))
    truth = _rigid([10.0, -5.0, 20.0], [4.0, -7.0, 2.5])
    np.testing.assert_allclose(rr.best_rigid(src, apply_affine(truth, src)), truth, atol=1e-9)
    noisy = apply_affine(truth, src) + rng.normal(0.0, 2.0, size=src.shape)
    fit = rr.best_rigid(src, noisy)
    residual = np.linalg.norm(apply_affine(fit, src) - noisy, axis=1)
    for tweak in (_rigid([1.0, 0, 0], [0, 0, 0]), _rigid([0, 0, 0], [0.5, 0, 0])):  # any other rigid map fits worse
        assert np.sum(residual ** 2) < np.sum(np.linalg.norm(apply_affine(fit @ tweak, src) - noisy, axis=1) ** 2)


def test_scores_of_the_best_fit_a_rotated_and_a_shifted_answer():
    rng = np.random.default_rng(1)
    tpl = rng.normal(0.0, 30.0, size=(32, 3))
    subject = apply_affine(_rigid([3.0, 0, -4.0], [2.0, 1.0, 0.0]), tpl) + rng.normal(0.0, 1.5, size=tpl.shape)
    g = _rigid([0, 15.0, 5.0], [10.0, -8.0, 3.0])  # the pose the subject was scanned in
    best = g @ rr.best_rigid(tpl, subject)
    moved = apply_affine(g, subject)
    exact = rr.pair_scores(best, best, tpl, moved)
    floor = np.linalg.norm(apply_affine(best, tpl) - moved, axis=1).mean()
    assert exact["to_best_mm"] < 1e-9 and exact["rotation_deg"] < 1e-5 and exact["success"]
    assert exact["tre_mm"] == pytest.approx(floor) and floor > 1.0
    shifted = rr.pair_scores(best @ _rigid([0, 0, 0], [3.0, 0, 0]), best, tpl, moved)
    assert shifted["to_best_mm"] == pytest.approx(3.0) and shifted["rotation_deg"] < 1e-5 and not shifted["success"]
    turned = rr.pair_scores(best @ _rigid([0, 0, 7.0], [0, 0, 0]), best, tpl, moved)
    assert turned["rotation_deg"] == pytest.approx(7.0, abs=1e-6) and turned["tre_mm"] > exact["tre_mm"]
    assert rr.pair_scores(np.eye(4), best, tpl, moved)["to_best_mm"] > 10.0


def test_error_to_the_pose_is_zero_for_the_pose_and_its_distance_to_the_best_fit():
    rng = np.random.default_rng(4)
    tpl = rng.normal(0.0, 30.0, size=(32, 3))
    subject = apply_affine(_rigid([2.0, 1.0, 0.0], [1.0, -2.0, 0.5]), tpl) + rng.normal(0.0, 1.0, size=tpl.shape)
    g = _rigid([5.0, -10.0, 8.0], [-6.0, 4.0, 9.0])
    best = g @ rr.best_rigid(tpl, subject)
    at_pose = rr.pair_scores(g, best, tpl, apply_affine(g, subject), g)
    assert at_pose["to_pose_mm"] < 1e-9
    assert at_pose["to_best_mm"] == pytest.approx(np.linalg.norm(apply_affine(rr.best_rigid(tpl, subject), tpl) - tpl, axis=1).mean())
    assert "to_pose_mm" not in rr.pair_scores(g, best, tpl, apply_affine(g, subject))


def test_evaluate_command_on_a_registration_run(tmp_path, capsys, monkeypatch):
    """``jaxmed evaluate REG_RUN --data test --poses 2 --seeds`` on a two-seed phantom run (untrained
    networks: the command's path, not the accuracy): every seed, the identity and both optax baselines
    scored on the same posed pairs; the identity's errors follow from the poses; optax finds the
    best rigid alignment; files written, and refused again without --overwrite."""
    import json

    from untrained_runs import untrained_run

    from jaxmed.cli import main
    from jaxmed.errors import ConfigError, OverwriteError

    run = tmp_path / "run"
    cfg, net, members = untrained_run(run, "configs/phantom_registration_dqn.yaml", seeds=2, max_rotation_deg=8.0)
    assert rr.is_registration_run(run) and not rr.is_registration_run(tmp_path)

    assert main(["evaluate", str(run), "--data", "test", "--poses", "2", "--seeds"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads((run / "eval_test.json").read_text())
    assert (run / "eval_test.md").read_text().strip() in printed
    assert list(doc["methods"]) == ["before (identity)", "agent seed 0", "agent seed 1", "optax ncc", "optax mi"]
    n_pairs = 2 * cfg.data.n_test
    assert all(len(rows) == n_pairs for rows in doc["pairs"].values())
    assert doc["labels"] == ["L0", "L1", "L2", "L3"] and len(doc["poses"]) == 2
    poses = np.asarray(doc["poses"])
    assert np.all(np.abs(poses[:, :3]) <= 10.0) and np.all(np.abs(poses[:, 3:]) <= 8.0)
    before = doc["methods"]["before (identity)"]
    assert before["to_best_mm"]["mean"] > 5.0 and before["success"] == 0.0
    for b in ("optax ncc", "optax mi"):  # an intensity registration finds the best rigid alignment (synthetic
        # subjects carry a pose of their own besides G, so the error to G alone is not the target here)
        assert doc["methods"][b]["to_best_mm"]["mean"] < 0.25 * before["to_best_mm"]["mean"]
        assert doc["methods"][b]["success"] >= 0.5 and doc["methods"][b]["seconds_per_pair"] > 0
    for row in doc["pairs"]["before (identity)"]:  # identity: the pose's own displacement of the template landmarks
        assert row["to_pose_mm"] > 0 and row["rotation_deg"] >= 0
    mtime = (run / "eval_test.json").stat().st_mtime_ns
    assert main(["evaluate", str(run), "--data", "test", "--poses", "2"]) == 2  # refused before any work
    assert "already exists" in capsys.readouterr().err and (run / "eval_test.json").stat().st_mtime_ns == mtime
    with pytest.raises(OverwriteError):
        rr.evaluate_registration_sets(run, ["test"], n_poses=1)
    assert main(["evaluate", str(run), "--data", "test", "--poses", "1", "--no-registration", "--overwrite",
                 "--out", str(tmp_path / "out"), "--starts", "2", "--intensity-scales", "0.9", "1"]) == 0
    doc = json.loads((tmp_path / "out" / "eval_test.json").read_text())
    assert list(doc["methods"]) == ["before (identity)", "agent"] and len(doc["poses"]) == 1
    assert doc["agent_episodes"] == {"intensity_scales": [0.9, 1.0], "starts": 2}
    assert "intensity copies x 0.9, 1, 2 start(s) each, answers pooled" in doc["table"]
    # a set whose subjects share fewer than 3 landmarks with the template: refused before any work
    from jaxmed.data import sources

    class TwoLabels:
        def labels(self):
            return ("L0", "L1", "other")

    monkeypatch.setattr(sources, "from_spec", lambda spec, spacing: TwoLabels())
    with pytest.raises(ConfigError, match="at least 3"):
        rr.evaluate_registration_set((cfg, net, members[0]), "my_scans")
