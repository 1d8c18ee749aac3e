"""The data-source registry: config keys, the synthetic sources' subjects (unchanged by the registry),
epochs, from_spec and the experiment's use of it."""

import dataclasses

import numpy as np
import pytest
import yaml

from jaxmed import experiment as ex
from jaxmed.config import apply_overrides, load_yaml
from jaxmed.data import blob_phantom, conform, make_population, run_data
from jaxmed.data.phantoms import ellipsoid_phantom
from jaxmed.data.sources import DataConfig, LabelledSubject, from_spec, make, names, option_fields
from jaxmed.data.synth import SynthConfig, split_seeds
from jaxmed.errors import ConfigError
from jaxmed.experiment import ExperimentConfig


def _same(pairs_a, pairs_b):
    assert len(pairs_a) == len(pairs_b)
    for (va, la), (vb, lb) in zip(pairs_a, pairs_b):
        assert np.array_equal(va.data, vb.data) and np.array_equal(va.affine, vb.affine)
        assert la.labels == lb.labels and np.array_equal(la.positions, lb.positions)


def _direct(volume, landmarks, cfg, split, n, labels, config=SynthConfig()):
    """What the experiment computed before the registry: a population from the template, conformed."""
    return [(conform(s.volume, cfg.spacing), s.landmarks)
            for s in make_population(volume, landmarks.select(labels), n, split=split, base_seed=cfg.seed, config=config)]


def test_registry_names_and_options():
    assert set(names()) >= {"afids", "phantom", "ellipsoid", "files", "colin27", "mni-t2w"}
    assert ex.SOURCES == names()
    assert option_fields("phantom")["phantom_shape"] == (32, 32, 32)
    assert "structures" in option_fields("afids") and "root" in option_fields("files")


@pytest.mark.parametrize("source, factory, labels", [
    ("phantom", lambda c: blob_phantom(shape=(24, 24, 24), spacing=c.spacing, n_landmarks=4, seed=c.seed), ["L0", "L2"]),
    ("ellipsoid", lambda c: ellipsoid_phantom(shape=(24, 24, 24), spacing=c.spacing, seed=c.seed), ["organ#000", "organ#004"]),
])
def test_phantom_sources_give_the_subjects_of_before(source, factory, labels):
    cfg = DataConfig(source=source, spacing=2.0, seed=3, n_train=3, n_test=2, phantom_shape=(24, 24, 24))
    volume, landmarks = factory(cfg)
    src = make(cfg)
    ref_volume, ref_landmarks = src.reference()
    assert np.array_equal(ref_volume.data, volume.data) and np.array_equal(ref_landmarks.positions, landmarks.positions)
    for split, n in (("train", 3), ("test", 2)):
        subjects = src.subjects(split, labels)
        assert all(isinstance(s, LabelledSubject) and s.meta["split"] == split for s in subjects)
        _same([s.pair() for s in subjects], _direct(volume, landmarks, cfg, split, n, labels))
        _same(run_data.make_subjects(cfg, split, n, labels), _direct(volume, landmarks, cfg, split, n, labels))
    _same([run_data.template_subject(cfg, labels)], [(conform(volume, 2.0), landmarks.select(labels))])


@pytest.mark.afids
def test_afids_source_gives_the_subjects_of_before(afids_data):
    volume, landmarks = afids_data
    cfg = DataConfig(source="afids", spacing=3.0, seed=0)
    src = make(cfg)
    assert src.template(["AC", "PC"]).volume.spacing.tolist() == [3.0, 3.0, 3.0]
    _same(run_data.make_subjects(cfg, "test", 1, ["AC", "PC"]), _direct(volume, landmarks, cfg, "test", 1, ["AC", "PC"]))
    with pytest.raises(ConfigError, match=r"env.targets \['XX'\] are not landmarks of the afids template"):
        src.subjects("test", ["AC", "XX"], n=1)


def test_epochs_draw_fresh_training_subjects_disjoint_from_test():
    cfg = DataConfig(source="phantom", spacing=2.0, n_train=2, n_test=2, phantom_shape=(24, 24, 24))
    src = make(cfg)
    e0, e1 = (src.subjects("train", ["L0"], epoch=e) for e in (0, 1))
    assert [s.meta["seed"] for s in e0] == split_seeds("train", 2)
    assert [s.meta["seed"] for s in e1] == split_seeds("train", 4)[2:]
    assert not np.allclose(e0[0].landmarks.positions, e1[0].landmarks.positions)
    test0, test1 = (src.subjects("test", ["L0"], epoch=e) for e in (0, 1))
    _same([s.pair() for s in test0], [s.pair() for s in test1])  # the test split never changes
    assert not set(s.meta["seed"] for s in e0 + e1) & set(s.meta["seed"] for s in test0)


def test_synth_option_changes_the_subject_model():
    plain = make(DataConfig(source="phantom", n_train=1, phantom_shape=(24, 24, 24)))
    still = make(DataConfig(source="phantom", n_train=1, phantom_shape=(24, 24, 24),
                            synth={"max_rotation_deg": 0.0, "max_translation_mm": 0.0, "scale_range": [1.0, 1.0], "max_shear": 0.0,
                                   "warp_max_mm": 0.0, "oblique_max_deg": 0.0, "orientations": ["RAS"]}))
    a, b = plain.subjects("train", ["L0"])[0], still.subjects("train", ["L0"])[0]
    np.testing.assert_allclose(b.landmarks.positions, plain.reference()[1].select(["L0"]).positions, atol=1e-6)
    assert not np.allclose(a.landmarks.positions, b.landmarks.positions)
    with pytest.raises(ConfigError, match=r"data.synth.max_rotation_deg: expected a number"):
        DataConfig(source="phantom", synth={"max_rotation_deg": "lots"})


def test_data_config_keys_are_checked_per_source():
    with pytest.raises(ConfigError, match=r"config.data.root: unknown key for data.source 'afids'.*allowed: .*structures"):
        ExperimentConfig.from_dict({"data": {"source": "afids", "root": "scans"}})
    with pytest.raises(ConfigError, match=r"config.data.colour: unknown key"):
        ExperimentConfig.from_dict({"data": {"source": "phantom", "colour": "red"}})
    with pytest.raises(ConfigError, match="data.source must be one of afids, phantom, ellipsoid, files, colin27, mni-t2w"):
        DataConfig(source="mnist")
    with pytest.raises(ConfigError, match=r"config.data.root: required for data.source files"):
        ExperimentConfig.from_dict({"data": {"source": "files"}})
    with pytest.raises(ConfigError, match=r"config.data.spacing: expected a number"):
        ExperimentConfig.from_dict({"data": {"source": "phantom", "spacing": "fine"}})
    with pytest.raises(ConfigError, match=r"data.structures: unknown structure"):
        DataConfig(source="afids", structures=("spleen",))
    with pytest.raises(ConfigError, match=r"data.images: expected distinct names from ch2, ch2bet"):
        DataConfig(source="colin27", images=("t1",))
    with pytest.raises(ConfigError, match=r"data.fold: expected \[k, K\]"):
        DataConfig(source="files", root="scans", fold=(3, 3))


def test_data_config_round_trips_and_reads_like_before():
    cfg = ExperimentConfig.from_dict(apply_overrides(load_yaml("configs/phantom_dqn.yaml"), ["data.phantom_shape=[24,24,24]"]))
    assert cfg.data.phantom_shape == (24, 24, 24) and cfg.data.source == "phantom"  # source keys read as attributes
    flat = cfg.to_dict()["data"]
    assert flat["phantom_shape"] == [24, 24, 24] and "options" not in flat  # YAML stays flat
    again = ExperimentConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and hash(again.data) == hash(cfg.data)
    fewer = dataclasses.replace(cfg.data, n_test=1)  # how `jaxmed evaluate --n-test` changes it
    assert fewer.n_test == 1 and fewer.phantom_shape == (24, 24, 24)
    files = DataConfig(source="files", root="scans", label_map={"1": "AC"}, augment={"copies": 2, "warp_max_mm": 2.0})
    assert hash(files) == hash(DataConfig.from_mapping(files.to_mapping()))  # dict options stay hashable
    with pytest.raises(AttributeError, match="has no key 'structures'"):
        files.structures


def test_run_configs_saved_by_earlier_versions_still_load():
    """Earlier versions saved phantom_shape and structures for every source."""
    old = {"source": "afids", "spacing": 2.0, "n_train": 12, "n_test": 6, "seed": 0, "dtype": "uint8", "factors": [1, 2, 4],
           "phantom_shape": [32, 32, 32], "structures": []}
    assert DataConfig.from_mapping(old) == DataConfig(source="afids", n_train=12, n_test=6, factors=(1, 2, 4))
    assert DataConfig.from_mapping({"source": "phantom", "structures": []}).phantom_shape == (32, 32, 32)
    with pytest.raises(ConfigError, match=r"data.structures: unknown key for data.source 'phantom'"):
        DataConfig.from_mapping({"source": "phantom", "structures": ["brain"]})


def test_from_spec_accepts_names_folders_manifests_and_yaml(tmp_path):
    src = from_spec("phantom", 2.0, phantom_shape=[24, 24, 24])
    assert src.cfg.source == "phantom" and src.cfg.spacing == 2.0
    (tmp_path / "scans").mkdir()
    d = from_spec(str(tmp_path / "scans"), 1.5)
    assert d.cfg.source == "files" and d.cfg.options.split_ratio == (0.0, 0.0, 1.0) and d.cfg.spacing == 1.5
    manifest = tmp_path / "m.tsv"
    manifest.write_text("subject\timage\tlandmarks\n")
    assert from_spec(str(manifest), 2.0).cfg.root == str(manifest)
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump({"data": {"source": "files", "root": "scans", "fold": [1, 5], "spacing": 4.0}}))
    y = from_spec(str(data_yaml), 2.0)
    assert y.cfg.fold == (1, 5) and y.cfg.spacing == 2.0  # the command's spacing wins
    with pytest.raises(ConfigError, match=r"--data 'nowhere': not a registered source"):
        from_spec("nowhere", 2.0)


def test_cli_data_list(tmp_path, monkeypatch, capsys):
    from jaxmed.cli import main

    monkeypatch.setenv("JAXMED_DATA", str(tmp_path))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in names():
        assert f"  {name} " in out
    assert "colin27    mricron-data_1.2.20211006+dfsg-4_all.deb (--deb PATH offline): not fetched" in out
    assert main(["data", "fetch", "mni-t2w", "--deb", "x.deb"]) == 2
    assert "use --wheel PATH, not --deb" in capsys.readouterr().err
