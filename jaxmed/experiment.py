"""Experiment configuration and set-up: data -> volume banks -> environment -> network -> learner.

An experiment YAML has these sections (unknown keys or wrong types are errors, raised before any
data is built): ``data`` (which subjects), ``env`` (``name`` of a registered environment, its
options, ``eval_starts`` / ``eval_max_steps``), ``network`` (the learner's network factory),
``train`` (the outer loop; ``train.learner`` selects the learner) and the learner's own section
(``dqn`` / ``a2c`` / ``ppo`` / ``grpo``, see :mod:`jaxmed.agents.learners`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxmed.config import bounded, build, check_fields
from jaxmed.data import run_data
from jaxmed.data.image_io import check_intensity_scales
from jaxmed.data.sources import DataConfig  # noqa: F401  (the data section; re-exported here)
from jaxmed.data.sources import names as _source_names
from jaxmed.errors import ConfigError

#: Registered data sources (:mod:`jaxmed.data.sources`): synthetic populations from the AFIDs MNI
#: template, a blob phantom (``L0..L3``) or an ellipsoid organ phantom (``organ#i``, box targets);
#: your own scans (``files``); Colin27 (``colin27``); the T2w MNI template (``mni-t2w``).
SOURCES = _source_names()


#: Keys of the ``env:`` section read by the experiment itself; every other key goes to the env.
ENV_KEYS = {"name": "landmark-v0", "eval_starts": 27, "eval_max_steps": None}


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """The outer loop."""

    learner: str = "dqn"  # dqn | a2c | ppo | grpo | voxel_q: the section of that name configures it
    chunks: int = 100  # jitted run_chunk calls
    checkpoint_every: int = 10  # chunks
    seed: int = 0
    seeds: int = 1  # > 1: that many seeds trained at once in one compiled program
    # how that program runs the seeds (and `jaxmed sweep` the trials of a population): vmap (side by
    # side, batched), map (one after the other inside the program, lax.map), auto (map on CPU, where
    # batching the members' networks is slower than running them in turn; vmap on accelerators);
    # jaxmed.agents.core.MEMBER_BATCHING / over_members
    seed_batching: str = "auto"
    devices: int = 1  # data-parallel devices (pmap); 1 = no device axis
    # per-member hyperparameters of a vmapped run: {field: [value per seed]} (a single value applies to
    # every seed); fields from the learner's HPARAM_FIELDS, e.g. {learning_rate: [1e-3, 3e-4]} with seeds: 2
    hparams: dict = dataclasses.field(default_factory=dict)
    # > 0: every this many chunks the training bank is rebuilt from fresh augmented / synthesised
    # subjects (the source's epoch k = chunk // refresh_every), padded to the same shape (no recompile)
    refresh_every: int = 0
    # > 0: the saved network is the mean of the network snapshots taken at every checkpoint from this
    # chunk on (stochastic weight averaging; the snapshots are kept in RUN/snapshots/); 0: the last parameters
    average_from: int = 0

    def __post_init__(self):
        from jaxmed.agents import learners
        from jaxmed.agents.core import MEMBER_BATCHING

        learners.spec(self.learner)
        if self.refresh_every < 0:
            raise ConfigError(f"train.refresh_every must be >= 0 (0: never), got {self.refresh_every}")
        if not 0 <= self.average_from <= self.chunks:
            raise ConfigError(f"train.average_from must be in [0, train.chunks={self.chunks}] (0: no averaging), "
                              f"got {self.average_from}")
        if self.seeds < 1 or self.devices < 1 or self.chunks < 1 or self.checkpoint_every < 1:
            raise ConfigError("train.seeds, train.devices, train.chunks and train.checkpoint_every must be >= 1")
        if self.seed_batching not in MEMBER_BATCHING:
            raise ConfigError(f"train.seed_batching must be one of {', '.join(MEMBER_BATCHING)}, got {self.seed_batching!r}")
        if self.seeds > 1 and self.devices > 1:
            raise ConfigError("train.seeds > 1 (vmapped seeds) and train.devices > 1 (pmap) cannot be combined; choose one")
        if self.hparams:
            fields = learners.module(self.learner).HPARAM_FIELDS
            unknown = sorted(set(self.hparams) - set(fields))
            if unknown:
                raise ConfigError(f"train.hparams: {', '.join(unknown)} not hyperparameter leaves of {self.learner} "
                                  f"(choose from {', '.join(fields)})")
            if self.devices > 1:
                raise ConfigError("train.hparams (per-member hyperparameters) needs vmapped seeds, not train.devices > 1")
            for name, values in self.hparams.items():
                if isinstance(values, (list, tuple)) and len(values) != self.seeds:
                    raise ConfigError(f"train.hparams.{name}: {len(values)} values for train.seeds={self.seeds}; give one per seed")

    def hparam_rows(self) -> list[dict]:
        """``train.seeds`` dicts of hyperparameter overrides, one per vmapped member."""
        from jaxmed.agents.hparams import member_rows

        return member_rows(self.hparams, self.seeds)


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """What ``jaxmed train`` evaluates after training and ``jaxmed evaluate`` by default.

    Attributes:
      extra_sets: labelled sets to evaluate landmark runs on besides the synthetic held-out subjects,
        as ``jaxmed evaluate --data`` takes them (``colin27``, ``mni-t2w``, a folder, a manifest,
        a data YAML); each gives ``eval_<name>.md`` / ``.csv`` with the template-prior and
        registration baselines, and one row of the summary beside the held-out one.
      registration: run the affine registration baseline on those sets.
      intensity_scales: test-time intensity augmentation of landmark detection: every image is also
        run with its normalised intensities multiplied by each of these factors (clipped to the
        image's own maximum) and the end points of all copies are pooled into one answer per
        landmark (:class:`jaxmed.detect.LandmarkDetector`); ``(1.0,)``, the default, runs the image
        as it is. Costs ``len(intensity_scales)`` times the detection work, unless ``split_starts``.
      split_starts: with several ``intensity_scales``, deal an image's starts out among the copies
        (:func:`jaxmed.detect.deal_starts`: every start runs once, on one copy) instead of running
        every start on every copy: the detection work of one copy, the same number of end points.
      level_step_limit: greedy evaluation and detection of a landmark env: an agent that has made
        this many moves at one search level without oscillating moves on to the next finer level (or
        ends at the finest), as if it had oscillated (``level_step_limit`` of
        :class:`jaxmed.envs.LandmarkParams`); ``0`` never; ``None`` (default): the env's own value,
        as in training. A greedy policy caught in a cycle longer than the oscillation window
        otherwise runs to ``eval_max_steps`` at a coarse level.
    """

    extra_sets: tuple[str, ...] = ()
    registration: bool = True
    intensity_scales: tuple[float, ...] = (1.0,)
    split_starts: bool = False
    level_step_limit: int | None = bounded(None, 0)

    def __post_init__(self):
        check_fields(self, "eval")
        check_intensity_scales(self.intensity_scales, "eval.intensity_scales")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A whole run. ``env`` is ``{name: <registered env>, eval_starts, eval_max_steps, ...}`` where
    every other key is an option of that env (:func:`jaxmed.envs.make`, checked against the env's
    config and params dataclasses); ``network`` goes to the learner's network factory (checked as a
    :class:`jaxmed.networks.NetworkConfig`); ``learner_config`` is the config dataclass of the learner
    ``train.learner`` selects (:mod:`jaxmed.agents.learners`), written in YAML as the section named
    after the learner (``dqn:``, ``a2c:``, ``ppo:``, ``grpo:``)."""

    data: DataConfig = DataConfig()
    env: dict = dataclasses.field(default_factory=dict)
    network: dict = dataclasses.field(default_factory=lambda: {"trunk": "patch", "head": "q"})
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    learner_config: Any = None

    @property
    def learner(self):
        """The selected learner's config dataclass."""
        return self.learner_config

    def section(self, name: str):
        """The config of learner ``name`` when it is the selected one, else ``None`` (e.g. ``cfg.section("dqn")``)."""
        return self.learner_config if name == self.train.learner else None

    dqn = property(lambda self: self.section("dqn"))
    a2c = property(lambda self: self.section("a2c"))
    ppo = property(lambda self: self.section("ppo"))
    grpo = property(lambda self: self.section("grpo"))

    @property
    def env_name(self) -> str:
        return self.env.get("name", ENV_KEYS["name"])

    def env_options(self) -> dict:
        """The env section without the experiment's own keys: options for :func:`jaxmed.envs.make`."""
        return {k: v for k, v in self.env.items() if k not in ENV_KEYS}

    @property
    def eval_starts(self) -> int:
        return int(self.env.get("eval_starts", ENV_KEYS["eval_starts"]))

    def to_dict(self) -> dict:
        """Plain YAML-able data (learner sections that are not set are left out)."""
        from jaxmed.config import to_dict

        out = {k: v for k, v in to_dict(self).items() if v is not None}
        if "learner_config" in out:  # YAML names the section after the learner
            out[self.train.learner] = out.pop("learner_config")
        if self.eval == EvalSection():  # the default: left out (configs and run directories stay as they were)
            out.pop("eval", None)
        return out

    @staticmethod
    def from_dict(data: dict[str, Any], where: str = "config") -> "ExperimentConfig":
        from jaxmed.agents import learners
        from jaxmed.agents.her import move_env_keys

        data = move_env_keys(dict(data), where)  # env.her_* of older configs -> dqn.her
        train = build(TrainSection, data.get("train"), f"{where}.train")
        data["eval"] = build(EvalSection, data.get("eval"), f"{where}.eval")
        if "learner_config" in data:
            raise ConfigError(f"{where}: unknown key learner_config; name the section after the learner ({train.learner}: ...)")
        sections = {name: data.pop(name, None) for name in learners.LEARNERS}
        for name, section in sections.items():
            if section is not None or name == train.learner:  # a stray section of another learner is checked too
                built = build(learners.config_class(name), section, f"{where}.{name}")
                if name == train.learner:
                    data["learner_config"] = built
        env = data.get("env") or {}
        if not isinstance(env, dict):
            raise ConfigError(f"{where}.env: expected a mapping, got {env!r}")
        from jaxmed.networks import NetworkConfig

        build(NetworkConfig, data.get("network"), f"{where}.network").check(f"{where}.network")  # names, types, options of trunk and head
        cfg = build(ExperimentConfig, data, where)
        make_env(cfg)  # validates the env options now, before any data is built
        return cfg


def make_bank(cfg: ExperimentConfig, split: str, n: int, *, epoch: int = 0, env=None):
    """``(bank, subjects, seconds)``: ``n`` subjects of ``split`` in the bank ``env`` asks for
    (:func:`jaxmed.data.run_data.make_bank`: its landmarks and crop margin; the template first for a
    goal-conditioned env; image and label crops for a segmentation env). ``env``: the run's built env
    (an :class:`Experiment`'s); ``None``: built from ``cfg``."""
    if env is None:
        env, _, _ = make_env(cfg)
    return run_data.make_bank(cfg.data, env, split, n, epoch=epoch)


@dataclasses.dataclass
class Experiment:
    """A run built once from its config (:func:`build_experiment`): subjects -> bank -> env -> network; handed to
    the training loop, the evaluation and detection instead of each rebuilding its parts.

    Attributes:
      cfg: the :class:`ExperimentConfig`.
      env, env_params, eval_params: :func:`make_env` for the bank's labels.
      network: the selected learner's network (:func:`make_network`).
      bank: the training bank (epoch 0), or ``None`` when built without data (evaluation, detection).
      data_seconds: wall time of building the bank.
    """

    cfg: ExperimentConfig
    env: Any
    env_params: Any
    eval_params: Any
    network: Any
    bank: Any = None
    data_seconds: float = 0.0

    def train_bank(self, epoch: int = 0):
        """The training bank of ``epoch`` (fresh augmented / synthesised subjects for ``epoch > 0``)."""
        if epoch == 0 and self.bank is not None:
            return self.bank
        return self._checked_bank("train", self.cfg.data.n_train, epoch)[0]

    def held_out(self) -> tuple:
        """``(bank, subjects)`` of the ``data.n_test`` held-out test subjects (``subjects``: their
        conformed ``(Volume, Landmarks)`` pairs), checked against the env."""
        return self._checked_bank("test", self.cfg.data.n_test)

    def _checked_bank(self, split: str, n: int, epoch: int = 0) -> tuple:
        """``(bank, subjects)`` of ``split`` made for this experiment's env (:func:`make_bank`) and checked by it."""
        bank, subjects, _ = run_data.make_bank(self.cfg.data, self.env, split, n, epoch=epoch)
        self.env.check_bank(bank)
        return bank, subjects


def build_experiment(cfg: ExperimentConfig, *, with_data: bool = True) -> Experiment:
    """Build the :class:`Experiment` of ``cfg`` once: the training bank (``with_data``) the env asks for,
    the env for that bank's labels (checked against it) and the learner's network for the env."""
    from jaxmed.agents.learners import network_for
    from jaxmed.envs.registry import make_for_run

    name, options, bank, data_s = cfg.env_name, cfg.env_options(), None, 0.0
    if with_data:
        wants, _, _ = make_for_run(name, None, options)  # what the bank must hold
        bank, _, data_s = run_data.make_bank(cfg.data, wants, "train", cfg.data.n_train)
    env, params, eval_params = make_for_run(name, bank.labels if bank is not None else None, options,
                                            eval_max_steps=cfg.env.get("eval_max_steps"),
                                            level_step_limit=cfg.eval.level_step_limit)
    if bank is not None:
        env.check_bank(bank)
    return Experiment(cfg=cfg, env=env, env_params=params, eval_params=eval_params,
                      network=network_for(cfg.train.learner, cfg.network, env), bank=bank, data_seconds=data_s)


def make_env(cfg: ExperimentConfig, labels=None):
    """``(env, params, eval_params)`` from the ``env:`` section for a bank with ``labels``
    (:func:`jaxmed.envs.registry.make_for_run`): ``eval_params`` are the env's :meth:`eval_params` with
    ``max_steps = env.eval_max_steps`` and ``level_step_limit = eval.level_step_limit`` when given."""
    from jaxmed.envs.registry import make_for_run

    return make_for_run(cfg.env_name, labels, cfg.env_options(), eval_max_steps=cfg.env.get("eval_max_steps"),
                        level_step_limit=cfg.eval.level_step_limit)


def make_network(cfg: ExperimentConfig, env):
    """The selected learner's network for ``env`` (:func:`jaxmed.agents.learners.network_for`)."""
    from jaxmed.agents.learners import network_for

    return network_for(cfg.train.learner, cfg.network, env)


def dummy_observation(cfg: ExperimentConfig, env):
    """A zero observation batch ``(1, A, ...)`` in the bank's storage dtype (for shape inference)."""
    import jax.numpy as jnp

    from jaxmed.data.bank import STORAGE_DTYPES

    shape = env.observation_space(env.default_params).shape
    return jnp.zeros((1,) + tuple(shape), STORAGE_DTYPES[cfg.data.dtype])
