"""``jaxmed cv``: every fold of a files source trained and evaluated as a normal run directory, the
per-subject results pooled; finished folds are skipped when the command is run again."""

import csv

from jaxmed.cli import main
from jaxmed.data import save_nifti, write_landmarks


def _subjects(tmp_path, n=4):
    """``data synth`` phantom subjects, one folder each (the files source's directory layout)."""
    from jaxmed.config import load_yaml
    from jaxmed.data.run_data import template
    from jaxmed.experiment import ExperimentConfig

    vol, lm = template(ExperimentConfig.from_dict(load_yaml("configs/phantom_dqn.yaml")).data)
    save_nifti(vol, tmp_path / "tpl.nii.gz")
    write_landmarks(lm, tmp_path / "tpl.fcsv")
    flat = tmp_path / "flat"
    assert main(["data", "synth", "-n", str(n), "-o", str(flat), "--template", str(tmp_path / "tpl.nii.gz"),
                 "--landmarks", str(tmp_path / "tpl.fcsv")]) == 0
    root = tmp_path / "scans"
    for image in sorted(flat.glob("*_T1w.nii.gz")):
        sid = image.name.split("_")[0]
        (root / sid).mkdir(parents=True)
        image.rename(root / sid / image.name)
        (flat / f"{sid}_landmarks.fcsv").rename(root / sid / f"{sid}_landmarks.fcsv")
    return root


def test_cv_runs_every_fold_pools_and_resumes(tmp_path, capsys):
    root = _subjects(tmp_path)
    out = tmp_path / "cv"
    argv = ["cv", "configs/phantom_dqn.yaml", f"data={{source: files, root: {root}, spacing: 2.0, n_train: 4, n_test: 2, "
            "dtype: uint8, template: phantom}", "train.chunks=1", "dqn.chunk_steps=10", "dqn.learning_starts=16",
            "env.eval_starts=2", "env.eval_max_steps=5", "--folds", "2", "--run-dir", str(out), "--quiet", "--no-registration"]
    assert main(argv) == 0
    for k in (0, 1):
        assert (out / f"fold{k}" / "network.msgpack").exists() and (out / f"fold{k}" / "eval_test.csv").exists()
    with open(out / "cv_subjects.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # every subject is tested exactly once, in its own fold
    assert sorted(r["subject"] for r in rows) == ["sub-0001", "sub-0002", "sub-0003", "sub-0004"]
    assert {r["fold"] for r in rows} == {"0", "1"} and all(float(r["agent_error_mm"]) >= 0 for r in rows)
    assert all(r["prior_error_mm"] != "" for r in rows)
    md = (out / "cv.md").read_text()
    assert "4 subject(s) pooled" in md and "| **all** | agent | 4 |" in md and "template prior" in md
    capsys.readouterr()
    before = (out / "fold0" / "network.msgpack").read_bytes()
    assert main(argv) == 0  # resumable: finished folds are skipped
    assert capsys.readouterr().out.count("done, skipped") == 2
    assert (out / "fold0" / "network.msgpack").read_bytes() == before


def test_cv_refuses_a_synthetic_source(tmp_path, capsys):
    assert main(["cv", "configs/phantom_dqn.yaml", "--folds", "2", "--run-dir", str(tmp_path / "x")]) == 2
    assert "data.source: files" in capsys.readouterr().err and not (tmp_path / "x").exists()
