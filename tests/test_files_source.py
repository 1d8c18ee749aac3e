"""``data.source: files``: subjects from folders or manifests, label matching, splits and folds, the
on-disk subject cache, augmentation and bad subjects."""

import json
import warnings

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from jaxmed import experiment as ex
from jaxmed.data import blob_phantom, image_io, make_population, run_data, subject_cache, write_landmarks, write_population
from jaxmed.data.landmarks import Landmarks
from jaxmed.data.sources import DataConfig, make
from jaxmed.data.sources import files as files_source
from jaxmed.errors import ConfigError, ImageError, LandmarkError

LABELS = ["L0", "L1"]


@pytest.fixture(scope="module")
def population():
    """Six phantom subjects, each in its own voxel size / orientation / field of view."""
    volume, landmarks = blob_phantom(shape=(24, 24, 24), spacing=2.0, seed=0)
    return make_population(volume, landmarks, 6, split="train", base_seed=7)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path / "cache"))


def _write_folders(root, subjects):
    for i, s in enumerate(subjects):
        write_population([s], root / f"sub-{i:02d}")
    return root


def _cfg(root, **kw):
    kw.setdefault("image", "*T1w.nii.gz")
    kw.setdefault("landmarks", "*.fcsv")
    return DataConfig(source="files", root=str(root), spacing=2.0, **kw)


def _all(src, labels=LABELS):
    out = []
    for split in ("train", "val", "test"):
        try:
            out += src.subjects(split, labels)
        except ConfigError as e:
            assert "no subjects in the" in str(e)
    return {s.name: s for s in out}


def test_folder_of_subjects(tmp_path, population):
    root = _write_folders(tmp_path / "scans", population)
    src = make(_cfg(root, split_ratio=(0.5, 0.0, 0.5)))
    got = _all(src)
    assert sorted(got) == [f"sub-{i:02d}" for i in range(6)]
    for i, s in enumerate(population):
        g = got[f"sub-{i:02d}"]
        assert nib.aff2axcodes(g.volume.affine) == ("R", "A", "S") and np.allclose(g.volume.spacing, 2.0)
        np.testing.assert_allclose(g.landmarks.positions, s.landmarks.select(LABELS).positions, atol=1e-4)  # world RAS mm
        assert g.meta["source"]["image"].endswith("sub-0001_T1w.nii.gz")
        assert g.volume.source == g.meta["source"]["image"]  # errors name the file


def test_manifest_with_split_column_csv_landmarks_in_lps(tmp_path, population):
    """A TSV manifest, landmarks as CSV written in LPS, relative paths: the same world positions."""
    root = tmp_path / "data"
    rows = ["subject\timage\tlandmarks\tsplit"]
    splits = ["train", "train", "val", "test", "train", "test"]
    for i, (s, split) in enumerate(zip(population, splits)):
        write_population([s], root / f"s{i}")
        write_landmarks(s.landmarks, root / f"s{i}" / "points.csv", coordinate_system="LPS")
        rows.append(f"case{i}\ts{i}/sub-0001_T1w.nii.gz\ts{i}/points.csv\t{split}")
    (root / "manifest.tsv").write_text("\n".join(rows) + "\n")
    assert "LPS" in (root / "s0" / "points.csv").read_text()
    src = make(DataConfig(source="files", root=str(root / "manifest.tsv"), spacing=2.0))
    for split in ("train", "val", "test"):
        subjects = src.subjects(split, LABELS)
        assert [s.name for s in subjects] == [f"case{i}" for i, sp in enumerate(splits) if sp == split]
        for s in subjects:
            i = int(s.name[4:])
            np.testing.assert_allclose(s.landmarks.positions, population[i].landmarks.select(LABELS).positions, atol=1e-4)
            assert s.meta["split"] == split
    (root / "bad.csv").write_text("subject,image\ncase0,s0/sub-0001_T1w.nii.gz\n")
    with pytest.raises(ConfigError, match=r"bad.csv: manifest header .* lacks column\(s\) \['landmarks'\]"):
        make(DataConfig(source="files", root=str(root / "bad.csv"))).subjects("test", LABELS)


def test_label_map_for_numbered_landmarks(tmp_path, population):
    root = tmp_path / "scans"
    for i, s in enumerate(population[:3]):
        write_population([s], root / f"sub-{i}")
        numbered = Landmarks(("1", "2", "3", "4"), s.landmarks.positions)
        (root / f"sub-{i}" / "sub-0001_landmarks.fcsv").unlink()
        write_landmarks(numbered, root / f"sub-{i}" / "points.mrk.json")
    cfg = _cfg(root, landmarks="*.mrk.json", label_map={"1": "L0", "2": "L1"}, split_ratio=(0.0, 0.0, 1.0))
    got = make(cfg).subjects("test", ["L1", "L0"])
    for g, s in zip(got, population):
        np.testing.assert_allclose(g.landmarks.positions, s.landmarks.select(["L1", "L0"]).positions, atol=1e-4)
    with pytest.raises(LandmarkError, match=r"3 subject\(s\) .* lack required landmarks: sub-0 .*missing L0, L1"):
        make(_cfg(root, landmarks="*.mrk.json", split_ratio=(0.0, 0.0, 1.0))).subjects("test", ["L0", "L1"])


def test_missing_labels_listed_for_every_subject_or_skipped(tmp_path, population):
    root = _write_folders(tmp_path / "scans", population)
    for i, drop in ((1, ["L1"]), (4, ["L0", "L1"])):
        path = next((root / f"sub-{i:02d}").glob("*.fcsv"))
        lm = population[i].landmarks
        keep = [l for l in lm.labels if l not in drop]
        write_landmarks(lm.select(keep), path, overwrite=True)
    cfg = dict(split_ratio=(0.0, 0.0, 1.0))
    with pytest.raises(LandmarkError) as err:
        make(_cfg(root, **cfg)).subjects("test", LABELS)
    msg = str(err.value)
    assert "2 subject(s)" in msg and "sub-01 (" in msg and "missing L1" in msg and "sub-04 (" in msg and "missing L0, L1" in msg
    with pytest.warns(UserWarning, match=r"dropping 2 subject\(s\)"):
        kept = make(_cfg(root, skip_incomplete=True, **cfg)).subjects("test", LABELS)
    assert [s.name for s in kept] == ["sub-00", "sub-02", "sub-03", "sub-05"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(make(_cfg(root, skip_incomplete=True, **cfg)).subjects("test", ["L2"])) == 6  # nobody lacks L2


def test_globs_must_match_one_file_per_subject(tmp_path, population):
    root = _write_folders(tmp_path / "scans", population[:2])
    (root / "sub-01" / "extra_T1w.nii.gz").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"sub-01: expected exactly one image matching '\*T1w.nii.gz', found 2 "
                                          r"\(extra_T1w.nii.gz, sub-0001_T1w.nii.gz\)"):
        make(_cfg(root)).subjects("train", LABELS)
    (root / "sub-01" / "extra_T1w.nii.gz").unlink()
    with pytest.raises(ConfigError, match=r"sub-00: expected exactly one landmarks matching '\*.mrk.json', found 0"):
        make(_cfg(root, landmarks="*.mrk.json")).subjects("train", LABELS)
    with pytest.raises(ConfigError, match="data.root not found"):
        make(_cfg(tmp_path / "nope")).subjects("train", LABELS)


def test_seeded_ratio_split_and_folds(tmp_path, population):
    names = [f"s{i:02d}" for i in range(10)]
    subjects = [files_source.SubjectFiles(n, tmp_path, tmp_path) for n in names]
    opts = files_source.FilesOptions(root="x", split_ratio=(0.6, 0.2, 0.2))
    a = files_source.assign_splits(subjects, opts, seed=0)
    assert sorted(a) == names and [list(a.values()).count(s) for s in ("train", "val", "test")] == [6, 2, 2]
    assert a == files_source.assign_splits(subjects[::-1], opts, seed=0)  # order of discovery does not matter
    assert a != files_source.assign_splits(subjects, opts, seed=1)
    folds = files_source.fold_names(names, 3, seed=0)
    assert sorted(n for f in folds for n in f) == names and sorted(len(f) for f in folds) == [3, 3, 4]  # disjoint, covering
    for k in range(3):
        split = files_source.assign_splits(subjects, files_source.FilesOptions(root="x", fold=(k, 3)), seed=0)
        assert {n for n, s in split.items() if s == "test"} == set(folds[k])
    root = _write_folders(tmp_path / "scans", population)
    cfg = _cfg(root, fold=(1, 3))
    listed = files_source.folds(cfg)
    assert [s.name for s in make(cfg).subjects("test", LABELS)] == list(listed[1])
    assert {s.name for s in make(cfg).subjects("train", LABELS)} == set(listed[0]) | set(listed[2])
    with pytest.raises(ConfigError, match="no subjects in the 'val' split"):
        make(cfg).subjects("val", LABELS)


def test_second_load_hits_the_cache(tmp_path, population, monkeypatch):
    root = _write_folders(tmp_path / "scans", population[:3])
    calls = []
    real = image_io.load_image

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(image_io, "load_image", counting)
    cfg = _cfg(root, split_ratio=(1.0, 0.0, 0.0))
    first = make(cfg).subjects("train", LABELS)
    assert len(calls) == 3 and len(list((tmp_path / "cache" / "subjects").glob("*.npy"))) == 3
    again = make(_cfg(root, split_ratio=(1.0, 0.0, 0.0), seed=0, n_train=2)).subjects("train", LABELS)  # a new source object
    assert len(calls) == 3  # nothing re-read: every image came from the cache
    for a, b in zip(first, again):
        assert np.array_equal(a.volume.data, b.volume.data) and np.array_equal(a.volume.affine, b.volume.affine)
        assert a.volume.normalisation == b.volume.normalisation
    source = make(DataConfig(source="files", root=str(root), image="*T1w.nii.gz", spacing=3.0, split_ratio=(1.0, 0.0, 0.0)))
    source.subjects("train", LABELS)
    assert len(calls) == 6  # another spacing is another entry
    img = next((root / "sub-00").glob("*T1w.nii.gz"))
    vol = nib.load(str(img))
    nib.save(nib.Nifti1Image(np.asarray(vol.dataobj) * 2.0, vol.affine), str(img))  # edited file: new contents, new key
    make(cfg).subjects("train", LABELS)
    assert calls[-1] == img and len(calls) == 7


def test_bad_subject_names_its_file_and_caches_nothing(tmp_path, population):
    root = _write_folders(tmp_path / "scans", population[:3])
    cache = tmp_path / "cache" / "subjects"
    lm_path = next((root / "sub-01").glob("*.fcsv"))
    far = population[1].landmarks.positions.copy()
    far[0] += 500.0  # outside the image
    write_landmarks(population[1].landmarks.with_positions(far), lm_path, overwrite=True)
    cfg = _cfg(root, split_ratio=(1.0, 0.0, 0.0))
    message = r"subject sub-01: .*sub-0001_landmarks.fcsv: landmarks outside the image .*sub-01/sub-0001_T1w.nii.gz"
    with pytest.raises(LandmarkError, match=message):
        make(cfg).subjects("train", LABELS)
    entries = sorted(cache.glob("*.json"))
    assert len(entries) == 1 and "sub-00" in json.loads(entries[0].read_text())["source"]  # sub-00 only; sub-01 not cached
    assert not list(cache.glob("*.part"))
    write_landmarks(population[1].landmarks, lm_path, overwrite=True)
    lm_path.write_text(lm_path.read_text().replace("# columns = id,x,y,z", "# columns = id,x,q,z"))
    with pytest.raises(LandmarkError, match=r"subject sub-01: .*sub-0001_landmarks.fcsv"):
        make(cfg).subjects("train", LABELS)
    img = next((root / "sub-02").glob("*T1w.nii.gz"))
    data = np.asarray(nib.load(str(img)).dataobj).copy()
    data[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(data, nib.load(str(img)).affine), str(img))
    write_landmarks(population[1].landmarks, lm_path, overwrite=True)
    with pytest.raises(ImageError, match=r"subject sub-02: .*sub-02/sub-0001_T1w.nii.gz: 1 voxels are NaN"):
        make(cfg).subjects("train", LABELS)
    img.write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"subject sub-02: .*sub-0001_T1w.nii.gz: not a readable NIfTI"):
        make(cfg).subjects("train", LABELS)
    assert len(list(cache.glob("*.npy"))) == 2 and not list(cache.glob("*.part"))


def test_cache_write_is_atomic(tmp_path, population, monkeypatch):
    """A crash while an entry is written leaves no entry and no temporary file behind."""
    root = _write_folders(tmp_path / "scans", population[:1])

    def crash(f, arr, **kw):
        f.write(b"\x93NUMPY half an array")
        raise KeyboardInterrupt

    monkeypatch.setattr(subject_cache.np, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        make(_cfg(root, split_ratio=(1.0, 0.0, 0.0))).subjects("train", LABELS)
    assert not [p for p in (tmp_path / "cache" / "subjects").iterdir()]
    monkeypatch.undo()
    monkeypatch.setenv("JAXMED_DATA", str(tmp_path / "cache"))
    make(_cfg(root, split_ratio=(1.0, 0.0, 0.0))).subjects("train", LABELS)
    assert len(list((tmp_path / "cache" / "subjects").glob("*.npy"))) == 1


def test_augmented_copies_differ_and_carry_landmarks(tmp_path, population):
    root = _write_folders(tmp_path / "scans", population[:2])
    plain_intensity = {"bias_max": 0.0, "gamma_range": [1.0, 1.0], "noise_std_range": [0.0, 0.0]}
    cfg = _cfg(root, split_ratio=(1.0, 0.0, 0.0), augment={"copies": 2, **plain_intensity})
    src = make(cfg)
    subjects = src.subjects("train", LABELS)
    assert [s.name for s in subjects][:2] == ["sub-00", "sub-01"] and len(subjects) == 2 + 2 * 2
    copies = subjects[2:]
    assert [c.meta["augmented_from"] for c in copies] == ["sub-00"] * 2 + ["sub-01"] * 2
    positions = [c.landmarks.positions for c in copies]
    assert all(not np.allclose(positions[i], positions[j], atol=0.5) for i in range(4) for j in range(i))  # all different
    for c in copies:
        original = subjects[0] if c.meta["augmented_from"] == "sub-00" else subjects[1]
        assert c.meta["landmark_residual_mm"] < 1e-6 and c.meta["split"] == "train"
        assert np.allclose(c.volume.spacing, 2.0) and nib.aff2axcodes(c.volume.affine) == ("R", "A", "S")
        # the landmark lands on the same anatomy: same (blob-peak) intensity, without an intensity model
        at = [ndimage.map_coordinates(v.data, v.world_to_voxel(lm.positions).T, order=1)
              for v, lm in ((c.volume, c.landmarks), (original.volume, original.landmarks))]
        np.testing.assert_allclose(at[0], at[1], atol=0.08)
    again = src.subjects("train", LABELS)
    assert all(np.array_equal(a.volume.data, b.volume.data) for a, b in zip(subjects, again))  # same epoch: same copies
    epoch1 = src.subjects("train", LABELS, epoch=1)
    assert np.array_equal(epoch1[0].volume.data, subjects[0].volume.data)  # originals kept
    assert all(not np.allclose(a.landmarks.positions, b.landmarks.positions) for a, b in zip(epoch1[2:], copies))
    only = make(_cfg(root, split_ratio=(1.0, 0.0, 0.0), augment={"copies": 1, "keep_original": False}))
    assert [s.name for s in only.subjects("train", LABELS)] == ["sub-00~aug0.0", "sub-01~aug0.0"]
    assert len(make(_cfg(root, split_ratio=(0.5, 0.0, 0.5), augment={"copies": 2})).subjects("test", LABELS)) == 1  # test: never
    with pytest.raises(ConfigError, match=r"data.augment.copies: expected an integer >= 0"):
        _cfg(root, augment={"copies": -1})
    with pytest.raises(ConfigError, match=r"data.augment: unknown key"):
        _cfg(root, augment={"copies": 1, "sharpen": True})


def test_experiment_trains_on_a_folder(tmp_path, population):
    """A run config with ``data.source: files``: banks and the template prior go through the registry."""
    root = _write_folders(tmp_path / "scans", population)
    cfg = ex.ExperimentConfig.from_dict({
        "data": {"source": "files", "root": str(root), "image": "*T1w.nii.gz", "spacing": 2.0, "split_ratio": [0.5, 0.0, 0.5]},
        "env": {"targets": ["L0", "L1"], "crop_size": 9, "frames": 1, "max_steps": 10},
        "network": {"trunk": {"name": "patch", "patch_size": 3}, "head": {"name": "q", "hidden": [16]}}})
    bank, subjects, _ = ex.make_bank(cfg, "train", cfg.data.n_train)
    assert bank.n_volumes == len(subjects) == 3 and bank.labels == ("L0", "L1")
    assert run_data.template(cfg.data) is None
    with pytest.raises(ConfigError, match="has no template"):
        run_data.template_subject(cfg.data, ["L0"])


def _write_dicom_series(directory, volume):
    """An axis-aligned RAS ``volume`` as axial DICOM slices (LPS patient coordinates, uint16)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    directory.mkdir(parents=True)
    data = np.rint(volume.data / volume.data.max() * 1000).astype(np.uint16)
    origin_ras, step = volume.affine[:3, 3], float(volume.spacing[0])
    series = generate_uid()
    for k in range(data.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(directory / f"{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SeriesInstanceUID = series
        ds.ImageOrientationPatient = [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0]  # columns along +R, rows along +A (in LPS)
        ds.ImagePositionPatient = [-origin_ras[0], -origin_ras[1], origin_ras[2] + step * k]
        ds.PixelSpacing = [step, step]
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T).tobytes()
        ds.save_as(str(directory / f"{k:03d}.dcm"), enforce_file_format=True)


def test_dicom_series_subjects_are_read_and_cached(tmp_path, population):
    pytest.importorskip("pydicom")
    from jaxmed.data import conform, normalise_intensity

    root = tmp_path / "scans"
    for i, s in enumerate(population[:2]):
        vol = conform(s.volume, 2.0)
        _write_dicom_series(root / f"sub-{i}" / "dicom", vol)
        write_landmarks(s.landmarks, root / f"sub-{i}" / "points.fcsv")
    cfg = DataConfig(source="files", root=str(root), image="dicom", landmarks="*.fcsv", spacing=2.0, split_ratio=(1.0, 0.0, 0.0))
    got = make(cfg).subjects("train", LABELS)
    for g, s in zip(got, population):
        np.testing.assert_allclose(g.landmarks.positions, s.landmarks.select(LABELS).positions, atol=1e-4)
        ref = normalise_intensity(conform(s.volume, 2.0))
        assert g.volume.shape == ref.shape and np.allclose(g.volume.affine, ref.affine, atol=1e-4)
        assert np.corrcoef(g.volume.data.ravel(), ref.data.ravel())[0, 1] > 0.999  # the same image, through uint16
    assert len(list((tmp_path / "cache" / "subjects").glob("*.npy"))) == 2  # a series directory is one cache entry



def test_training_from_files_equals_training_from_the_population(tmp_path, monkeypatch):
    """A phantom population written to disk as ``jaxmed data synth`` writes it (NIfTI + fcsv per subject)
    and read back with ``data.source: files`` gives the same bank, and the same trained network, as the
    same subjects handed over in memory (conformed and percentile-normalised the same way)."""
    import dataclasses

    import jax

    from jaxmed.config import load_yaml
    from jaxmed.data import conform, normalise_intensity
    from jaxmed.data.sources import base as source_base
    from jaxmed.data.sources.base import LabelledSubject, Source
    from jaxmed.data.volume import Volume
    from jaxmed.runs import load_params
    from jaxmed.train import run_training

    template, landmarks = blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=4, seed=0)
    # stored as NIfTI holds them (float32 voxels and affine), so both sides start from the same numbers
    subjects = [dataclasses.replace(s, volume=Volume(s.volume.data.astype(np.float32),
                                                     s.volume.affine.astype(np.float32).astype(np.float64)))
                for s in make_population(template, landmarks.select(["L0"]), 4, split="train", base_seed=3)]

    class InMemory(Source):  # the population itself, as a source
        name = "in-memory-test"

        def subjects(self, split, labels, *, epoch=0, n=None):
            return [LabelledSubject(f"sub-{i}", normalise_intensity(conform(s.volume, self.cfg.spacing)), s.landmarks.select(labels))
                    for i, s in enumerate(subjects)]

    monkeypatch.setitem(source_base._REGISTRY, InMemory.name, InMemory)
    root = tmp_path / "scans"
    rows = ["subject,image,landmarks,split"]
    for i, s in enumerate(subjects):
        write_population([s], root / f"sub-{i}")
        image = next((root / f"sub-{i}").glob("*.nii.gz")).relative_to(root)
        marks = next((root / f"sub-{i}").glob("*.fcsv")).relative_to(root)
        rows.append(f"sub-{i},{image},{marks},train")
    (root / "subjects.csv").write_text("\n".join(rows) + "\n")

    base = load_yaml("configs/phantom_dqn.yaml")
    base["train"] = {"chunks": 2, "checkpoint_every": 2, "seed": 0}
    data = {"spacing": 2.0, "dtype": "float32", "n_train": 4}
    memory_cfg = ex.ExperimentConfig.from_dict({**base, "data": {"source": InMemory.name, **data}})
    files_cfg = ex.ExperimentConfig.from_dict({**base, "data": {"source": "files", "root": str(root / "subjects.csv"), **data}})

    bank_m, _, _ = ex.make_bank(memory_cfg, "train", 4)
    bank_f, _, _ = ex.make_bank(files_cfg, "train", 4)
    assert bank_f.n_volumes == bank_m.n_volumes == 4
    for a, b in zip(jax.tree.leaves(bank_m), jax.tree.leaves(bank_f)):
        assert np.shape(a) == np.shape(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # same key, same subjects: the same run
    run_training(memory_cfg, tmp_path / "memory", progress=False, evaluate=False)
    run_training(files_cfg, tmp_path / "files", progress=False, evaluate=False)
    for a, b in zip(jax.tree.leaves(load_params(tmp_path / "memory")[2]), jax.tree.leaves(load_params(tmp_path / "files")[2])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
