"""``jaxmed plane`` and ``jaxmed register`` with checkpoints of a policy-gradient learner (PPO): the
commands act with :func:`jaxmed.agents.learners.policy_action` (argmax of the policy's logits), not a
Q-network's argmax. Tiny phantom runs of one chunk: the command path, not the accuracy."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from jaxmed.config import apply_overrides, load_yaml
from jaxmed.data import Volume, blob_phantom, save_nifti
from jaxmed.data.planes import plane_phantom
from jaxmed.errors import ConfigError
from jaxmed.experiment import ExperimentConfig
from jaxmed.train import run_training

TINY = ["train.chunks=1", "train.checkpoint_every=1", "ppo.n_envs=4", "ppo.num_steps=4", "ppo.update_epochs=1",
        "ppo.num_minibatches=1", "data.n_train=2", "data.n_test=1", "env.eval_starts=1", "env.eval_max_steps=3"]


def _ppo_run(path, run_dir):
    cfg = ExperimentConfig.from_dict(apply_overrides(load_yaml(path), TINY), path)
    assert cfg.train.learner == "ppo"
    run_training(cfg, run_dir, progress=False, evaluate=False)
    return run_dir


def _cli(command, argv):
    parser = argparse.ArgumentParser(prog="jaxmed")
    command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_plane_command_with_a_ppo_checkpoint(tmp_path):
    from jaxmed.commands import plane

    run = _ppo_run("configs/phantom_plane_ppo.yaml", tmp_path / "run")
    volume, _ = plane_phantom(seed=11)
    image = save_nifti(volume, tmp_path / "phantom.nii.gz")
    out = tmp_path / "plane.json"
    assert _cli(plane, ["plane", str(image), "--checkpoint", str(run), "-o", str(out), "--n-starts", "2"]) == 0
    doc = json.loads(out.read_text())
    normal = np.asarray(doc["normal"], np.float64)
    assert normal.shape == (3,) and abs(np.linalg.norm(normal) - 1.0) < 1e-3 and np.isfinite(doc["offset_mm"])


def test_register_command_with_a_ppo_checkpoint(tmp_path):
    from jaxmed.commands import register

    run = _ppo_run("configs/phantom_registration_ppo.yaml", tmp_path / "run")
    fixed, _ = blob_phantom(shape=(30, 28, 26), spacing=2.0, n_landmarks=4, seed=7)
    moving = Volume(np.roll(fixed.data, 2, axis=0), fixed.affine)
    fp, mp = save_nifti(fixed, tmp_path / "fixed.nii.gz"), save_nifti(moving, tmp_path / "moving.nii.gz")
    out = tmp_path / "t.txt"
    assert _cli(register, ["register", str(fp), str(mp), "-o", str(out), "--checkpoint", str(run)]) == 0
    t = register.read_transform(out)
    np.testing.assert_allclose(t[:3, :3] @ t[:3, :3].T, np.eye(3), atol=1e-5)  # rigid
    np.testing.assert_allclose(t[3], [0, 0, 0, 1])
    with pytest.raises(ConfigError, match="Q-values"):  # look-ahead ranks Q-values: refused for a policy
        _cli(register, ["register", str(fp), str(mp), "-o", str(tmp_path / "u.txt"), "--checkpoint", str(run), "--lookahead", "3"])
