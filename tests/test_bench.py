"""jaxmed bench: grid validation, point configs, and a tiny CPU grid over devices in subprocesses."""

import json

import pytest

from jaxmed.bench import RESULT_KEYS, load_grid, markdown, point_config, points, run_grid
from jaxmed.errors import ConfigError

TINY = ["data.n_train=1", "env.crop_size=9", "data.phantom_shape=[24,24,24]", "env.max_steps=12", "network.trunk.patch_size=3",
        "network.trunk.width=0.25", "network.head.hidden=[16]", "dqn.chunk_steps=4", "dqn.batch_size=8",
        "dqn.replay_capacity=128"]


def test_grid_points_and_configs():
    grid = load_grid({"overrides": TINY, "axes": {"n_envs": [2, 4], "agents": [1, 2], "dtype": ["float16"], "crop_size": [9]}})
    pts = points(grid)
    assert len(pts) == 4 and pts[0] == {"n_envs": 2, "agents": 1, "crop_size": 9, "dtype": "float16"}
    cfg = point_config(grid, pts[-1])
    assert cfg.dqn.n_envs == 4 and cfg.env["targets"] == ["L0", "L1"] and cfg.env["crop_size"] == 9
    assert cfg.data.dtype == "float16" and cfg.dqn.learning_starts == cfg.dqn.batch_size
    with pytest.raises(ConfigError, match="unknown axis"):
        load_grid({"axes": {"gpus": [1]}})
    with pytest.raises(ConfigError, match="integers"):
        load_grid({"axes": {"devices": [0]}})
    with pytest.raises(ConfigError, match="landmarks"):
        point_config(load_grid({"overrides": TINY, "axes": {"agents": [9]}}), {"agents": 9})


def test_bench_tiny_cpu_grid_over_fake_devices_writes_json_table_and_png(tmp_path):
    grid = load_grid({"overrides": TINY, "chunks": 1, "env_steps": 5, "axes": {"n_envs": [2], "devices": [1, 2]}})
    out = tmp_path / "bench.json"
    result = run_grid(grid, out, progress=False, timeout_s=300)
    saved = json.loads(out.read_text())
    assert saved["points"] == result["points"] and len(saved["points"]) == 2
    for p in saved["points"]:
        assert "error" not in p, p
        for k in RESULT_KEYS:
            assert k in p
        assert p["env_agent_steps_per_s"] > 0 and p["train_env_steps_per_s"] > 0 and p["updates_per_s"] > 0
        assert p["peak_memory_bytes"] > 2**20
    assert [p["devices"] for p in saved["points"]] == [1, 2]
    assert out.with_suffix(".png").stat().st_size > 1000
    table = markdown(saved)
    assert table.count("\n") == 3 and "train env-steps/s" in table
    # a point that cannot run is recorded, not fatal
    bad = run_grid(load_grid({"overrides": TINY, "axes": {"agents": [9]}}), tmp_path / "bad.json", progress=False, in_process=True)
    assert "landmarks" in bad["points"][0]["error"]
