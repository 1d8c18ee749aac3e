"""``jaxmed plane``: clear errors before any model is loaded or compiled (bad image, existing outputs,
a run directory that is not a view-plane run), the run-config helpers, the robust mean, the PNG.

The command on a trained agent is tested in ``test_plane_learning.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxmed.commands import plane as command
from jaxmed.data import save_nifti
from jaxmed.data.planes import get_plane, plane_phantom
from jaxmed.envs.plane import PlaneEnv
from jaxmed.errors import ConfigError, ImageError, JaxmedError, OverwriteError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def parser():
    p = argparse.ArgumentParser(prog="jaxmed")
    command.add_parser(p.add_subparsers(dest="command", required=True))
    return p


@pytest.fixture
def plane_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    env = {"name": "plane-v0", "target": "phantom", "size": 16, "levels": [0, 1], "angle_steps": [2.0, 6.0],
           "offset_steps": [1.0, 3.0], "max_steps": 30, "eval_max_steps": 25, "eval_starts": 4}
    (run / "config.yaml").write_text(yaml.safe_dump({"env": env}))
    return run


def _call(parser, argv):
    args = parser.parse_args(["plane", *map(str, argv)])
    return args.func(args)


def test_parser_and_defaults(parser, tmp_path):
    args = parser.parse_args(["plane", "img.nii.gz", "--checkpoint", "runs/x", "-o", "p.json"])
    got = (args.image, args.checkpoint, args.out, args.png, args.n_starts, args.overwrite)
    assert got == ("img.nii.gz", "runs/x", "p.json", None, 9, False)
    assert args.func is command._run
    with pytest.raises(SystemExit):
        parser.parse_args(["plane", "img.nii.gz", "-o", "p.json"])  # --checkpoint is required


def test_existing_outputs_are_refused_before_anything_runs(parser, tmp_path, plane_run):
    out = tmp_path / "plane.json"
    out.write_text("{}")
    with pytest.raises(OverwriteError, match="plane.json: already exists"):
        _call(parser, [tmp_path / "missing.nii.gz", "--checkpoint", tmp_path / "nowhere", "-o", out])
    png = tmp_path / "plane.png"
    png.write_bytes(b"x")
    with pytest.raises(OverwriteError, match="plane.png"):
        _call(parser, [tmp_path / "missing.nii.gz", "--checkpoint", plane_run, "-o", tmp_path / "new.json", "--png", png])
    assert out.read_text() == "{}" and png.read_bytes() == b"x"  # untouched


def test_run_directories_that_are_not_plane_runs(parser, tmp_path):
    with pytest.raises(ConfigError, match="not a jaxmed run directory"):
        _call(parser, ["img.nii.gz", "--checkpoint", tmp_path, "-o", tmp_path / "p.json"])
    landmark_run = tmp_path / "landmark"
    landmark_run.mkdir()
    (landmark_run / "config.yaml").write_text((REPO / "configs" / "phantom_dqn.yaml").read_text())
    with pytest.raises(ConfigError, match="not 'plane-v0'.*jaxmed detect"):
        _call(parser, ["img.nii.gz", "--checkpoint", landmark_run, "-o", tmp_path / "p.json"])
    (landmark_run / "config.yaml").write_text(yaml.safe_dump({"env": {"name": "registration-v0"}}))
    with pytest.raises(ConfigError, match="environment 'registration-v0', not 'plane-v0'"):
        _call(parser, ["img.nii.gz", "--checkpoint", landmark_run, "-o", tmp_path / "p.json"])
    (landmark_run / "config.yaml").write_text("env: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        command.check_plane_run(landmark_run)
    assert not (tmp_path / "p.json").exists()


def test_bad_images_raise_image_errors(parser, tmp_path, plane_run, monkeypatch):
    import jaxmed.runs
    from jaxmed.data import Volume
    from jaxmed.experiment import ExperimentConfig

    cfg = ExperimentConfig.from_dict(yaml.safe_load((plane_run / "config.yaml").read_text()), "config.yaml")
    monkeypatch.setattr(jaxmed.runs, "load_params", lambda d: (cfg, None, None))  # no network: the image fails first
    text = tmp_path / "notes.nii.gz"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="notes.nii.gz"):
        _call(parser, [text, "--checkpoint", plane_run, "-o", tmp_path / "p.json"])
    flat = tmp_path / "flat.nii.gz"
    save_nifti(Volume(np.ones((8, 8, 8), np.float32) * np.nan, np.eye(4)), flat)
    with pytest.raises(JaxmedError, match="flat.nii.gz"):
        _call(parser, [flat, "--checkpoint", plane_run, "-o", tmp_path / "p.json"])
    with pytest.raises(ImageError):
        _call(parser, [tmp_path / "missing.nii.gz", "--checkpoint", plane_run, "-o", tmp_path / "p.json"])
    with pytest.raises(ConfigError, match="--n-starts"):
        _call(parser, [text, "--checkpoint", plane_run, "-o", tmp_path / "p.json", "--n-starts", "0"])
    assert not (tmp_path / "p.json").exists()


def test_env_from_run_section_and_robust_mean():
    from jaxmed import experiment as ex

    def env_of(section):  # how `jaxmed plane` builds the env of a run: as training did
        return ex.make_env(ex.ExperimentConfig.from_dict({"env": section}, "run/config.yaml"))

    env, params, eval_params = env_of({"name": "plane-v0", "target": "midsagittal", "size": 24, "max_steps": 30,
                                       "eval_max_steps": 25, "eval_starts": 4})
    assert isinstance(env, PlaneEnv) and env.config.target == "midsagittal" and env.config.size == 24
    assert int(params.max_steps) == 30 and int(eval_params.max_steps) == 25
    with pytest.raises(ConfigError, match="unknown option"):
        env_of({"name": "plane-v0", "targets": ["AC"]})
    normals = np.array([[0, 0, 1.0], [0.1, 0, 0.995], [0, 0.1, 0.995], [0.9, 0, 0.436]])  # one lost start
    n, d = command.robust_plane(normals / np.linalg.norm(normals, axis=1, keepdims=True), np.array([1.0, 2.0, 1.5, 40.0]))
    assert np.degrees(np.arccos(n[2])) < 4.0 and d == pytest.approx(1.75)
    assert abs(np.linalg.norm(n) - 1) < 1e-12


def test_png_and_json_of_a_known_plane(tmp_path):
    volume, landmarks = plane_phantom(seed=3)
    definition = get_plane("phantom")
    n, d = definition.from_landmarks(landmarks)
    centre = volume.voxel_to_world((np.array(volume.shape) - 1) / 2)
    result = {"normal": n, "offset": d, "point": centre - (n @ centre - d) * n, "normals": np.stack([n, n]),
              "offsets": np.array([d, d]), "steps": np.array([10, 12])}
    doc = command.plane_json(result, definition, "img.nii.gz", "runs/x")
    json.dumps(doc)  # serialisable
    assert doc["start_spread_deg"]["max"] == pytest.approx(0.0, abs=1e-3) and doc["per_start"][1]["steps"] == 12
    # the resliced image on the sheet's plane is brighter than a parallel plane 8 mm away
    u = np.cross(n, [1.0, 0, 0])
    u /= np.linalg.norm(u)
    on = command.reslice(volume, result["point"], n, u, 20, 1.0)
    off = command.reslice(volume, result["point"] + 8 * n, n, u, 20, 1.0)
    assert on.mean() > off.mean() + 0.1
    png = command.plot_plane(volume, result, definition, tmp_path / "p.png")
    assert png.stat().st_size > 5000
    with pytest.raises(OverwriteError):
        command.plot_plane(volume, result, definition, tmp_path / "p.png")


@pytest.mark.parametrize("name", ["phantom_plane_dqn.yaml", "afids_plane_dqn_cpu.yaml"])
def test_shipped_plane_configs_build(name):
    """The shipped view-plane configs parse, name registered planes and pyramid levels their data has,
    and give a network that accepts the env's observation shape."""
    from jaxmed import experiment as ex
    from jaxmed.config import load_yaml
    from jaxmed.experiment import ExperimentConfig

    cfg = ExperimentConfig.from_dict(load_yaml(REPO / "configs" / name), name)
    env, params, eval_params = ex.make_env(cfg)
    assert cfg.env_name == "plane-v0" and isinstance(env, PlaneEnv)
    assert max(env.config.levels) < len(cfg.data.factors)
    assert int(eval_params.max_steps) == cfg.env["eval_max_steps"] and float(eval_params.terminate_at_target) == 0.0
    net = ex.make_network(cfg, env)
    net.check_input(env.observation_space(params).shape[-3:])
    for plane in ("midsagittal", "coronal_ac"):  # the AFIDs config serves every AFIDs plane by target
        if cfg.data.source == "afids":
            other, _, _ = ex.make_env(dataclasses.replace(cfg, env={**cfg.env, "target": plane}))
            assert other.required_labels == env.required_labels


def test_plane_search_compiles_once_per_shape_and_answers_as_find_plane():
    """One :class:`PlaneSearch` serves every parameter set and image of a shape with one compiled
    search, and answers exactly what the one-off :func:`find_plane` answers for the same policy."""
    import jax

    from jaxmed import experiment as ex
    from jaxmed.agents import learners
    from jaxmed.data import conform

    cfg = ex.ExperimentConfig.from_dict(yaml.safe_load((REPO / "configs/phantom_plane_dqn.yaml").read_text()), "phantom_plane_dqn.yaml")
    cfg = dataclasses.replace(cfg, env={**cfg.env, "eval_max_steps": 12})
    env, _, eval_params = ex.make_env(cfg)
    network = ex.make_network(cfg, env)
    members = [network.init(jax.random.key(k), ex.dummy_observation(cfg, env)) for k in (0, 1)]
    images = [conform(plane_phantom(seed=s)[0], 2.0) for s in (3, 4)]
    assert images[0].shape == images[1].shape
    searcher = command.PlaneSearch(env, eval_params, lambda p, obs: learners.policy_action("dqn", network, p, obs))
    for volume in images:
        for p in members:
            res = searcher.find(volume, p, factors=(1, 2), dtype="uint8", n_starts=4)
            ref = command.find_plane(volume, env, eval_params, lambda obs, p=p: learners.policy_action("dqn", network, p, obs),
                                     factors=(1, 2), dtype="uint8", n_starts=4)
            np.testing.assert_allclose(res["normals"], ref["normals"], atol=1e-6)
            np.testing.assert_allclose(res["offsets"], ref["offsets"], atol=1e-4)
            np.testing.assert_array_equal(res["steps"], ref["steps"])
    assert searcher._search._cache_size() == 1
