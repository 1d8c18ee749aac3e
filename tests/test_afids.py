"""The real AFIDs data: fetch with pip, checksum, cache behaviour, offline and corrupt-cache errors."""

import shutil
import subprocess

import numpy as np
import pytest

from jaxmed.cli import main
from jaxmed.data import afids
from jaxmed.errors import DataFetchError


def test_load_gives_template_and_32_landmarks(afids_data):
    vol, lm = afids_data
    assert vol.shape == (193, 229, 193)
    np.testing.assert_allclose(vol.spacing, 1.0)
    assert len(lm) == 32
    assert lm.labels[:2] == ("AC", "PC")
    np.testing.assert_allclose(lm["AC"], [-0.231, 2.93275, -4.899])
    assert vol.normalisation["method"] == "percentile"
    assert 0.0 <= vol.data.min() and vol.data.max() <= 1.0
    # AC-PC distance in MNI space is ~28 mm
    assert 26 < np.linalg.norm(lm["AC"] - lm["PC"]) < 30


def test_fetch_into_empty_cache_then_noop(tmp_path, monkeypatch, afids_data):
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path))
    files = afids.fetch(quiet=True)  # real pip download (PyPI), verified
    assert files["template"].parent == tmp_path / "afids"
    stamp = {k: p.stat().st_mtime_ns for k, p in files.items()}

    def no_download(*a, **k):
        raise AssertionError("fetch must not download when the cache verifies")

    monkeypatch.setattr(afids, "_download_wheel", no_download)
    again = afids.fetch(quiet=True)
    assert {k: p.stat().st_mtime_ns for k, p in again.items()} == stamp


def _fill_cache(root):
    src = afids.paths()  # the default cache, filled by the afids_data fixture (JAXMED_DATA unset)
    dst = root / "afids"
    dst.mkdir(parents=True)
    for p in src.values():
        shutil.copy(p, dst / p.name)
    return dst


def test_corrupt_cache_is_reported_then_repaired(tmp_path, monkeypatch, afids_data):
    dst = _fill_cache(tmp_path)
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path))
    fcsv = dst / afids.FILES["landmarks"][0]
    fcsv.write_bytes(fcsv.read_bytes().replace(b"AC", b"XX"))
    with pytest.raises(DataFetchError, match=r"\.fcsv: corrupt AFIDs file .*--force"):
        afids.load(download=False)
    afids.fetch(quiet=True)  # replaces the corrupt file in jaxmed's own cache
    assert afids.verify()["landmarks"] == fcsv


def test_offline_without_cache_says_how_to_get_data(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path))

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement")

    monkeypatch.setattr(afids.subprocess, "run", offline)
    with pytest.raises(DataFetchError, match=r"offline\?.*--wheel"):
        afids.fetch(quiet=True)
    with pytest.raises(DataFetchError, match="AFIDs data not found.*jaxmed data fetch afids"):
        afids.load(download=False)
    assert not (tmp_path / "afids" / afids.FILES["template"][0]).exists()


def test_wrong_wheel_is_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path / "cache"))
    fake = tmp_path / afids.WHEEL_NAME
    fake.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    with pytest.raises(DataFetchError, match="wheel checksum"):
        afids.fetch(wheel=fake)


def test_cli_fetch_prints_paths(tmp_path, monkeypatch, capsys, afids_data):
    _fill_cache(tmp_path)
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path))
    assert main(["data", "fetch", "afids"]) == 0
    out = capsys.readouterr().out
    assert "template:" in out and str(tmp_path) in out
    assert main(["data", "fetch", "nonsense"]) == 2
    assert "unknown data set" in capsys.readouterr().err
