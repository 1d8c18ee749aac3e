"""The view-plane agent learns (DQN on plane phantoms), and ``jaxmed plane`` finds the plane with it.

One small DQN training (11 chunks of 50 vector steps, 16 envs, patch trunk on a 3 x 16 x 16 slab) is
shared by both tests: greedy evaluation from fixed perturbed starts against the start error and a
uniformly random policy, then the command on a held-out phantom written as a NIfTI file with flipped
axes (it is conformed back to RAS), starting from the world axis (no ground truth).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from jaxmed.agents.learners import run_chunks
from jaxmed.data import Volume, build_bank, save_nifti
from jaxmed.data.planes import plane_phantom
from jaxmed.envs.plane import N_ACTIONS, PlaneConfig, PlaneEnv, PlaneParams
from jaxmed.errors import OverwriteError
from jaxmed.experiment import ExperimentConfig

LABELS = ("L0", "L1", "L2")
ENV = dict(target="phantom", size=16, levels=[0, 1], angle_steps=[2.0, 6.0], offset_steps=[1.0, 3.0])
PARAMS = dict(max_steps=40, max_start_angle_deg=20.0, max_start_offset_mm=8.0)
NETWORK = dict(trunk={"name": "patch", "patch_size": [3, 4, 4], "group": [1, 2, 2], "width": 0.5}, head={"name": "q", "hidden": [64, 32]},
               n_actions=N_ACTIONS, crop_size=[3, 16, 16])


@pytest.fixture(scope="module")
def trained():
    from jaxmed.agents.dqn import DQNConfig, make_train
    from jaxmed.networks import network_from_config

    bank = build_bank([plane_phantom(seed=s) for s in range(6)], LABELS, factors=(1, 2), max_crop=3, dtype="uint8", packed=True)
    env = PlaneEnv(PlaneConfig(**ENV), labels=bank.labels)
    params = PlaneParams(**PARAMS)
    net = network_from_config(NETWORK)
    cfg = DQNConfig(n_envs=16, chunk_steps=50, batch_size=64, learning_rate=1e-3, learning_starts=200, replay_capacity=20_000,
                    eps_decay_steps=500, target_update_period=100, double=True)
    fns = make_train(cfg, env, params, net)
    rs, metrics = run_chunks(fns, bank, 11, seed=0)
    return types.SimpleNamespace(bank=bank, env=env, params=params, net=net, net_params=rs.params, metrics=metrics)


def test_dqn_learns_to_find_the_phantom_plane(trained):
    from jaxmed.agents.dqn import greedy_action
    from jaxmed.agents.rollout import greedy_rollout

    env, bank, net = trained.env, trained.bank, trained.net
    assert np.isfinite(float(trained.metrics["loss"])) and np.isfinite(float(trained.metrics["final_angle_deg"]))
    ev = env.eval_params(trained.params)
    states = env.eval_states(ev, bank, 8, seed=1)  # 48 fixed starts on the 6 phantoms

    @jax.jit
    def run(use_random):
        def policy(o):
            # uniformly random actions: the key changes with the observation, so with every step
            key = jax.random.fold_in(jax.random.key(7), jnp.sum(o, dtype=jnp.uint32))
            return jnp.where(use_random, jax.random.randint(key, o.shape[:2], 0, N_ACTIONS), greedy_action(net, trained.net_params, o))

        return greedy_rollout(policy, env, ev, bank, states)["metrics"]

    result, random = ({k: np.asarray(v)[:, 0] for k, v in run(r).items()} for r in (False, True))
    start = {k: np.asarray(v)[:, 0] for k, v in jax.jit(jax.vmap(env.eval_metrics, in_axes=(0, None, None)))(states, ev, bank).items()}
    err = result["angle_deg"] + result["distance_mm"]
    err_start = start["angle_deg"] + start["distance_mm"]
    err_random = random["angle_deg"] + random["distance_mm"]
    assert np.median(result["angle_deg"]) < 4.0 and np.median(result["distance_mm"]) < 1.5, (result, start)
    assert err.mean() < 0.4 * err_start.mean() and err.mean() < 0.3 * err_random.mean(), (err.mean(), err_start.mean(), err_random.mean())


def test_plane_command_finds_the_plane_of_a_new_image(trained, tmp_path, monkeypatch):
    import jaxmed.runs
    from jaxmed.commands import plane as command

    # a held-out phantom, stored with flipped R and S axes (the command conforms it back to RAS)
    volume, landmarks = plane_phantom(seed=11)
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[:3, 3] = [volume.shape[0] - 1, 0, volume.shape[2] - 1]
    image = tmp_path / "phantom.nii.gz"
    save_nifti(Volume(volume.data[::-1, :, ::-1].copy(), volume.affine @ flip), image)
    p = landmarks.positions
    n_true = np.cross(p[1] - p[0], p[2] - p[0])
    n_true /= np.linalg.norm(n_true) * np.sign(n_true[2])

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env_section = {"name": "plane-v0", **ENV, **PARAMS, "eval_max_steps": 40, "eval_starts": 8}
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"env": env_section, "network": NETWORK}))
    data = types.SimpleNamespace(spacing=2.0, factors=(1, 2), dtype="uint8", intensity_ceiling=None)  # no source: no template prior
    cfg = dataclasses.replace(ExperimentConfig.from_dict({"env": env_section, "network": NETWORK}, "config.yaml"), data=data)
    # the run directory's parameters: what jaxmed.runs.load_params(run_dir) returns for this run
    monkeypatch.setattr(jaxmed.runs, "load_params", lambda d: (cfg, trained.net, trained.net_params))

    parser = argparse.ArgumentParser()
    command.add_parser(parser.add_subparsers())
    out, png = tmp_path / "plane.json", tmp_path / "plane.png"
    args = parser.parse_args(["plane", str(image), "--checkpoint", str(run_dir), "-o", str(out), "--png", str(png), "--n-starts", "5"])
    assert args.func(args) == 0
    doc = json.loads(out.read_text())
    n, d, point = np.array(doc["normal"]), doc["offset_mm"], np.array(doc["point_mm"])
    assert doc["plane"] == "phantom" and doc["starts"] == 5 and len(doc["per_start"]) == 5
    assert abs(np.linalg.norm(n) - 1) < 1e-5 and abs(n @ point - d) < 1e-3
    angle = np.degrees(np.arccos(min(1.0, abs(n @ n_true))))
    print(f"found plane: {angle:.2f} degrees, landmarks {np.abs(p @ n - d).mean():.2f} mm from it")
    assert angle < 5.0, doc
    assert np.abs(p @ n - d).mean() < 2.0, doc  # the phantom's landmarks lie on the found plane
    assert png.stat().st_size > 5000
    again = parser.parse_args(["plane", str(image), "--checkpoint", str(run_dir), "-o", str(out)])
    with pytest.raises(OverwriteError, match="plane.json"):
        again.func(again)
    # a run trained with --seeds 2 (parameters stacked on a seed axis): the command answers with seed 0
    two = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=2))
    stacked = jax.tree.map(lambda x: np.stack([np.asarray(x), np.zeros_like(np.asarray(x))]), trained.net_params)
    monkeypatch.setattr(jaxmed.runs, "load_params", lambda d: (two, trained.net, stacked))
    out2 = tmp_path / "plane_seeds.json"
    args = parser.parse_args(["plane", str(image), "--checkpoint", str(run_dir), "-o", str(out2), "--n-starts", "5"])
    assert args.func(args) == 0
    np.testing.assert_allclose(json.loads(out2.read_text())["normal"], doc["normal"], atol=1e-6)
