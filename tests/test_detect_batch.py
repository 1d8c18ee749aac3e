"""``jaxmed detect`` on many images in one process: one landmark file per image, one compilation for
images of similar size, clear errors and ``--keep-going`` on an unreadable image, nothing half-written."""

import numpy as np
import pytest
from test_evaluate_data import untrained_run

from jaxmed.cli import main
from jaxmed.data import Volume, blob_phantom, read_landmarks, save_nifti
from jaxmed.detect import LandmarkDetector, detect, detect_files, expand_inputs
from jaxmed.errors import ConfigError, ImageError


def _images(tmp_path):
    """Three phantom images: two of one shape (one shifted in the world), one a little smaller."""
    vol, _ = blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=4, seed=0)
    shifted = np.array(vol.affine, np.float64)
    shifted[:3, 3] += [6.0, -4.0, 2.0]
    small = Volume(np.asarray(vol.data)[:30, 1:, :], vol.affine)
    d = tmp_path / "scans"
    d.mkdir()
    return [save_nifti(vol, d / "a.nii.gz"), save_nifti(Volume(vol.data, shifted), d / "b.nii.gz"), save_nifti(small, d / "c.nii")]


def test_batch_writes_one_file_per_image_and_compiles_once(tmp_path, capsys):
    run = tmp_path / "run"
    untrained_run(run)
    images = _images(tmp_path)
    det = LandmarkDetector.from_run(run, n_starts=27)
    res = detect_files(det, images, tmp_path / "out", group=2)  # groups of 2: [a, b], [c + a repeat]
    assert [p.name for p in res["written"]] == ["a.fcsv", "b.fcsv", "c.fcsv"] and res["failed"] == []
    assert res["compilations"] == 1 and len(res["seconds"]) == 3  # similar sizes share the bucketed program
    for i, name in ((1, "b"), (2, "c")):  # the same answers as single-image calls (27 grid starts)
        one = detect(run, images[i], n_starts=27)
        np.testing.assert_allclose(read_landmarks(tmp_path / "out" / f"{name}.fcsv").positions, one.positions, atol=1e-3)
    # random starts are placed alike in every image: an image's answer does not depend on its place in the group
    random8 = LandmarkDetector.from_run(run, n_starts=8)
    detect_files(random8, images[::-1], tmp_path / "random8", group=3)  # c, b, a in one bank: a is third
    one = detect(run, images[0], n_starts=8)
    np.testing.assert_allclose(read_landmarks(tmp_path / "random8" / "a.fcsv").positions, one.positions, atol=1e-3)
    # the CLI: a folder in, a directory out, timings printed
    assert main(["detect", str(tmp_path / "scans"), "--checkpoint", str(run), "-o", str(tmp_path / "cli"), "--starts", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 landmark file(s)" in out and "1 compilation(s)" in out and "s per image after start-up" in out
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["a.fcsv", "b.fcsv", "c.fcsv"]
    # outputs are never overwritten: refused before any image is read
    assert main(["detect", str(tmp_path / "scans" / "*.nii*"), "--checkpoint", str(run), "-o", str(tmp_path / "cli")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_broken_image_stops_the_batch_or_is_skipped(tmp_path, capsys):
    run = tmp_path / "run"
    untrained_run(run)
    images = _images(tmp_path)
    broken = tmp_path / "scans" / "b.nii.gz"
    broken.write_bytes(b"not an image")
    manifest = tmp_path / "list.csv"
    manifest.write_text("image\nscans/a.nii.gz\nscans/b.nii.gz\nscans/c.nii\n")
    assert expand_inputs([str(manifest)]) == images
    det = LandmarkDetector.from_run(run, n_starts=2)
    with pytest.raises(ImageError, match="b.nii.gz"):
        detect_files(det, images, tmp_path / "stop")
    assert sorted(p.name for p in (tmp_path / "stop").iterdir()) == ["a.fcsv"]  # complete files only, no partial ones
    assert main(["detect", str(manifest), "--checkpoint", str(run), "-o", str(tmp_path / "out"), "--starts", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxmed: error:") and "b.nii.gz" in err and "Traceback" not in err
    assert main(["detect", str(manifest), "--checkpoint", str(run), "-o", str(tmp_path / "kg"), "--starts", "2", "--keep-going"]) == 1
    assert "skipped" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "kg").iterdir()) == ["a.fcsv", "c.fcsv"]


def test_cli_input_errors(tmp_path, capsys):
    run = tmp_path / "run"
    untrained_run(run)
    images = _images(tmp_path)
    (tmp_path / "file.fcsv").write_text("x")
    argv = ["detect", *map(str, images), "--checkpoint", str(run), "-o", str(tmp_path / "file.fcsv")]
    assert main(argv) == 2 and "must be a directory" in capsys.readouterr().err
    assert main(["detect", str(tmp_path / "none*.nii"), "--checkpoint", str(run), "-o", str(tmp_path / "o")]) == 2
    assert "no file matches" in capsys.readouterr().err
    assert main(["detect", str(tmp_path / "missing.nii.gz"), "--checkpoint", str(run), "-o", str(tmp_path / "m.fcsv")]) == 2
    assert "missing.nii.gz" in capsys.readouterr().err and not (tmp_path / "m.fcsv").exists()
    assert main(["data", "show", str(images[0]), "-l", str(tmp_path / "file.fcsv"), "-o", str(tmp_path / "x.fcsv")]) == 2
    assert "must be an image (.png" in capsys.readouterr().err and not (tmp_path / "x.fcsv").exists()


def test_an_ensemble_pools_every_members_end_points(tmp_path):
    """``LandmarkDetector`` with a list of parameter sets runs each through the same compiled rollout
    and pools their end points: two copies of one network answer as it does from twice the points;
    two different networks answer with the aggregate of both members' end points."""
    import jax

    from jaxmed.inference import estimate_landmarks
    from jaxmed.runs import load_params

    run = tmp_path / "run"
    untrained_run(run)
    cfg, network, params = load_params(run)
    vol, _ = blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=4, seed=0)
    other = jax.tree.map(lambda x: -x, params)
    single = LandmarkDetector(cfg, network, params, n_starts=8)
    twice = LandmarkDetector(cfg, network, [params, params], n_starts=8)
    both = LandmarkDetector(cfg, network, [params, other], n_starts=8)
    only_other = LandmarkDetector(cfg, network, other, n_starts=8)
    np.testing.assert_allclose(twice.find([vol])[0][0].positions, single.find([vol])[0][0].positions, atol=1e-9)
    assert twice.compilations == 1
    w1, v1, _ = single.end_points([vol])
    w2, v2, _ = only_other.end_points([vol])
    wb, vb, _ = both.end_points([vol])
    np.testing.assert_array_equal(wb, np.concatenate([w1, w2]))
    np.testing.assert_array_equal(vb, np.concatenate([v1, v2]))
    assert not np.allclose(w1, w2)  # the members really differ
    want = estimate_landmarks(wb, both.targets, both.labels, "median")
    np.testing.assert_allclose(both.find([vol])[0][0].positions, want.positions, atol=1e-9)
    with pytest.raises(Exception, match="at least one"):
        LandmarkDetector(cfg, network, [], n_starts=8)


def test_shape_check_needs_eight_landmarks_and_a_template(tmp_path, capsys):
    run = tmp_path / "run"
    untrained_run(run)  # the phantom run answers one landmark
    with pytest.raises(ConfigError, match=r"run: the shape check needs a model of at least 8 landmarks; this one answers 1 \(L0\)"):
        LandmarkDetector.from_run(run, shape="affine")
    with pytest.raises(ConfigError, match="unknown shape check 'rigid'"):
        LandmarkDetector.from_run(run, shape="rigid")
    images = _images(tmp_path)
    assert main(["detect", str(images[0]), "--checkpoint", str(run), "-o", str(tmp_path / "a.fcsv"), "--shape", "affine"]) == 2
    assert "at least 8 landmarks" in capsys.readouterr().err and not (tmp_path / "a.fcsv").exists()


@pytest.mark.afids
def test_shape_check_mends_answers_that_disagree_with_the_template(tmp_path, afids_data):
    """An (untrained) 10-landmark AFIDs model on the template itself: with ``shape="affine"`` every
    answer carries its residual, the inliers are the plain answers, and each outlier is the template
    landmark mapped through the affine fit of the inliers."""
    from jaxmed.data import conform
    from jaxmed.inference import read_uncertainty
    from jaxmed.shape_model import apply_affine, fit_affine

    labels = ["AC", "PC", "infracollicular sulcus", "PMJ", "culmen", "genu of CC", "splenium of CC", "R LV at AC",
              "L LV at AC", "pineal gland"]
    untrained_run(tmp_path / "run", [f"env.targets={labels}", "env.start_radius_mm=0.0"],
                  data={"source": "afids", "spacing": 4.0, "n_train": 1, "n_test": 1, "dtype": "uint8"})
    volume = conform(afids_data[0], 4.0)
    plain = LandmarkDetector.from_run(tmp_path / "run", n_starts=4).find([volume])[0][0]
    checked = LandmarkDetector.from_run(tmp_path / "run", n_starts=4, shape="affine").find([volume])[0][0]
    assert checked.labels == tuple(labels)
    out = np.array(["shape_outlier" in d for d in checked.descriptions])
    assert 1 <= out.sum() <= 2, checked.descriptions  # the untrained agents lose one or two landmarks here
    assert all("shape_residual_mm=" in d for d in checked.descriptions)
    np.testing.assert_allclose(checked.positions[~out], plain.positions[~out])
    tpl = afids_data[1].select(labels).positions
    matrix = fit_affine(tpl[~out], plain.positions[~out])
    np.testing.assert_allclose(checked.positions[out], apply_affine(matrix, tpl)[out], atol=1e-6)
    assert set(read_uncertainty(checked)) == set(labels)
    some = LandmarkDetector.from_run(tmp_path / "run", n_starts=4, shape="affine", labels=["PC", "AC"]).find([volume])[0][0]
    np.testing.assert_allclose(some.positions, checked.select(["PC", "AC"]).positions)  # checked on all, then picked


def _untrained_run_and_two_phantoms(tmp_path):
    """``(run_dir, cfg, network, params, (volume, other))``: an untrained landmark run and two 32³ phantoms."""
    from jaxmed.runs import load_params

    run = tmp_path / "run"
    untrained_run(run)
    cfg, network, params = load_params(run)
    return run, cfg, network, params, tuple(blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=4, seed=s)[0] for s in (0, 1))


def test_intensity_augmentation_pools_the_end_points_of_scaled_copies(tmp_path, capsys):
    """``intensity_scales``: each volume also runs with its intensities scaled (clipped to its own
    maximum); the end points of all copies are those of the copies run as separate volumes, mapped
    back to their volume, and the answer aggregates them all. ``(1.0,)`` is plain detection; the
    run's ``eval.intensity_scales`` is the default; bad factors are refused naming the key."""
    import dataclasses

    from jaxmed.config import build
    from jaxmed.data.image_io import scaled_copies
    from jaxmed.detect import read_conformed
    from jaxmed.experiment import EvalSection
    from jaxmed.inference import estimate_landmarks

    run, cfg, network, params, (vol, other) = _untrained_run_and_two_phantoms(tmp_path)
    scales = (0.5, 1.0, 1.5)
    copies = scaled_copies([vol, other], scales)
    data, top = np.asarray(vol.data, np.float32), float(np.max(vol.data))
    assert len(copies) == 6 and copies[1] is vol and copies[4] is other
    np.testing.assert_allclose(copies[0].data, 0.5 * data, rtol=1e-6)
    np.testing.assert_allclose(copies[2].data, np.minimum(1.5 * data, top), rtol=1e-6)
    assert float(np.max(copies[2].data)) == pytest.approx(top) and np.all(copies[2].affine == vol.affine)

    # with the bank's uint8 scale fixed (data.intensity_ceiling), each scale's copies run as a batch of their own
    top_all = max(top, float(np.max(other.data)))
    cfg_fixed = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, intensity_ceiling=top_all))
    plain = LandmarkDetector(cfg_fixed, network, params, n_starts=8)
    tta = LandmarkDetector(cfg_fixed, network, params, n_starts=8, intensity_scales=scales)
    per_scale = [plain.end_points(copies[c::3]) for c in range(3)]
    w, v, _ = tta.end_points([vol, other])
    np.testing.assert_array_equal(w, np.concatenate([p[0] for p in per_scale]))
    np.testing.assert_array_equal(v, np.concatenate([p[1] for p in per_scale]))
    assert np.bincount(v).tolist() == [3 * 8, 3 * 8] and tta.compilations == 1  # 8 starts x 3 copies, one program
    answers, _ = tta.find([vol, other])
    for i in range(2):
        want = estimate_landmarks(w[v == i], tta.targets, tta.labels, "median")
        np.testing.assert_allclose(answers[i].positions, want.positions, atol=1e-9)
    half, whole = (np.asarray(plain.bank(copies[c::3]).levels[0][0], np.float64) for c in (0, 1))
    assert np.abs(half - 0.5 * whole).max() <= 1.0 and whole.max() > 100  # the dimmed copy is stored dimmed
    # without a ceiling the copies are stored on the scale of the unscaled volumes: the same end points
    free = LandmarkDetector(cfg, network, params, n_starts=8, intensity_scales=scales)
    np.testing.assert_array_equal(free.end_points([vol, other])[0], w)
    # one call may run other factors (the same compiled program)
    np.testing.assert_array_equal(tta.end_points([vol, other], intensity_scales=[0.5])[0], per_scale[0][0])
    assert tta.compilations == 1
    one = LandmarkDetector(cfg, network, params, n_starts=8, intensity_scales=[1])
    unscaled = LandmarkDetector(cfg, network, params, n_starts=8)
    np.testing.assert_allclose(one.find([vol])[0][0].positions, unscaled.find([vol])[0][0].positions, atol=1e-9)

    # the run's eval.intensity_scales is the default; the argument overrides it
    cfg_tta = dataclasses.replace(cfg, eval=build(EvalSection, {"intensity_scales": [0.5, 1.0, 1.5]}, "run.eval"))
    assert LandmarkDetector(cfg_tta, network, params).intensity_scales == scales
    assert LandmarkDetector(cfg_tta, network, params, intensity_scales=[1.0]).intensity_scales == (1.0,)
    assert LandmarkDetector(cfg, network, params).intensity_scales == (1.0,)
    for bad in ([], [0.0], [1.0, -1.0], [1.0, 1.0], [float("nan")], "x"):
        with pytest.raises(ConfigError, match="eval.intensity_scales"):
            build(EvalSection, {"intensity_scales": bad}, "run.eval")
        with pytest.raises(ConfigError, match="run: intensity_scales: expected"):
            LandmarkDetector(cfg, network, params, intensity_scales=bad)

    # the run's data.intensity_ceiling fixes the detection bank's uint8 scale (as in its training banks)
    assert cfg.data.dtype == "uint8"
    cfg_ceiling = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, intensity_ceiling=2.5))
    assert float(LandmarkDetector(cfg_ceiling, network, params).bank([vol]).intensity_scale) == pytest.approx(2.5 / 255)
    assert float(unscaled.bank([vol]).intensity_scale) == pytest.approx(top / 255)

    # the command line: one image, three copies, one landmark file
    images = _images(tmp_path)
    assert main(["detect", str(images[0]), "--checkpoint", str(run), "-o", str(tmp_path / "a.fcsv"), "--starts", "8",
                 "--intensity-scales", "0.5", "1", "1.5"]) == 0
    want = tta.find([read_conformed(images[0], cfg.data.spacing)])[0][0]
    np.testing.assert_allclose(read_landmarks(tmp_path / "a.fcsv").positions, want.positions, atol=1e-3)
    assert main(["detect", str(images[0]), "--checkpoint", str(run), "-o", str(tmp_path / "b.fcsv"),
                 "--intensity-scales", "0"]) == 2
    assert "intensity_scales" in capsys.readouterr().err and not (tmp_path / "b.fcsv").exists()


def test_deal_starts_gives_every_copy_a_start_on_each_grid_line():
    from jaxmed.detect import deal_starts

    dealt = deal_starts(27, 3)
    assert dealt.shape == (27,) and np.bincount(dealt).tolist() == [9, 9, 9]
    grid = dealt.reshape(3, 3, 3)  # start (i, j, l) is row 9 i + 3 j + l of the 3x3x3 grid
    for c in range(3):  # along every axis, every line of the grid has exactly one start of each copy
        for axis in range(3):
            assert np.all((grid == c).sum(axis=axis) == 1)
    assert deal_starts(8, 2).tolist() == [0, 1, 1, 0, 1, 0, 0, 1]  # the 2x2x2 grid: a checkerboard
    assert deal_starts(10, 3).tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]  # not a grid: in turn
    assert deal_starts(5, 1).tolist() == [0] * 5
    with pytest.raises(ConfigError, match="2 start.*3 intensity copies"):
        deal_starts(2, 3)


def test_detection_starts_default_to_the_runs_eval_starts(tmp_path):
    """Without ``n_starts`` a detector runs the starts the run's training evaluated with
    (``env.eval_starts``); the end points are those of asking for that number."""
    import dataclasses

    run, cfg, network, params, (vol, _) = _untrained_run_and_two_phantoms(tmp_path)
    cfg = dataclasses.replace(cfg, env={**cfg.env, "eval_starts": 5})
    default = LandmarkDetector(cfg, network, params)
    assert default.n_starts == 5
    w, v, _ = default.end_points([vol])
    w5, v5, _ = LandmarkDetector(cfg, network, params, n_starts=5).end_points([vol])
    assert np.asarray(w).shape[0] == 5 and np.array_equal(np.asarray(w), np.asarray(w5))
    with pytest.raises(ConfigError, match="n_starts must be >= 1"):
        LandmarkDetector(cfg, network, params, n_starts=0)


def test_split_starts_runs_each_start_on_one_intensity_copy(tmp_path, capsys):
    """``split_starts``: the copies share the starts; the end points are exactly those rows of the
    every-start-on-every-copy run (each start's rollout is independent of the others in its batch),
    so the copies cost one copy's work; the run's ``eval.split_starts`` is the default; too few
    starts are refused before anything is written."""
    import dataclasses

    from jaxmed.config import build
    from jaxmed.detect import deal_starts
    from jaxmed.experiment import EvalSection

    run, cfg, network, params, (vol, other) = _untrained_run_and_two_phantoms(tmp_path)
    scales = (0.5, 1.0, 1.5)
    every = LandmarkDetector(cfg, network, params, n_starts=27, intensity_scales=scales)
    split = LandmarkDetector(cfg, network, params, n_starts=27, intensity_scales=scales, split_starts=True)
    w_all, v_all, _ = every.end_points([vol, other])
    w, v, _ = split.end_points([vol, other])
    assert w.shape == (2 * 27, w_all.shape[1], 3) and np.bincount(v).tolist() == [27, 27]
    start = np.tile(np.arange(27), 2)  # rows of one copy: volume after volume, start after start
    keep = np.concatenate([deal_starts(27, 3)[start] == c for c in range(3)])
    np.testing.assert_allclose(w, w_all[keep], atol=1e-5)
    np.testing.assert_array_equal(v, v_all[keep])
    assert split.compilations == 1  # 9 starts per copy: one program for the three copies
    answers, _ = split.find([vol, other])
    assert answers[0].positions.shape == (len(split.labels), 3)

    # the run's eval.split_starts is the default, the argument overrides it; one copy is unaffected
    cfg_split = dataclasses.replace(cfg, eval=build(EvalSection, {"intensity_scales": list(scales), "split_starts": True}, "run.eval"))
    assert LandmarkDetector(cfg_split, network, params, n_starts=27).split_starts
    assert not LandmarkDetector(cfg_split, network, params, split_starts=False).split_starts
    assert not LandmarkDetector(cfg, network, params).split_starts
    one = LandmarkDetector(cfg, network, params, n_starts=4, split_starts=True)
    np.testing.assert_array_equal(one.end_points([vol])[0], LandmarkDetector(cfg, network, params, n_starts=4).end_points([vol])[0])
    with pytest.raises(ConfigError, match="run.eval.split_starts"):
        build(EvalSection, {"split_starts": "often"}, "run.eval")
    with pytest.raises(ConfigError, match="2 start"):
        LandmarkDetector(cfg, network, params, n_starts=2, intensity_scales=scales, split_starts=True)

    # the command line: the same answer as the detector; too few starts refused, nothing written
    images = _images(tmp_path)
    assert main(["detect", str(images[0]), "--checkpoint", str(run), "-o", str(tmp_path / "a.fcsv"),
                 "--intensity-scales", "0.5", "1", "1.5", "--split-starts", "--starts", "27"]) == 0
    from jaxmed.detect import read_conformed

    want = split.find([read_conformed(images[0], cfg.data.spacing)])[0][0]
    np.testing.assert_allclose(read_landmarks(tmp_path / "a.fcsv").positions, want.positions, atol=1e-3)
    assert main(["detect", str(images[0]), "--checkpoint", str(run), "-o", str(tmp_path / "b.fcsv"), "--starts", "2",
                 "--intensity-scales", "0.5", "1", "1.5", "--split-starts"]) == 2
    assert "split_starts" in capsys.readouterr().err and not (tmp_path / "b.fcsv").exists()


def test_level_step_limit_ends_searches_that_never_oscillate(tmp_path, capsys):
    """``level_step_limit``: an agent that has made that many moves at one level ends there as if it
    had oscillated (greedy untrained agents otherwise wander up to ``eval_max_steps``); answers of
    episodes that ended sooner are unchanged; the run's ``eval.level_step_limit`` is the default, the
    argument and ``--level-step-limit`` override it; bad values and envs without the option are
    refused naming the key, before anything is written."""
    import dataclasses

    from jaxmed.config import build, load_yaml
    from jaxmed.detect import read_conformed
    from jaxmed.experiment import EvalSection, ExperimentConfig
    from jaxmed.runs import load_params

    run = tmp_path / "run"
    untrained_run(run, ["env.eval_max_steps=40"])
    cfg, network, params = load_params(run)
    vol = blob_phantom(shape=(32, 32, 32), spacing=2.0, n_landmarks=4, seed=0)[0]

    def rollout(det):
        bank = det.bank([vol])
        states = det.env.eval_states(det.eval_params, bank, det.n_starts, seed=0)
        return det.end_points([vol])[0], np.asarray(det.compiled_for(bank, states)(det.params, bank, states)["steps"])

    free = LandmarkDetector(cfg, network, params, n_starts=27)
    capped = LandmarkDetector(cfg, network, params, n_starts=27, level_step_limit=3)
    assert (free.level_step_limit, capped.level_step_limit) == (0, 3)
    (w_free, s_free), (w_cap, s_cap) = rollout(free), rollout(capped)
    assert s_cap.max() <= 3 < s_free.max()  # some untrained searches run on; none past the limit
    early = s_free < 3  # ended by oscillating before the limit: the same end points
    np.testing.assert_array_equal(w_cap[early], w_free[early])

    # the run's eval.level_step_limit is the default; the argument overrides it
    cfg3 = dataclasses.replace(cfg, eval=build(EvalSection, {"level_step_limit": 3}, "run.eval"))
    assert LandmarkDetector(cfg3, network, params).level_step_limit == 3
    assert LandmarkDetector(cfg3, network, params, level_step_limit=0).level_step_limit == 0
    for bad in (-1, 2.5, "x", True):
        with pytest.raises(ConfigError, match="eval.level_step_limit"):
            build(EvalSection, {"level_step_limit": bad}, "run.eval")
        with pytest.raises(ConfigError, match="run: level_step_limit"):
            LandmarkDetector(cfg, network, params, level_step_limit=bad)
    raw = load_yaml("configs/phantom_box_dqn.yaml")
    with pytest.raises(ConfigError, match="eval.level_step_limit.*no level_step_limit"):
        ExperimentConfig.from_dict(dict(raw, eval={"level_step_limit": 3}), "box.yaml")

    # the command line: the capped detector's answer; a bad value refused, nothing written
    images = _images(tmp_path)
    assert main(["detect", str(images[0]), "--checkpoint", str(run), "-o", str(tmp_path / "a.fcsv"),
                 "--level-step-limit", "3", "--starts", "27"]) == 0
    want = capped.find([read_conformed(images[0], cfg.data.spacing)])[0][0]
    np.testing.assert_allclose(read_landmarks(tmp_path / "a.fcsv").positions, want.positions, atol=1e-3)
    assert main(["detect", str(images[0]), "--checkpoint", str(run), "-o", str(tmp_path / "b.fcsv"),
                 "--level-step-limit", "-1"]) == 2
    assert "level_step_limit" in capsys.readouterr().err and not (tmp_path / "b.fcsv").exists()


def test_registration_starts_follow_the_image_and_do_not_depend_on_the_batch(tmp_path):
    """start_from=registration: the template's landmarks carried to each image by the affine baseline
    (an image shifted in the world carries them shifted alike), every start within the radius of
    them, an image's answer the same alone or beside another; clear errors for bad options."""
    from jaxmed.data import conform, load_image
    from jaxmed.data.run_data import template
    from jaxmed.detect import registration_offsets

    offsets = registration_offsets(9, 6.0, seed=3)
    assert offsets.shape == (9, 3) and np.all(offsets[0] == 0) and np.all(np.linalg.norm(offsets, axis=1) <= 6.0 + 1e-9)
    assert np.array_equal(offsets, registration_offsets(9, 6.0, seed=3)) and not np.allclose(offsets, registration_offsets(9, 6.0, seed=4))

    run = tmp_path / "run"
    cfg = untrained_run(run)
    vol, lm = template(cfg.data)
    tpl_image = save_nifti(vol, tmp_path / "tpl.nii.gz")
    shifted = np.array(vol.affine, np.float64)
    shifted[:3, 3] += [6.0, -4.0, 2.0]
    moved_image = save_nifti(Volume(vol.data, shifted), tmp_path / "moved.nii.gz")
    det = LandmarkDetector.from_run(run, n_starts=5, start_from="registration", start_radius_mm=4.0)
    volumes = [conform(load_image(p), cfg.data.spacing) for p in (tpl_image, moved_image)]
    carried, seconds = det.registered_targets(volumes)
    truth = lm.positions[[lm.labels.index(t) for t in det.targets]]
    assert carried.shape == (2, len(det.targets), 3) and seconds > 0
    np.testing.assert_allclose(carried[0], truth, atol=cfg.data.spacing)  # the template onto itself
    np.testing.assert_allclose(carried[1] - carried[0], np.broadcast_to([6.0, -4.0, 2.0], carried[0].shape), atol=cfg.data.spacing)
    bank = det.bank(volumes)
    states = det.start_states(bank, carried)
    pos = np.asarray(states.pos).reshape(2, 5, len(det.targets), 3)  # volume-major, then starts
    world = np.einsum("ij,vsaj->vsai", np.asarray(bank.affines[0][0])[:3, :3], pos) + np.asarray(bank.affines[0][0])[:3, 3]
    world[1] += [6.0, -4.0, 2.0]  # volume 1's voxels in its own (shifted) world
    dist = np.linalg.norm(world - carried[:, None], axis=-1)
    assert np.all(dist <= 4.0 + np.sqrt(3) * cfg.data.spacing / 2 + 1e-6)  # within the radius, up to rounding to a voxel
    assert np.all(dist[:, 0] <= np.sqrt(3) * cfg.data.spacing / 2 + 1e-6)  # start 0 on the registered point
    both, _ = det.find(volumes)
    alone, _ = det.find(volumes[1:])
    np.testing.assert_allclose(both[1].positions, alone[0].positions, atol=1e-6)
    with pytest.raises(ConfigError, match="start_from"):
        LandmarkDetector.from_run(run, start_from="atlas")
    with pytest.raises(ConfigError, match="start_radius_mm"):
        LandmarkDetector.from_run(run, start_from="registration", start_radius_mm=-1.0)
    assert main(["detect", str(tpl_image), "--checkpoint", str(run), "-o", str(tmp_path / "a.fcsv"), "--starts", "3",
                 "--start-from", "registration", "--start-radius", "2"]) == 0
    assert read_landmarks(tmp_path / "a.fcsv").labels == det.labels


def test_detection_options_are_one_checked_value_resolved_against_the_run(tmp_path):
    from jaxmed.detect import DetectionOptions

    for bad, match in (({"n_starts": 0}, "n_starts must be >= 1"), ({"aggregate": "mode"}, "unknown aggregate 'mode'"),
                       ({"start_from": "atlas"}, "unknown start_from 'atlas'"), ({"start_radius_mm": -1.0}, "start_radius_mm")):
        with pytest.raises(ConfigError, match=match):
            DetectionOptions(**bad)
    run = tmp_path / "run"
    untrained_run(run)
    options = DetectionOptions(n_starts=4, aggregate="mean")
    det = LandmarkDetector.from_run(run, options=options, seed=3)  # a keyword replaces one field of the options
    assert det.options.n_starts == 4 and det.options.aggregate == "mean" and det.options.seed == 3
    # what was left to the run is filled in from its config
    assert det.options.intensity_scales == tuple(det.cfg.eval.intensity_scales) and det.options.split_starts is False
    assert det.options.level_step_limit == int(det.eval_params.level_step_limit)
    assert LandmarkDetector.from_run(run).options.n_starts == det.cfg.eval_starts
    with pytest.raises(TypeError):
        LandmarkDetector.from_run(run, n_start=4)  # a misspelt option is not silently ignored
