"""A run's data from the data layer alone (:mod:`jaxmed.data.run_data`): the bank an env asks for,
read from a few attributes, with no env built, and the padded bank of each training epoch."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from jaxmed.data import run_data
from jaxmed.data.sources import DataConfig
from jaxmed.errors import ConfigError

DATA = DataConfig.from_mapping({"source": "phantom", "spacing": 2.0, "n_train": 3, "n_test": 2, "phantom_shape": [24, 24, 24]},
                               "data")


def _wants(labels=("L0", "L2"), max_crop=9, reference=False):
    """What a landmark env asks of its bank, without the env."""
    return SimpleNamespace(required_labels=labels, max_crop=max_crop, wants_reference=reference, wants_packed_bank=False)


def test_the_bank_holds_what_the_env_asks_for():
    bank, subjects, seconds = run_data.make_bank(DATA, _wants(), "train", 3)
    assert bank.labels == ("L0", "L2") and len(subjects) == 3 and seconds >= 0
    assert bank.levels[0].shape[0] == 3 and bank.margin == 9 // 2 + 1
    for n, (_, landmarks) in enumerate(subjects):
        np.testing.assert_allclose(np.asarray(bank.landmarks_world[n]), landmarks.select(["L0", "L2"]).positions, atol=1e-4)
    # the same split and epoch is the same subjects; another epoch draws fresh ones
    again, _, _ = run_data.make_bank(DATA, _wants(), "train", 3)
    np.testing.assert_array_equal(np.asarray(again.levels[0]), np.asarray(bank.levels[0]))
    fresh, _, _ = run_data.make_bank(DATA, _wants(), "train", 3, epoch=1)
    assert not np.allclose(np.asarray(fresh.landmarks_world), np.asarray(bank.landmarks_world))


def test_a_goal_env_gets_the_template_as_volume_zero():
    bank, subjects, _ = run_data.make_bank(DATA, _wants(reference=True), "test", 2)
    assert bank.levels[0].shape[0] == 3 and len(subjects) == 2  # template + the two subjects
    _, template_landmarks = run_data.template_subject(DATA, ["L0", "L2"])
    np.testing.assert_allclose(np.asarray(bank.landmarks_world[0]), template_landmarks.positions, atol=1e-4)


def test_a_source_without_template_cannot_feed_a_goal_env(tmp_path):
    from jaxmed.data import blob_phantom, save_nifti, write_landmarks

    for i in range(2):
        volume, landmarks = blob_phantom(shape=(20, 20, 20), spacing=2.0, n_landmarks=2, seed=i)
        folder = tmp_path / f"sub-{i}"
        folder.mkdir()
        save_nifti(volume, folder / "t1.nii.gz")
        write_landmarks(landmarks, folder / "landmarks.fcsv")
    files = DataConfig.from_mapping({"source": "files", "root": str(tmp_path), "spacing": 2.0, "split_ratio": [1.0, 0.0, 0.0]},
                                    "data")
    with pytest.raises(ConfigError, match="has no template"):
        run_data.make_bank(files, _wants(labels=("L0",), reference=True), "train", 2)


def test_epoch_banks_keep_one_shape_and_grow_once_when_needed(capsys):
    small, _, _ = run_data.make_bank(DATA, _wants(), "train", 2)
    calls = []

    def make(epoch):  # epoch 1: banks that fit the bucket; epoch 2: a wider margin that does not
        calls.append(epoch)
        return small.replace(levels=tuple(level[::-1] for level in small.levels)) if epoch == 1 else \
            run_data.make_bank(DATA, _wants(max_crop=25), "train", 2, epoch=epoch)[0]

    banks = run_data.EpochBanks(small, every=2, make=make)
    shapes = [tuple(np.shape(level)) for level in banks.bank.levels]
    assert banks.for_chunk(0) is banks.bank and banks.for_chunk(1) is banks.bank and calls == []
    assert [banks.starts_epoch(c) for c in range(5)] == [False, False, True, False, True]
    epoch1 = banks.for_chunk(2)
    assert calls == [1] and [tuple(np.shape(level)) for level in epoch1.levels] == shapes  # padded to the same shape
    np.testing.assert_array_equal(np.asarray(epoch1.levels[0])[:, :small.levels[0].shape[1], :small.levels[0].shape[2],
                                                               :small.levels[0].shape[3]], np.asarray(small.levels[0])[::-1])
    assert "one recompilation" not in capsys.readouterr().err
    epoch2 = banks.for_chunk(4)  # a wider margin does not fit: the shape grows, once, and says so
    assert calls == [1, 2] and banks.epochs_built == [0, 1, 2]
    assert all(np.shape(a)[1] > s[1] for a, s in zip(epoch2.levels, shapes))
    assert "one recompilation" in capsys.readouterr().err
