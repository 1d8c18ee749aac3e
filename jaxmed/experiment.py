"""Experiment configuration and set-up: data -> volume banks -> environment -> network -> learner.

An experiment YAML has five sections, each a frozen dataclass here (unknown keys or wrong types
are errors): ``data`` (which subjects), ``env`` (the landmark environment), ``network`` (passed to
:func:`jaxmed.networks.network_from_config`), ``dqn`` (:class:`jaxmed.agents.dqn.DQNConfig`) and
``train`` (the outer loop).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import numpy as np

from jaxmed.agents.dqn import DQNConfig
from jaxmed.config import build
from jaxmed.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Subjects: synthetic populations made from a template (``source``: ``afids`` or ``phantom``).

    Train and test subjects come from disjoint seed ranges (:func:`jaxmed.data.synth.split_seeds`),
    so test subjects differ from every training subject in position, orientation, voxel size and
    intensity. Every subject is conformed to RAS at ``spacing`` mm before it enters the bank.
    """

    source: str = "afids"
    spacing: float = 2.0
    n_train: int = 16
    n_test: int = 8
    seed: int = 0
    dtype: str = "uint8"
    factors: tuple[int, ...] = (1,)
    phantom_shape: tuple[int, ...] = (32, 32, 32)  # only for source: phantom (voxels at `spacing`)

    def __post_init__(self):
        if self.source not in ("afids", "phantom"):
            raise ConfigError(f"data.source must be 'afids' or 'phantom', got {self.source!r}")
        if self.n_train < 1 or self.n_test < 1:
            raise ConfigError("data.n_train and data.n_test must be >= 1")


@dataclasses.dataclass(frozen=True)
class EnvSection:
    """The landmark environment (:mod:`jaxmed.envs.landmark`): static shape fields and numeric params."""

    targets: tuple[str, ...] = ("AC",)
    crop_size: int = 45
    frames: int = 4
    levels: tuple[int, ...] = (0,)
    osc_window: int = 8
    max_steps: int = 200
    reward_clip: float = 1.0
    terminate_at_target_mm: float = 1.0
    start_radius_mm: float = 0.0
    osc_repeats: int = 3
    eval_max_steps: int = 200
    eval_starts: int = 27  # 27: the 3x3x3 grid at 25/50/75 % of each test volume's extent


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """The outer loop."""

    chunks: int = 100  # jitted chunks of dqn.chunk_steps vector steps each
    checkpoint_every: int = 10  # chunks
    seed: int = 0
    devices: int = 1  # data-parallel devices (pmap); 1 = no device axis


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = DataConfig()
    env: EnvSection = EnvSection()
    network: dict = dataclasses.field(default_factory=lambda: {"trunk": "patch", "head": "q"})
    dqn: DQNConfig = DQNConfig()
    train: TrainSection = TrainSection()

    @staticmethod
    def from_dict(data: dict[str, Any], where: str = "config") -> "ExperimentConfig":
        return build(ExperimentConfig, data, where)


@functools.lru_cache(maxsize=4)
def template(cfg: DataConfig):
    """``(Volume, Landmarks)`` the subjects are made from; loaded once per process and data config
    (training, evaluation and the template-prior baseline all use it). Callers must not mutate it."""
    from jaxmed.data import afids, blob_phantom

    if cfg.source == "afids":
        return afids.load()
    return blob_phantom(shape=tuple(cfg.phantom_shape), spacing=cfg.spacing, n_landmarks=4, seed=cfg.seed)


def make_subjects(cfg: DataConfig, split: str, n: int, labels) -> list:
    """``n`` conformed ``(Volume, Landmarks)`` pairs of ``split`` (train / val / test)."""
    from jaxmed.data import conform, make_population

    volume, landmarks = template(cfg)
    missing = [l for l in labels if l not in landmarks.labels]
    if missing:
        raise ConfigError(f"env.targets {missing} are not landmarks of the {cfg.source} template; available: {', '.join(landmarks.labels)}")
    subjects = make_population(volume, landmarks.select(labels), n, split=split, base_seed=cfg.seed)
    return [(conform(s.volume, cfg.spacing), s.landmarks) for s in subjects]


def make_bank(cfg: ExperimentConfig, split: str, n: int):
    from jaxmed.data import build_bank

    labels = tuple(dict.fromkeys(cfg.env.targets))
    t0 = time.perf_counter()
    subjects = make_subjects(cfg.data, split, n, labels)
    bank = build_bank(subjects, labels, factors=cfg.data.factors, max_crop=cfg.env.crop_size, dtype=cfg.data.dtype)
    return bank, subjects, time.perf_counter() - t0


def make_env(cfg: ExperimentConfig, labels):
    from jaxmed.envs.landmark import EnvParams, LandmarkEnv, LandmarkEnvConfig

    e = cfg.env
    env = LandmarkEnv(LandmarkEnvConfig(targets=e.targets, crop_size=e.crop_size, frames=e.frames, levels=e.levels, osc_window=e.osc_window), labels=labels)
    params = EnvParams(max_steps=e.max_steps, reward_clip=e.reward_clip, terminate_at_target_mm=e.terminate_at_target_mm,
                       start_radius_mm=e.start_radius_mm, osc_repeats=e.osc_repeats)
    eval_params = params.replace(max_steps=e.eval_max_steps, terminate_at_target_mm=0.0)
    return env, params, eval_params


def make_network(cfg: ExperimentConfig, n_agents: int):
    from jaxmed.networks import network_from_config

    net_cfg = dict(cfg.network)
    net_cfg.setdefault("crop_size", cfg.env.crop_size)
    if n_agents > 1 and "n_agents" not in net_cfg:
        net_cfg["n_agents"] = n_agents
    return network_from_config(net_cfg)


def eval_starts(env, bank, n_starts: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed evaluation start points: ``(volumes (E,), starts (E, A, 3))`` level-0 voxels.

    ``n_starts == 27``: every agent starts from each point of the 3x3x3 grid at 25/50/75 % of the
    volume's extent; otherwise ``n_starts`` points drawn once (seeded) in the central 80 %.
    """
    vols, starts = [], []
    rng = np.random.default_rng(seed)
    for v in range(bank.n_volumes):
        if n_starts == 27:
            pts = np.asarray(env.eval_start_points(bank, v))
        else:
            ext = np.asarray(bank.shapes[0, v])
            pts = np.rint(rng.uniform(0.1, 0.9, size=(n_starts, 3)) * (ext - 1)).astype(np.int32)
        vols.append(np.full(len(pts), v, np.int32))
        starts.append(np.repeat(pts[:, None, :], env.n_agents, axis=1))
    return np.concatenate(vols), np.concatenate(starts).astype(np.int32)
