"""jaxmed bench: grid validation, point configs, the environment measure over fake devices in-process,
errors carried back from a subprocess, and a DQN point over a local 2-process jax.distributed cluster."""

import json

import pytest

from jaxmed.bench import RESULT_KEYS, load_grid, markdown, point_config, points, run_grid
from jaxmed.commands.bench import main as bench_main
from jaxmed.errors import ConfigError

TINY = ["data.n_train=1", "env.crop_size=9", "data.phantom_shape=[24,24,24]", "env.max_steps=12", "network.trunk.patch_size=3",
        "network.trunk.width=0.25", "network.head.hidden=[16]", "dqn.chunk_steps=4", "dqn.batch_size=8",
        "dqn.replay_capacity=128"]


def test_grid_points_and_configs():
    grid = load_grid({"overrides": TINY, "variants": {"small": ["env.max_steps=7"], "big": ["env.max_steps=30"]},
                      "axes": {"n_envs": [2, 4], "agents": [1, 2], "dtype": ["float16"], "crop_size": [9], "variant": ["small", "big"]}})
    pts = points(grid)
    assert len(pts) == 8 and pts[0] == {"variant": "small", "n_envs": 2, "agents": 1, "crop_size": 9, "dtype": "float16"}
    cfg = point_config(grid, pts[3])
    assert cfg.dqn.n_envs == 4 and cfg.env["targets"] == ["L0", "L1"] and cfg.env["crop_size"] == 9 and cfg.env["max_steps"] == 7
    assert cfg.data.dtype == "float16" and cfg.dqn.learning_starts == cfg.dqn.batch_size
    assert point_config(grid, pts[-1]).env["max_steps"] == 30
    ppo = point_config(load_grid({"overrides": TINY, "axes": {"learner": ["ppo"], "n_envs": [3], "devices": [2]}}),
                       {"learner": "ppo", "n_envs": 3, "devices": 2})
    assert ppo.train.learner == "ppo" and ppo.ppo.n_envs == 3 and ppo.train.devices == 2
    # the processes axis trains through the multi-host program: train.devices stays 1 (no pmap)
    mh = point_config(load_grid({"overrides": TINY, "axes": {"processes": [2], "devices": [2]}}), {"devices": 2, "processes": 2})
    assert mh.train.devices == 1
    for bad, match in [({"axes": {"gpus": [1]}}, "unknown axis"), ({"axes": {"devices": [0]}}, "integers"),
                       ({"axes": {"processes": [True]}}, "integers"), ({"axes": {"variant": ["x"]}}, "not defined"),
                       ({"measure": ["pixels"]}, "measure"), ({"measure": ["env"], "axes": {"processes": [2]}}, "train"),
                       ({"repeats": 3}, "unknown key")]:
        with pytest.raises(ConfigError, match=match):
            load_grid(bad)
    with pytest.raises(ConfigError, match="landmarks"):
        point_config(load_grid({"overrides": TINY, "axes": {"agents": [9]}}), {"agents": 9})
    with pytest.raises(ConfigError, match="dqn learner only"):
        point_config(load_grid({"overrides": TINY, "axes": {"processes": [2], "learner": ["ppo"]}}), {"processes": 2, "learner": "ppo"})
    with pytest.raises(ConfigError, match="in-process"):
        run_grid(load_grid({"overrides": TINY, "axes": {"processes": [1]}}), "unused.json", in_process=True)


def test_env_measure_over_fake_devices_in_process_writes_json_table_and_png(tmp_path, capsys):
    grid = load_grid({"overrides": TINY, "measure": ["env"], "env_steps": 4, "axes": {"n_envs": [2], "devices": [1, 2]}})
    out = tmp_path / "bench.json"
    result = run_grid(grid, out, progress=False, in_process=True)
    saved = json.loads(out.read_text())
    assert saved["points"] == result["points"] and [p["devices"] for p in saved["points"]] == [1, 2]
    for p in saved["points"]:
        assert "error" not in p, p
        assert p["env_agent_steps_per_s"] > 0 and p["global_devices"] == p["devices"] and p["peak_memory_bytes"] > 2**20
        assert "train_env_steps_per_s" not in p  # not measured
    assert out.with_suffix(".png").stat().st_size > 1000
    table = markdown(saved)
    assert table.count("\n") == 3 and "| 2 | 2 |" in table and "—" in table
    # jaxmed bench --replot redraws the PNG and reprints the table of a saved result
    out.with_suffix(".png").unlink()
    assert bench_main(["--replot", str(out)]) == 0
    assert out.with_suffix(".png").stat().st_size > 1000 and table in capsys.readouterr().out


def test_subprocess_point_error_is_recorded_not_fatal(tmp_path):
    bad = run_grid(load_grid({"overrides": TINY, "axes": {"agents": [9]}}), tmp_path / "bad.json", progress=False, timeout_s=120)
    assert "landmarks" in bad["points"][0]["error"]
    assert "error" in markdown(bad)


def test_dqn_over_two_local_processes(tmp_path):
    """One point = two jax.distributed processes x 1 fake CPU device each, multi-host DQN training."""
    grid = load_grid({"overrides": TINY, "measure": ["train"], "chunks": 1, "axes": {"n_envs": [2], "processes": [2]}})
    result = run_grid(grid, tmp_path / "mh.json", progress=False, timeout_s=240)
    p = result["points"][0]
    assert "error" not in p, p
    assert p["processes"] == 2 and p["global_devices"] == 2 and p["n_envs_per_device"] == 2
    assert p["train_env_steps_per_s"] > 0 and p["updates_per_s"] > 0 and p["compile_s"] >= 0
    for k in RESULT_KEYS[1:]:
        assert k in p
    assert "env_agent_steps_per_s" not in p


def test_trunk_axis_replaces_the_trunk_section():
    """Another trunk does not inherit the old trunk's options (patch_size is no network3d option);
    the same trunk keeps them."""
    from jaxmed.experiment import make_env, make_network

    grid = load_grid({"config": "configs/afids_dqn_cpu.yaml", "axes": {"trunk": ["network3d", "patch", "strided"]}})
    n3d, patch, strided = (point_config(grid, p) for p in points(grid))
    assert n3d.network["trunk"] == "network3d" and strided.network["trunk"] == "strided"
    assert patch.network["trunk"] == {"name": "patch", "patch_size": 5}
    n3d = point_config(grid, {"trunk": "network3d", "crop_size": 45})
    env, _, _ = make_env(n3d, ("AC", "PC"))
    net = make_network(n3d, env)  # used to fail: "unknown option patch_size"
    assert "network3d" in repr(net)
