"""AAL structures as box / corner-pair targets (jaxmed.data.aal_targets): the target box on Colin27 is the
box of the AAL label's voxels, the carried box on a synthetic subject matches the warped label's box, the
configs load, both envs reset and step on an AAL target, and the box evaluation runs end to end."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmed.data import colin27
from jaxmed.data.sources import DataConfig, make
from jaxmed.errors import ConfigError

pytestmark = pytest.mark.realdata

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("afids_box_aal_cpu.yaml", "afids_corner_pair_aal_cpu.yaml")
AAL_IDS = {"aal:caudate_l": 71, "aal:putamen_r": 74, "aal:thalamus_l": 77, "aal:hippocampus_r": 38}


def _reference_box(files, label_id):
    """NumPy reference: world mm box of the voxel centres carrying ``label_id`` in the AAL NIfTI
    (the file's own affine; no jaxmed reorientation or resampling)."""
    import nibabel as nib

    img = nib.load(str(files["aal"]))
    data = np.rint(np.asanyarray(img.dataobj)).astype(np.int64)
    idx = np.argwhere(data == label_id)
    world = idx @ img.affine[:3, :3].T + img.affine[:3, 3]
    return world.min(0), world.max(0)


def _box(landmarks, structure):
    p = landmarks.select([l for l in landmarks.labels if l.startswith(f"{structure}#")]).positions
    return p.min(0), p.max(0)


def test_colin27_aal_box_is_the_box_of_the_label_voxels(colin27_files):
    from jaxmed.data import aal_targets, build_bank
    from jaxmed.envs import make as make_env

    structures = list(AAL_IDS)
    src = make(DataConfig(source="colin27", spacing=4.0, images=("ch2",), structures=structures))
    labels = [l for l in src.labels() if "#" in l]
    assert len(labels) == aal_targets.N_POINTS * len(structures)
    (subject,) = src.subjects("test", labels)
    bank = build_bank([subject.pair()], labels, factors=(1,), max_crop=8, dtype="uint8")
    for structure, label_id in AAL_IDS.items():
        ref_lo, ref_hi = _reference_box(colin27_files, label_id)
        lo, hi = _box(subject.landmarks, structure)
        np.testing.assert_allclose(lo, ref_lo, atol=1e-4)
        np.testing.assert_allclose(hi, ref_hi, atol=1e-4)
        np.testing.assert_allclose(np.stack(aal_targets.label_box(structure)), np.stack([ref_lo, ref_hi]), atol=1e-4)
        env, _ = make_env("box-v0", tuple(labels), structure=structure, n_points=aal_targets.N_POINTS)
        t_lo, t_hi = env.target_box(bank, 0)
        np.testing.assert_allclose(np.asarray(t_lo), ref_lo, atol=1e-3)
        np.testing.assert_allclose(np.asarray(t_hi), ref_hi, atol=1e-3)


def test_synthetic_subject_carries_the_aal_box(colin27_files, afids_data):
    """On a synthetic subject of the AFIDs template, the box of the carried points equals (within the
    1 mm label grid and the elastic warp) the box of the AAL label pulled back through the subject's
    warp and the AFIDs affine (NumPy: nearest label voxel at every 1 mm subject point)."""
    from jaxmed.data import aal_targets, synth

    structure = "aal:thalamus_l"
    cfg = DataConfig(source="afids", spacing=2.0, n_train=1, n_test=1, seed=3, structures=[structure])
    src = make(cfg)
    tpl_volume, tpl_lm = src.reference()
    labels = [l for l in tpl_lm.labels if l.startswith(f"{structure}#")]
    (subject,) = src.subjects("test", labels)
    lo, hi = _box(subject.landmarks, structure)
    # reference: label of every point of a 1 mm grid around the carried box, pulled back to Colin27
    grid = np.stack(np.meshgrid(*[np.arange(a - 6, b + 6.01, 1.0) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    transform, _ = synth._draw_transform(tpl_volume, tpl_lm.select(labels), np.random.default_rng(subject.meta["seed"]),
                                         src.synth_config())
    tpl_world = transform.backward(grid)
    a = aal_targets.afids_affine(colin27.landmarks(), afids_data[1])
    colin_world = (tpl_world - a[:3, 3]) @ np.linalg.inv(a[:3, :3]).T
    aal, mask = aal_targets.label_mask(structure)
    vox = np.rint(aal.world_to_voxel(colin_world)).astype(np.int64)
    inside = np.all((vox >= 0) & (vox < np.asarray(mask.shape)), axis=1)
    hit = np.zeros(len(grid), bool)
    hit[inside] = mask[tuple(vox[inside].T)]
    ref = grid[hit]
    assert len(ref) > 1000
    np.testing.assert_allclose(lo, ref.min(0), atol=1.5)
    np.testing.assert_allclose(hi, ref.max(0), atol=1.5)


@pytest.mark.parametrize("name", CONFIGS)
def test_aal_box_configs_load(name):
    from jaxmed.config import load_yaml
    from jaxmed.experiment import ExperimentConfig, make_env

    cfg = ExperimentConfig.from_dict(load_yaml(ROOT / "configs" / "box" / name), name)
    assert cfg.data.source == "afids" and cfg.env["structure"] == "aal:caudate_l"
    assert "aal:caudate_l" in cfg.data.structures and len(cfg.data.structures) == 8
    env, _, _ = make_env(cfg)
    assert env.required_labels[0] == "aal:caudate_l#000" and len(env.required_labels) == 64


def test_aal_structure_names_are_checked():
    with pytest.raises(ConfigError, match="unknown AAL structure 'aal:amygdala_l'"):
        DataConfig(source="afids", structures=["aal:amygdala_l"])
    with pytest.raises(ConfigError, match="only AAL structures"):
        DataConfig(source="colin27", structures=["lateral_ventricles"])
    DataConfig(source="colin27", structures=["aal:putamen_l"])


@pytest.fixture(scope="module")
def small_bank(colin27_files):
    """Colin27 at 4 mm with the left thalamus's points (one small volume)."""
    from jaxmed.data import build_bank

    src = make(DataConfig(source="colin27", spacing=4.0, images=("ch2",), structures=["aal:thalamus_l"]))
    labels = [l for l in src.labels() if "#" in l]
    (subject,) = src.subjects("test", labels)
    return build_bank([subject.pair()], labels, factors=(1, 2), max_crop=8, dtype="uint8"), tuple(labels)


@pytest.mark.parametrize("env_name, options", [
    ("box-v0", {"grid_size": 7, "levels": [0, 1], "max_steps": 5}),
    ("corner-pair-v0", {"crop_size": 7, "levels": [0, 1], "max_steps": 5}),
])
def test_box_envs_reset_and_step_on_an_aal_target(small_bank, env_name, options):
    from jaxmed.envs import make as make_env

    bank, labels = small_bank
    env, params = make_env(env_name, labels, structure="aal:thalamus_l", n_points=64, **options)
    env.check_bank(bank)
    reset = jax.jit(env.reset)
    step = jax.jit(env.step)
    obs, state = reset(jax.random.key(0), params, bank)
    assert obs.shape == env.observation_space(params, bank).shape
    t_lo, t_hi = env.target_box(bank, 0)
    assert np.all(np.asarray(t_hi) - np.asarray(t_lo) > 10.0)  # the thalamus is > 10 mm on every axis
    key = jax.random.key(1)
    for _ in range(7):  # past max_steps: one auto-reset
        key, k_act, k_step = jax.random.split(key, 3)
        action = jax.random.randint(k_act, (env.n_agents,), 0, env.num_actions)
        obs, state, reward, terminated, truncated, info = step(k_step, state, action, params, bank)
        assert obs.shape == env.observation_space(params, bank).shape
        assert np.all(np.isfinite(np.asarray(reward)))
        iou = np.asarray(env.eval_metrics(state, params, bank)["iou"])
        assert np.all((iou >= 0) & (iou <= 1))


def test_box_evaluation_on_colin27_runs(colin27_files, afids_data):
    """evaluate_box_set on Colin27 with an untrained network: every method scored, the env's IoU
    agrees with the NumPy one (checked inside), the template prior box is the AFIDs-affine image of
    Colin27's label box."""
    from jaxmed import box_evaluation
    from jaxmed.agents.core import init_network
    from jaxmed.config import load_yaml
    from jaxmed.data import aal_targets
    from jaxmed.experiment import ExperimentConfig, dummy_observation, make_env, make_network

    raw = load_yaml(ROOT / "configs" / "box" / "afids_box_aal_cpu.yaml")
    raw["data"].update(spacing=4.0, factors=[1, 2], structures=["aal:putamen_l"])
    raw["env"].update(structure="aal:putamen_l", grid_size=9, levels=[0, 1], eval_starts=2, eval_max_steps=3, max_steps=3)
    raw["network"] = {"trunk": {"name": "patch", "patch_size": 3}, "head": {"name": "q", "hidden": [8]}}
    cfg = ExperimentConfig.from_dict(raw, "test")
    env, _, _ = make_env(cfg)
    network = make_network(cfg, env)
    params = init_network(network, jax.random.key(0), dummy_observation(cfg, env), env)
    res = box_evaluation.evaluate_box_set(cfg, network, params, "colin27", registration=False)
    assert res["set"] == "colin27" and res["subjects"] == ["colin27", "colin27-bet"]
    assert set(res["methods"]) == {"agent", "agent_aggregate", "start", "prior"}
    assert res["methods"]["agent"]["iou"]["n"] == 4 and res["methods"]["prior"]["iou"]["n"] == 2
    lo, hi = aal_targets.label_box("aal:putamen_l")
    a = aal_targets.afids_affine(colin27.landmarks(), afids_data[1])
    corners = np.stack(np.meshgrid(*zip(lo, hi), indexing="ij"), -1).reshape(-1, 3) @ a[:3, :3].T + a[:3, 3]
    expected = box_evaluation.box_metrics(corners.min(0), corners.max(0), lo, hi)
    # the template's 64 points span (within a voxel) the affine image of the label box
    assert abs(res["methods"]["prior"]["iou"]["mean"] - float(expected["iou"])) < 0.1
    assert "| template prior |" in res["table"]
    m = box_evaluation.box_metrics(np.zeros(3), np.ones(3) * 2, np.ones(3), np.ones(3) * 3)
    assert float(m["iou"]) == pytest.approx(1 / 15) and float(m["centre_error_mm"]) == pytest.approx(np.sqrt(3))
    assert jnp.isfinite(res["methods"]["agent"]["centre_error_mm"]["mean"])
