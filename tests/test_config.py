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
    # values outside the interval a field declares (jaxmed.config.bounded), named by their key path
    ("dqn.gamma=1.5", r"phantom_dqn\.yaml\.dqn\.gamma must be a number in \(0, 1\], got 1\.5"),
    ("dqn.n_envs=0", r"phantom_dqn\.yaml\.dqn\.n_envs must be a positive int, got 0"),
    ("dqn.learning_starts=-5", r"dqn\.learning_starts must be an int >= 0, got -5"),
    ("dqn.huber_delta=.nan", r"dqn\.huber_delta must be a finite number, got nan"),
    ("env.max_steps=0", r"env\.max_steps must be a positive int, got 0"),
    ("env.level_step_limit=-1", r"env\.level_step_limit must be an int >= 0, got -1"),
    ("env.start_radius_mm=-2", r"env\.start_radius_mm must be a number >= 0, got -2\.0"),
    ("env.osc_repeats=1", r"env\.osc_repeats must be an int >= 2, got 1"),
    ("env.crop_size=0", r"env\.crop_size must be a positive int, got 0"),
    ("eval.level_step_limit=-3", r"eval\.level_step_limit must be an int >= 0, got -3"),
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


def test_declared_bounds_are_checked_inherited_and_described():
    """``bounded`` declares a field's interval once; ``check_fields`` checks type and interval, stores
    plain Python values, lets ``X | None`` be ``None``, and a subclass that only changes a default
    keeps the base class's interval."""
    import dataclasses
    import math

    import numpy as np

    from jaxmed.agents.a2c import A2CConfig
    from jaxmed.config import Bounds, bounded, build, check_fields, check_value, field_bounds

    @dataclasses.dataclass(frozen=True)
    class Section:
        n: int = bounded(3, 1)
        rate: float = bounded(0.5, 0.0, 1.0, low_open=True)
        limit: int | None = bounded(None, 0)
        name: str = "a"
        flag: bool = False

        def __post_init__(self):
            check_fields(self)

    @dataclasses.dataclass(frozen=True)
    class Child(Section):
        n: int = 5  # a new default, the base's interval

    s = Section(n=np.int64(4), rate=1, flag=np.bool_(True))
    assert (type(s.n), type(s.rate), type(s.flag)) == (int, float, bool) and s.limit is None
    assert field_bounds(Child, "n") == Bounds(1) and field_bounds(Child, "name") is None
    for kwargs, message in [
        ({"n": 0}, r"Section\.n must be a positive int, got 0"),
        ({"n": True}, r"Section\.n must be a positive int, got True"),
        ({"n": 2.0}, r"Section\.n must be a positive int, got 2\.0"),
        ({"rate": 0.0}, r"Section\.rate must be a number in \(0, 1\], got 0\.0"),
        ({"rate": math.inf}, r"Section\.rate must be a number in \(0, 1\], got inf"),
        ({"limit": -1}, r"Section\.limit must be an int >= 0, got -1"),
        ({"name": 3}, r"Section\.name must be a string, got 3"),
        ({"flag": 1}, r"Section\.flag must be true or false, got 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Section(**kwargs)
    with pytest.raises(ConfigError, match=r"Child\.n must be a positive int, got 0"):
        Child(n=0)
    with pytest.raises(ConfigError, match=r"^run\.section\.rate must be a number in \(0, 1\], got 2\.0$"):
        build(Section, {"rate": 2}, "run.section")  # build names the key path, not the class
    with pytest.raises(ConfigError, match=r"A2CConfig\.num_steps must be a positive int, got 0"):
        A2CConfig(num_steps=0)  # redeclared default in A2C, interval from ActorCriticConfig
    assert check_value(np.float32(0.25), float, Bounds(0.0, 1.0), "x") == 0.25
    assert Bounds(0.0, 1.0, high_open=True).describe("float") == "a number in [0, 1)"
    assert Bounds(2).describe("int") == "an int >= 2" and Bounds(high=0.0, high_open=True).describe("float") == "a number < 0"


def test_every_env_refuses_options_outside_their_intervals():
    """Every registered env checks the options it is made with against the intervals its config and
    params declare, naming the env and the key; the defaults pass."""
    import jaxmed
    from jaxmed.envs.registry import registered

    labels = ["AC", "PC", "organ#000", "organ#001"]
    bad = {"landmark-v0": {"max_steps": 0}, "landmark-multiscale-v0": {"gain_prob": 1.5},
           "landmark-multiagent-v0": {"osc_window": 0}, "registration-v0": {"max_rotation_deg": 200.0},
           "box-v0": {"alpha": 1.0}, "corner-pair-v0": {"distance_weight": -1.0},
           "plane-v0": {"max_start_angle_deg": -1.0}, "goal-landmark-v0": {"n_agents": 0},
           "goal-plane-v0": {"size": 0}, "threshold-seg-v0": {"window_step": 0.0},
           "voxel-seg-v0": {"start_confidence": 2.0}}
    assert set(bad) == set(registered())
    for name, options in bad.items():
        (key,) = options
        with pytest.raises(ConfigError, match=rf"^{name}: env\.{key} must be "):
            jaxmed.make(name, labels, **options)
