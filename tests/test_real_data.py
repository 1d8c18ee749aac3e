"""Public real data fetched and verified like AFIDs: Colin27 + AAL (Debian mricron-data) and the T2w
MNI template (wheel autoafids); the .deb reader; offline and corrupt cases."""

import io
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from jaxmed.cli import main
from jaxmed.data import colin27, mni_t2w
from jaxmed.data import fetch as fetch_mod
from jaxmed.data.fetch import Dataset, sha256
from jaxmed.data.sources import DataConfig, make
from jaxmed.errors import ConfigError, DataFetchError

realdata = pytest.mark.realdata


@pytest.fixture(scope="session")
def t2w_files():
    return mni_t2w.fetch(quiet=True)


# ---- the .deb reader and the fetch mechanism, on a small package built here ----------------------


def _ar(members):
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, payload in members:
        out.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}`\n".encode())
        out.write(payload + (b"\n" if len(payload) % 2 else b""))
    return out.getvalue()


def _tar_xz(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tf:
        for name, payload in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _tiny_deb(tmp_path):
    files = {"usr/share/demo/a.txt": b"hello", "usr/share/demo/b.bin": bytes(range(7))}
    deb = tmp_path / "demo_1.0_all.deb"
    deb.write_bytes(_ar([("debian-binary", b"2.0\n"), ("control.tar.xz", _tar_xz({"control": b"Package: demo\n"})),
                         ("data.tar.xz", _tar_xz(files))]))
    ds = Dataset(name="demo", title="demo", archive_kind="deb", archive_name=deb.name, archive_sha256=sha256(deb),
                 files={"a": ("a.txt", sha256_bytes(b"hello")), "b": ("b.bin", sha256_bytes(bytes(range(7))))},
                 member_dir="usr/share/demo/", download_cmd=("apt-get", "download", "demo"), offline_flag="--deb",
                 how_to_get="download demo_1.0_all.deb by hand")
    return deb, ds


def sha256_bytes(b):
    import hashlib

    return hashlib.sha256(b).hexdigest()


def test_deb_is_read_without_dpkg_and_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path / "cache"))
    deb, ds = _tiny_deb(tmp_path)
    got = ds.fetch(archive=deb)
    assert got["a"].read_bytes() == b"hello" and got["b"].read_bytes() == bytes(range(7))  # odd-sized ar members padded
    assert sorted(p.name for p in ds.cache_dir().iterdir()) == ["a.txt", "b.bin"]  # nothing temporary left
    bad = tmp_path / "bad.deb"
    bad.write_bytes(deb.read_bytes()[:-40])
    with pytest.raises(DataFetchError, match="bad.deb: deb checksum .* does not match demo_1.0_all.deb"):
        ds.fetch(archive=bad, force=True)
    wrong = Dataset(**{**ds.__dict__, "files": {"a": ("a.txt", "0" * 64)}})
    with pytest.raises(DataFetchError, match="extracted a.txt fails its checksum"):
        wrong.fetch(archive=deb, force=True)
    not_ar = tmp_path / "x.deb"
    not_ar.write_bytes(b"PK not an ar archive")
    with pytest.raises(DataFetchError, match="not an ar archive"):
        fetch_mod.deb_data_tar(not_ar)


def test_colin27_offline_errors_say_how_to_get_the_deb(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path))

    def no_apt(cmd, **kw):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(subprocess, "run", no_apt)
    with pytest.raises(DataFetchError, match=r"could not run `apt-get download .*needs apt-get .*Debian mirror .*--deb PATH"):
        colin27.fetch(quiet=True)

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Failed to fetch http://deb.debian.org/... Temporary failure resolving")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(DataFetchError, match=r"could not download mricron-data.*\(offline\?\).*Temporary failure.*--deb PATH"):
        colin27.fetch(quiet=True)
    with pytest.raises(DataFetchError, match=r"Colin27 \(mricron-data\) data not found.*jaxmed data fetch colin27"):
        colin27.load(download=False)
    assert not list((tmp_path / "colin27").glob("*.nii.gz"))
    fake = tmp_path / colin27.DEB_NAME
    fake.write_bytes(b"!<arch>\n")
    with pytest.raises(DataFetchError, match="deb checksum"):
        colin27.fetch(deb=fake)
    assert main(["data", "fetch", "colin27", "--wheel", str(fake)]) == 2


def test_t2w_offline_error_names_the_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path))

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement autoafids==0.1.4")

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(DataFetchError, match=r"could not download autoafids-0.1.4-py3-none-any.whl \(offline\?\).*--wheel PATH"):
        mni_t2w.fetch(quiet=True)


# ---- the real files ----------------------------------------------------------------------------


@realdata
def test_colin27_files_verify_and_a_corrupt_copy_is_caught(colin27_files, tmp_path, monkeypatch):
    for key, (name, digest) in colin27.DATASET.files.items():
        assert colin27_files[key].name == name and sha256(colin27_files[key]) == digest
    copy = tmp_path / "colin27"
    shutil.copytree(colin27_files["ch2"].parent, copy)
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path))
    raw = bytearray((copy / "ch2bet.nii.gz").read_bytes())
    raw[-100] ^= 0xFF
    (copy / "ch2bet.nii.gz").write_bytes(bytes(raw))
    with pytest.raises(DataFetchError, match=r"ch2bet.nii.gz: corrupt Colin27 \(mricron-data\) file .*--force"):
        colin27.load("ch2bet", download=False)


@realdata
@pytest.mark.afids
def test_colin27_landmarks_sit_on_its_anatomy(colin27_files, afids_data):
    _, mni = afids_data
    lm = colin27.landmarks()
    assert lm.labels == mni.labels and len(lm) == 32
    # Colin27 is in MNI space: its AC and PC lie within 3 mm of the MNI template's
    assert np.linalg.norm(lm["AC"] - mni["AC"]) < 3.0 and np.linalg.norm(lm["PC"] - mni["PC"]) < 3.0
    assert 3.0 < np.linalg.norm(lm.positions - mni.positions, axis=1).mean() < 6.0  # a different brain, not a copy
    vol, _ = colin27.load("ch2bet")
    assert vol.shape == (181, 217, 181) and np.allclose(vol.spacing, 1.0)

    def local_mean(p):
        i = np.rint(vol.world_to_voxel(p)).astype(int)
        return float(vol.data[i[0] - 1:i[0] + 2, i[1] - 1:i[1] + 2, i[2] - 1:i[2] + 2].mean())

    inside = np.array([local_mean(p) for p in lm.positions])
    assert inside.min() > 0.2  # every landmark in brain tissue of the skull-stripped image
    assert local_mean(lm["AC"]) > 0.4 and local_mean(lm["PC"]) > 0.4  # the commissures: white matter
    assert local_mean(lm["AC"] + np.array([0.0, 0.0, 95.0])) < 0.05  # above the brain: background
    # the AAL atlas shares the grid: the thalami lie behind AC, in front of PC, on their own sides
    aal, names = colin27.load_aal()
    assert aal.data.dtype == np.int16 and len(names) == 116 and names[77] == "Thalamus_L" and names[78] == "Thalamus_R"
    assert set(np.unique(aal.data)) == {0, *names}
    for label, side in ((77, -1), (78, 1)):
        centre = aal.voxel_to_world(np.argwhere(aal.data == label).mean(0))
        assert lm["PC"][1] < centre[1] < lm["AC"][1] and 5 < side * centre[0] < 20
    coarse, _ = colin27.load_aal(spacing=2.0)  # nearest neighbour: labels stay exact integers
    assert np.allclose(coarse.spacing, 2.0) and set(np.unique(coarse.data)) <= set(np.unique(aal.data))


@realdata
@pytest.mark.afids
def test_colin27_source_is_an_evaluation_set(colin27_files, afids_data):
    src = make(DataConfig(source="colin27", spacing=3.0))
    subjects = src.subjects("test", ["AC", "PC"])
    assert [s.name for s in subjects] == ["colin27", "colin27-bet"]
    for s in subjects:
        assert np.allclose(s.volume.spacing, 3.0) and s.landmarks.labels == ("AC", "PC") and s.meta["split"] == "test"
        np.testing.assert_allclose(s.landmarks.positions, colin27.landmarks().select(["AC", "PC"]).positions)
    np.testing.assert_allclose(src.template(["AC"]).landmarks.positions, afids_data[1].select(["AC"]).positions)  # the prior
    with pytest.raises(ConfigError, match="colin27 is an evaluation set"):
        src.subjects("train", ["AC"])
    only_bet = make(DataConfig(source="colin27", spacing=3.0, images=["ch2bet"]))
    assert [s.name for s in only_bet.subjects("test", ["AC"])] == ["colin27-bet"]


@realdata
@pytest.mark.afids
def test_t2w_template_and_its_subjects(t2w_files, afids_data):
    assert sha256(t2w_files["template"]) == mni_t2w.DATASET.files["template"][1]
    t1, mni = afids_data
    t2, lm = mni_t2w.load()
    assert t2.shape == t1.shape and np.allclose(t2.affine, t1.affine)  # one space with the T1 template
    np.testing.assert_array_equal(lm.positions, mni.positions)
    head = t1.data > 0.3
    assert np.corrcoef(t1.data[head], t2.data[head])[0, 1] < 0.4  # another contrast inside the head (0.19 measured)
    src = make(DataConfig(source="mni-t2w", spacing=3.0, n_test=1, include_template=True))
    subjects = src.subjects("test", ["AC", "PC"])
    assert [s.name for s in subjects] == ["test-0000", "template"]
    assert not np.allclose(subjects[0].landmarks.positions, mni.select(["AC", "PC"]).positions, atol=1.0)
    np.testing.assert_allclose(subjects[1].landmarks.positions, mni.select(["AC", "PC"]).positions)
