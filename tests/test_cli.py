"""The command line: quickstart on the real data, synth/show on a phantom, clear errors, no clobbering."""

import json

import nibabel as nib

from jaxmed.cli import main
from jaxmed.data import blob_phantom, read_landmarks, save_nifti, write_landmarks


def test_quickstart_on_afids(tmp_path, capsys, afids_data):
    out = tmp_path / "qs"
    assert main(["quickstart", "--out", str(out), "--n-subjects", "1"]) == 0
    text = capsys.readouterr().out
    assert "32 landmarks" in text and "AC" in text
    assert (out / "afids_template.png").stat().st_size > 10_000
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["n_subjects"] == 1 and summary["template_prior_error_mm_mean"] > 2.0


def _phantom_files(tmp_path):
    vol, lm = blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=3, seed=2)
    return save_nifti(vol, tmp_path / "tpl.nii.gz"), write_landmarks(lm, tmp_path / "tpl.fcsv"), lm


def test_synth_and_show(tmp_path, capsys):
    img, fcsv, lm = _phantom_files(tmp_path)
    out = tmp_path / "pop"
    args = ["data", "synth", "-n", "2", "-o", str(out), "--template", str(img), "--landmarks", str(fcsv), "--split", "val"]
    assert main(args) == 0
    subjects = sorted(out.glob("*_T1w.nii.gz"))
    assert len(subjects) == 2
    lm_files = sorted(out.glob("*.fcsv"))
    assert read_landmarks(lm_files[0]).labels == lm.labels
    before = subjects[0].read_bytes()
    assert main(args) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert subjects[0].read_bytes() == before
    png = tmp_path / "show.png"
    assert main(["data", "show", str(subjects[0]), "-l", str(lm_files[0]), "-o", str(png)]) == 0
    assert png.stat().st_size > 5_000
    assert nib.load(str(subjects[0])).shape[0] > 10


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["data", "show", str(tmp_path / "missing.nii.gz"), "-l", "x.fcsv", "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxmed: error:") and "missing.nii.gz: file not found" in err
    img, _, _ = _phantom_files(tmp_path)
    assert main(["data", "synth", "-n", "1", "-o", str(tmp_path / "p"), "--template", str(img)]) == 2
    assert "--template needs --landmarks" in capsys.readouterr().err
