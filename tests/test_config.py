"""One way to declare and check config sections: typed frozen dataclasses built with
:func:`jaxmed.config.build`, for the learner section, the env options and the network section;
errors name the key path. Every shipped config loads and survives a ``to_dict`` round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxmed.config import apply_overrides, load_yaml
from jaxmed.errors import ConfigError
from jaxmed.experiment import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "sweeps" not in p.parts)


def _load(path, *overrides):
    return ExperimentConfig.from_dict(apply_overrides(load_yaml(path), list(overrides)), str(path))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_config_loads_and_round_trips(path):
    cfg = _load(path)
    data = cfg.to_dict()
    assert cfg.train.learner in data and "learner_config" not in data  # YAML names the section after the learner
    assert ExperimentConfig.from_dict(data) == cfg
    assert cfg.learner is cfg.learner_config is cfg.section(cfg.train.learner)
    others = [n for n in ("dqn", "a2c", "ppo", "grpo") if n != cfg.train.learner]
    assert all(getattr(cfg, n) is None for n in others)


@pytest.mark.parametrize("override, message", [
    ("network.trunk.width=a", r"phantom_dqn\.yaml\.network\.trunk\.width: expected a number, got 'a'"),
    ("network.trunk.patch_size=[5, x, 5]", r"phantom_dqn\.yaml\.network\.trunk\.patch_size"),
    ("network.head.hidden=[64, b]", r"phantom_dqn\.yaml\.network\.head\.hidden\[1\]: expected an integer"),
    ("network.trunk.depth=3", r"trunk 'patch': unknown option\(s\) \['depth'\]"),
    ("network.widht=3", r"unknown key\(s\) widht"),
    ("env.crop_size=a", r"env\.crop_size: expected an integer, got 'a'"),
    ("env.max_steps=2.5", r"env\.max_steps: expected an integer, got 2\.5"),
    ("env.crop_sise=9", r"unknown option\(s\) crop_sise"),
    ("dqn.gamma=x", r"phantom_dqn\.yaml\.dqn\.gamma: expected a number, got 'x'"),
    ("dqn.her.strategy=final", r"HER strategy"),
    ("dqn.her={fraction: 0.3, radius: 2}", r"phantom_dqn\.yaml\.dqn\.her: unknown key\(s\) radius"),
])
def test_bad_values_name_their_key(override, message):
    with pytest.raises(ConfigError, match=message):
        _load(REPO / "configs/phantom_dqn.yaml", override)


def test_learner_section_is_generic():
    cfg = _load(REPO / "configs/phantom_ppo.yaml", "ppo.num_steps=8")
    assert cfg.train.learner == "ppo" and cfg.ppo.num_steps == 8 and cfg.dqn is None
    with pytest.raises(ConfigError, match="unknown key learner_config"):
        ExperimentConfig.from_dict({**cfg.to_dict(), "learner_config": {}})
    with pytest.raises(ConfigError, match=r"phantom_ppo\.yaml\.a2c\.gamma"):  # a stray section of another learner is checked too
        _load(REPO / "configs/phantom_ppo.yaml", "a2c.gamma=x")
