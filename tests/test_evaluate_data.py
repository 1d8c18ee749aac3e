"""``jaxmed evaluate RUN --data SPEC``: a checkpoint on any labelled set, beside the template prior and
the affine registration baseline on the same subjects; tables, per-subject CSV, no clobbering."""

import csv

import jax
import numpy as np
import pytest

from jaxmed.cli import main
from jaxmed.config import apply_overrides, load_yaml
from jaxmed.data import Volume, blob_phantom, read_landmarks, save_nifti, write_landmarks
from jaxmed.evaluation import LandmarkSetResult
from jaxmed.experiment import ExperimentConfig, dummy_observation, make_env, make_network
from jaxmed.run_files import save_network
from jaxmed.train import prepare_run_dir

CONFIG = "configs/phantom_dqn.yaml"


def untrained_run(run_dir, overrides=(), data=None):
    """A run directory holding an initialised (untrained) network: what evaluation and detection read
    (the phantom config, or its ``data`` section replaced)."""
    raw = load_yaml(CONFIG)
    if data is not None:
        raw["data"] = data
    cfg = ExperimentConfig.from_dict(apply_overrides(raw, ["env.eval_starts=2", "env.eval_max_steps=6", *overrides]), CONFIG)
    env, _, _ = make_env(cfg)
    params = make_network(cfg, env).init(jax.random.key(0), dummy_observation(cfg, env))
    prepare_run_dir(run_dir, cfg, resume=False, overwrite=False)
    save_network(run_dir, params)
    return cfg


def _population(tmp_path, n=2):
    """``data synth`` subjects made from the run's phantom template, and a manifest of them."""
    from jaxmed.data.run_data import template

    cfg = ExperimentConfig.from_dict(load_yaml(CONFIG), CONFIG)
    vol, lm = template(cfg.data)
    save_nifti(vol, tmp_path / "tpl.nii.gz")
    write_landmarks(lm, tmp_path / "tpl.fcsv")
    pop = tmp_path / "pop"
    assert main(["data", "synth", "-n", str(n), "-o", str(pop), "--split", "test", "--template", str(tmp_path / "tpl.nii.gz"),
                 "--landmarks", str(tmp_path / "tpl.fcsv")]) == 0
    manifest = tmp_path / "scans.csv"
    rows = ["subject,image,landmarks"] + [f"{p.name.split('_')[0]},pop/{p.name},pop/{p.name.split('_')[0]}_landmarks.fcsv"
                                         for p in sorted(pop.glob("*_T1w.nii.gz"))]
    manifest.write_text("\n".join(rows) + "\n")
    return lm, manifest


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_data_on_held_out_and_a_folder_of_scans(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = untrained_run(run)
    tpl_lm, manifest = _population(tmp_path)
    assert main(["evaluate", str(run), "--data", "test", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "template prior" in out and "affine registration" in out and "| scans |" in out
    rows = _read(run / "eval_scans.csv")
    assert [r["subject"] for r in rows] == ["sub-0001", "sub-0002"] and {r["label"] for r in rows} == {"L0"}
    for r in rows:  # hand check: each error from the subject's own landmark file and the template's coordinate
        truth = read_landmarks(tmp_path / "pop" / f"{r['subject']}_landmarks.fcsv").select(["L0"]).positions[0]
        prior = np.linalg.norm(truth - tpl_lm.select(["L0"]).positions[0])
        assert float(r["prior_error_mm"]) == pytest.approx(prior, abs=1e-3)
        agent = np.array([float(r[f"agent_{a}"]) for a in "xyz"])
        assert float(r["agent_error_mm"]) == pytest.approx(np.linalg.norm(agent - truth), abs=1e-3)
        # the affine registration recovers the synthetic pose far better than the prior
        assert float(r["registration_error_mm"]) < 0.5 * prior and float(r["registration_seconds"]) > 0
    md = (run / "eval_scans.md").read_text()
    assert "| L0 | 2 |" in md and "≤2 mm" in md and ">10 mm" in md
    assert len(_read(run / "eval_test.csv")) == cfg.data.n_test  # the run's own held-out subjects
    before = (run / "eval_scans.csv").read_bytes()
    assert main(["evaluate", str(run), "--data", str(manifest), "--no-registration"]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err and (run / "eval_scans.csv").read_bytes() == before
    out_dir = tmp_path / "elsewhere"
    assert main(["evaluate", str(run), "--data", str(manifest), "--no-registration", "--out", str(out_dir)]) == 0
    assert {r["registration_error_mm"] for r in _read(out_dir / "eval_scans.csv")} == {""}
    # test-time intensity copies: the same subjects and columns; bad factors refused before anything is written
    tta_dir = tmp_path / "tta"
    assert main(["evaluate", str(run), "--data", str(manifest), "--no-registration", "--out", str(tta_dir),
                 "--intensity-scales", "0.8", "1", "1.2"]) == 0
    assert [r["subject"] for r in _read(tta_dir / "eval_scans.csv")] == ["sub-0001", "sub-0002"]
    assert main(["evaluate", str(run), "--data", str(manifest), "--no-registration", "--out", str(tmp_path / "bad"),
                 "--intensity-scales", "-1"]) == 2
    assert "intensity_scales" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    split_dir = tmp_path / "split"  # the copies sharing the starts: one copy's work, the same subjects
    assert main(["evaluate", str(run), "--data", str(manifest), "--no-registration", "--out", str(split_dir),
                 "--intensity-scales", "0.8", "1", "1.2", "--split-starts", "--starts", "6"]) == 0
    assert [r["subject"] for r in _read(split_dir / "eval_scans.csv")] == ["sub-0001", "sub-0002"]
    assert main(["evaluate", str(run), "--data", str(manifest), "--no-registration", "--out", str(tmp_path / "bad"),
                 "--intensity-scales", "0.8", "1", "1.2", "--split-starts", "--starts", "2"]) == 2
    assert "split_starts" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_extra_sets_of_the_config_are_evaluated_by_default(tmp_path, capsys):
    _, manifest = _population(tmp_path, n=1)
    run = tmp_path / "run"
    cfg = untrained_run(run, [f"eval.extra_sets=[{manifest}]", "eval.registration=false", "data.n_test=1"])
    assert cfg.eval.extra_sets == (str(manifest),) and cfg.to_dict()["eval"]["registration"] is False
    assert "eval" not in untrained_run(tmp_path / "plain").to_dict()  # the default section is not written
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "| test | 1 | 1 |" in out and "| scans | 1 | 1 |" in out
    assert (run / "eval.md").exists() and (run / "eval_scans.csv").exists() and (run / "eval_test.csv").exists()


def test_set_result_statistics_by_hand(tmp_path):
    truth = np.zeros((4, 1, 3))
    agent = truth + np.array([[[1.0, 0, 0]], [[3.0, 0, 0]], [[0, 7.0, 0]], [[0, 0, 12.0]]])
    res = LandmarkSetResult(name="hand", labels=("AC",), subjects=("a", "b", "c", "d"), truth=truth, agent=agent,
                            prior=truth + 5.0, registration=None, agent_seconds=0.5, compile_seconds=1.0, registration_seconds=None)
    st = res.stats()["agent"]["AC"]
    assert st["mean"] == pytest.approx(23 / 4) and st["max"] == 12 and st["failures"] == 1
    assert (st["success_2mm"], st["success_4mm"], st["success_8mm"]) == (0.25, 0.5, 0.75)
    assert res.stats()["prior"]["all"]["mean"] == pytest.approx(5 * np.sqrt(3))
    assert res.methods() == ["agent", "prior"]
    md, path = res.write(tmp_path)
    assert md.name == "eval_hand.md" and [r["agent_error_mm"] for r in _read(path)] == ["1.0000", "3.0000", "7.0000", "12.0000"]
    assert "| AC | 4 | 5.75 ±" in md.read_text()
    # the signed mean offset per landmark: (1 + 3, 7, 12) / 4 per axis, shown with its sign
    np.testing.assert_allclose(res.offsets("agent"), [[1.0, 1.75, 3.0]])
    np.testing.assert_allclose(res.offsets("prior"), [[5.0, 5.0, 5.0]])
    assert res.offsets("registration") is None
    assert "| 1 | +1.00, +1.75, +3.00 |" in md.read_text() and "Offset: mean over subjects" in md.read_text()


def test_registration_baseline_recovers_a_known_affine():
    """Template -> subject landmark transfer with the 12-dof affine baseline, on a phantom moved by a
    known affine (rotation, shift, anisotropic scale): the carried landmarks land within a voxel."""
    import dataclasses

    from scipy.ndimage import affine_transform

    from jaxmed.data import geometry
    from jaxmed.registration_baseline import AFFINE_LANDMARK, transfer_landmarks

    tpl, lm = blob_phantom(shape=(40, 40, 40), spacing=2.0, n_landmarks=4, seed=1)
    a = np.eye(4)
    a[:3, :3] = geometry.rotation_matrix(np.array([6.0, -4.0, 5.0])) @ np.diag([1.06, 0.95, 1.0])
    centre = tpl.voxel_to_world((np.array(tpl.shape) - 1) / 2)
    a[:3, 3] = centre - a[:3, :3] @ centre + np.array([5.0, -3.0, 4.0])
    grid = np.linalg.inv(tpl.affine) @ np.linalg.inv(a) @ tpl.affine  # subject(x) = tpl(a^-1 x): template points move by a
    subject = Volume(affine_transform(np.asarray(tpl.data, np.float32), grid[:3, :3], grid[:3, 3], order=1), tpl.affine)
    truth = lm.positions @ a[:3, :3].T + a[:3, 3]
    config = dataclasses.replace(AFFINE_LANDMARK, factors=(2, 2, 1), iterations=(60, 80, 60), learning_rate=(1.0, 0.5, 0.2))
    pts, res = transfer_landmarks(tpl, lm.positions, subject, config)
    prior = np.linalg.norm(lm.positions - truth, axis=1)
    err = np.linalg.norm(pts - truth, axis=1)
    assert prior.mean() > 5.0 and err.mean() < 1.0, (prior, err)
    assert res.params.shape == (12,) and res.seconds > 0


def test_train_prints_its_device_and_evaluates_the_extra_sets(tmp_path, capsys):
    _, manifest = _population(tmp_path, n=1)
    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["train", CONFIG, "train.chunks=1", "dqn.chunk_steps=10", "dqn.learning_starts=16", "data.n_test=1",
                 "env.eval_starts=2", "env.eval_max_steps=5", f"eval.extra_sets=[{manifest}, {tmp_path / 'nowhere'}]",
                 "eval.registration=false", "--run-dir", str(run), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("device: cpu x")
    assert "| test | 1 | 1 |" in captured.out and "| scans | 1 | 1 |" in captured.out
    assert "nowhere not evaluated" in captured.err  # a set that cannot be loaded is reported; the run stands
    assert (run / "eval_scans.csv").exists() and (run / "summary.json").exists() and (run / "eval.md").exists()


def test_a_set_result_carries_the_agents_uncertainty(tmp_path):
    """``evaluate_landmark_set`` keeps each answer's uncertainty ``(S, K)``, as ``find`` writes it."""
    from jaxmed.data import sources
    from jaxmed.detect import LandmarkDetector
    from jaxmed.evaluation import evaluate_landmark_set
    from jaxmed.inference import read_uncertainty

    run = tmp_path / "run"
    cfg = untrained_run(run)
    _, manifest = _population(tmp_path)
    subjects = sources.from_spec(str(manifest), cfg.data.spacing).subjects("test", ["L0"])
    det = LandmarkDetector.from_run(run, n_starts=4)
    res = evaluate_landmark_set(det, subjects, name="scans", registration=False)
    answers, _ = det.find([s.volume for s in subjects])
    want = [[read_uncertainty(a)["L0"]] for a in answers]
    assert res.uncertainty.shape == (2, 1) and np.all(res.uncertainty >= 0)
    np.testing.assert_allclose(res.uncertainty, want)
