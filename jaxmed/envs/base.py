"""The environment protocol shared by every jaxmed environment (in the spirit of gymnax 1.0).

An environment object holds only *static* configuration (it fixes array shapes and is hashable);
everything that changes lives in explicit arguments:

* ``params``: numeric parameters, a flax.struct dataclass whose fields are pytree leaves (so a sweep
  can ``vmap`` over them); ``None`` means :attr:`Environment.default_params`.
* ``bank``: the data (for the image environments a :class:`jaxmed.data.bank.VolumeBank`), passed as
  an argument, never closed over (closing over it would inline it as a constant and recompile per
  data set).
* ``state``: a flax.struct dataclass of small per-environment arrays.

Public API (pure, jit-/vmap-/scan-friendly)::

    obs, state = env.reset(key, params, bank)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params, bank)

``step`` auto-resets: when ``terminated | truncated`` the returned ``state`` is a fresh reset state
(drawn from the step key) and ``obs`` is its first observation. The observation is rendered *once*,
from the selected state; ``info["final_state"]`` holds the state the episode ended in, so a learner
can re-render the final observation (``env.get_obs(info["final_state"], params, bank)``) and
bootstrap from it. ``terminated`` (the task ended: no bootstrapping) and ``truncated`` (time limit:
bootstrap) are kept apart.

Training and evaluation of any env go through the task protocol: :attr:`n_agents`,
:attr:`required_labels` (bank landmarks it reads), :attr:`metric_labels`, :meth:`eval_params`,
:meth:`eval_states` (fixed evaluation starts) and :meth:`eval_metrics` (per-agent errors of a final
state); ``step_env``'s ``info["final_<metric>"]`` holds a metric where the episode ended (NaN
elsewhere), which learners log.

Subclasses implement :meth:`reset_env` (``-> state``), :meth:`step_env` (``-> (state, reward,
terminated, truncated, info)``, no observation, no reset), :meth:`get_obs`, :attr:`default_params`,
:meth:`observation_space`, :meth:`action_space`; optionally the host-side checks :meth:`check_bank`
and :meth:`check_action`, which :meth:`reset` / :meth:`step` call before tracing, so bad input fails
with a clear :class:`jaxmed.errors.JaxmedError` before any compilation; and :meth:`obs_state` /
:meth:`render` (``render(obs_state(s), bank) == get_obs(s, params, bank)``) so that a replay buffer
can store a few bytes of state instead of pixels.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Obs = jax.Array
Info = dict[str, Any]


def is_concrete(x) -> bool:
    """Whether ``x`` has concrete values on the host (not a tracer inside jit / vmap / scan)."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


# ------------------------------------------------------------------ spaces


@dataclasses.dataclass(frozen=True)
class Discrete:
    """``shape`` independent integer choices in ``0 .. n-1`` (e.g. one action per agent)."""

    n: int
    shape: tuple[int, ...] = ()
    dtype: Any = jnp.int32

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.randint(key, self.shape, 0, self.n, dtype=self.dtype)

    def contains(self, x) -> jax.Array:
        """``()`` bool: right shape, integer and every entry in range."""
        x = jnp.asarray(x)
        if x.shape != tuple(self.shape) or not jnp.issubdtype(x.dtype, jnp.integer):
            return jnp.asarray(False)
        return jnp.all((x >= 0) & (x < self.n))


@dataclasses.dataclass(frozen=True)
class Box:
    """An array of ``shape`` and ``dtype`` with every entry in ``[low, high]`` (scalars, may be inf)."""

    low: float
    high: float
    shape: tuple[int, ...]
    dtype: Any = jnp.float32

    def sample(self, key: jax.Array) -> jax.Array:
        """Uniform in ``[low, high]``; infinite bounds are replaced by ``[-1, 1]``-style unit ranges."""
        lo = self.low if np.isfinite(self.low) else (self.high - 1.0 if np.isfinite(self.high) else -1.0)
        hi = self.high if np.isfinite(self.high) else lo + 2.0
        if jnp.issubdtype(self.dtype, jnp.integer):
            return jax.random.randint(key, self.shape, int(lo), int(hi) + 1).astype(self.dtype)
        return jax.random.uniform(key, self.shape, jnp.float32, lo, hi).astype(self.dtype)

    def contains(self, x) -> jax.Array:
        x = jnp.asarray(x)
        if x.shape != tuple(self.shape):
            return jnp.asarray(False)
        xf = x.astype(jnp.float32)
        return jnp.all((xf >= self.low) & (xf <= self.high))


def image_box(shape: tuple[int, ...], bank=None) -> Box:
    """The observation space of images rendered from a volume bank: ``shape``, the bank's storage
    dtype (``uint8`` entries in ``[0, 255]``, floats unbounded); float32 without a bank."""
    dtype = bank.levels[0].dtype if bank is not None else jnp.float32
    low, high = (0.0, 255.0) if dtype == jnp.uint8 else (-np.inf, np.inf)
    return Box(low, high, tuple(shape), dtype)


# ------------------------------------------------------------------ host-side checks shared by the envs


def check_volume_bank(env, bank, levels, crop_size: int | None = None) -> None:
    """Raise :class:`ConfigError` unless ``bank`` is a VolumeBank with pyramid ``levels`` and, when
    ``crop_size`` is given, a margin wide enough for crops of that edge (static attributes only)."""
    from jaxmed.errors import ConfigError

    if bank is None or not hasattr(bank, "levels") or not hasattr(bank, "margin"):
        raise ConfigError(f"{env.name}: needs a VolumeBank (jaxmed.data.bank.build_bank), got {type(bank).__name__}")
    if crop_size is not None and crop_size > bank.max_crop:
        raise ConfigError(
            f"{env.name}: crop_size {crop_size} is larger than the volume bank allows (max_crop {bank.max_crop}, "
            f"margin {bank.margin} voxels); rebuild the bank with build_bank(..., max_crop={crop_size}) or use a smaller crop"
        )
    if max(levels) >= bank.n_levels:
        raise ConfigError(
            f"{env.name}: levels {tuple(levels)} need {max(levels) + 1} pyramid levels but the volume bank has "
            f"{bank.n_levels} (factors {bank.factors}); rebuild it with more factors or use fewer levels"
        )


def check_discrete_action(env, action, n_actions: int, meaning: str):
    """Raise :class:`ConfigError` unless ``action`` is ``(A,)`` integers in ``0..n_actions-1`` (a scalar
    for one agent); ``meaning`` names the actions in the message. Shape and dtype are checked always,
    values only when concrete. Returns the action (a host list / NumPy array as one jax array)."""
    from jaxmed.errors import ConfigError

    n_agents = env.n_agents
    shape = tuple(getattr(action, "shape", np.shape(action)))
    if shape not in [(n_agents,)] + ([()] if n_agents == 1 else []):
        raise ConfigError(f"{env.name}: expected {n_agents} action(s), an int array of shape ({n_agents},), got shape {shape}")
    dtype = getattr(action, "dtype", None)
    if dtype is None:
        dtype = np.asarray(action).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ConfigError(f"{env.name}: actions must be integers in 0..{n_actions - 1}, got dtype {dtype}")
    if is_concrete(action):
        a = np.asarray(action)
        if a.size and (a.min() < 0 or a.max() >= n_actions):
            raise ConfigError(f"{env.name}: actions must lie in 0..{n_actions - 1} ({meaning}), got {a.tolist()}")
        if not isinstance(action, jax.Array):
            action = jnp.asarray(a, jnp.int32)  # a list / NumPy array: one array argument for jit
    return action


def check_labels_present(wanted: Sequence[str], labels: Sequence[str], what: str) -> None:
    """Raise :class:`jaxmed.errors.LandmarkError` ``"<what> 'A', 'B'; available: <labels>"`` naming the
    entries of ``wanted`` (landmark labels an env reads) that are not among ``labels`` (a bank's
    landmark labels); ``what`` says who needs them (``"landmark: unknown target landmark(s)"``)."""
    from jaxmed.errors import LandmarkError

    missing = [w for w in wanted if w not in tuple(labels)]
    if missing:
        raise LandmarkError(f"{what} {', '.join(map(repr, missing))}; available: {', '.join(labels)}")


# ------------------------------------------------------------------ config checks shared by the envs


def check_levels(config, what: str) -> tuple[int, ...]:
    """Store ``config.levels`` (one pyramid level or several) on the frozen ``config`` as a tuple of
    ints and return it; :class:`ConfigError` naming ``what`` unless it is non-empty, non-negative and
    strictly increasing (finest level first)."""
    from jaxmed.errors import ConfigError

    levels = (int(config.levels),) if np.ndim(config.levels) == 0 else tuple(int(v) for v in config.levels)
    object.__setattr__(config, "levels", levels)
    if not levels or levels[0] < 0 or any(b <= a for a, b in zip(levels, levels[1:])):
        raise ConfigError(f"{what}: levels must be non-negative and strictly increasing (finest first), got {levels}")
    return levels


# ------------------------------------------------------------------ step pieces shared by the envs (traced)


def oscillation(same, since_switch, osc_window: int, osc_repeats, live, level_step_limit=0):
    """The oscillation test of a coarse-to-fine step.

    ``same`` ``(..., H)`` bool: whether each entry of the ring of recent positions (newest first, the
    new position included) counts as the new position; only the ``min(osc_window, since + 1)`` newest
    entries are looked at, ``since = since_switch + 1`` the steps since the reset or the last level
    switch. Returns ``(oscillated, since)``: ``live`` agents whose new position stands at least
    ``osc_repeats`` times among those entries (``(...)`` bool), and ``since`` (``(...)`` int32).

    ``level_step_limit > 0``: an agent that has made that many moves at its level (``since``) counts as
    oscillated too, so a search caught in a cycle too long for the window (period ``> (osc_window - 1)
    // (osc_repeats - 1)``) still moves on to the finer level or ends; ``0`` turns this off."""
    since = since_switch + 1
    window = jnp.minimum(osc_window, since + 1)
    recent = jnp.arange(same.shape[-1]) < jnp.expand_dims(window, -1)
    repeated = jnp.sum(same & recent, axis=-1) >= osc_repeats
    stalled = (level_step_limit > 0) & (since >= level_step_limit)
    return live & (repeated | stalled), since


def episode_end(done, t, max_steps):
    """``(terminated, truncated, ended)`` ``()`` bool after a step: every agent ``done``; the step count
    ``t`` reached ``max_steps`` without that; either."""
    terminated = jnp.all(done)
    truncated = (t >= max_steps) & ~terminated
    return terminated, truncated, terminated | truncated


# ------------------------------------------------------------------ the protocol


class Environment:
    """Abstract jaxmed environment; see the module docstring for the protocol.

    Instances are hashable by :meth:`_static_key` so that the internal ``jax.jit`` (with ``self``
    static) caches one compiled program per distinct configuration.
    """

    # -------------------------------------------------------------- to implement

    @property
    def default_params(self):
        raise NotImplementedError

    def reset_env(self, key: jax.Array, params, bank):
        """A fresh state (no observation rendered)."""
        raise NotImplementedError

    def step_env(self, key: jax.Array, state, action, params, bank):
        """One transition without auto-reset: ``(state, reward, terminated, truncated, info)``."""
        raise NotImplementedError

    def get_obs(self, state, params, bank) -> Obs:
        """Render the observation of ``state``."""
        raise NotImplementedError

    def observation_space(self, params=None, bank=None) -> Box:
        """The space of :meth:`get_obs` ``(A, ...)``: with ``bank`` in its storage dtype (e.g. uint8
        in ``[0, 255]``, :func:`image_box`), float32 without one."""
        raise NotImplementedError

    def action_space(self, params=None) -> Discrete:
        raise NotImplementedError

    # -------------------------------------------------------------- replay without pixels (optional)

    def obs_state(self, state):
        """The part of ``state`` the observation is a function of (what a replay buffer stores);
        default: the whole state. Override with something smaller."""
        return state

    def render(self, obs_state, bank) -> Obs:
        """The observation of an :meth:`obs_state` (default: :meth:`get_obs` with default params)."""
        return self.get_obs(obs_state, self.default_params, bank)

    # -------------------------------------------------------------- task protocol (training / evaluation)

    @property
    def n_agents(self) -> int:
        """``A``, agents acting at once in one environment (actions ``(A,)``, rewards ``(A,)``)."""
        return 1

    @property
    def required_labels(self) -> tuple[str, ...]:
        """The bank landmark labels this env reads (the experiment builds its bank with exactly these)."""
        return ()

    @property
    def max_crop(self) -> int:
        """The largest crop edge (voxels) this env cuts with ``dynamic_slice``: the bank it runs on
        must be padded for it (``build_bank(..., max_crop=env.max_crop)``). Default: the static
        config's ``crop_size`` if it has one, else 1 (an env that only resamples)."""
        return int(getattr(getattr(self, "config", None), "crop_size", 1))

    @property
    def wants_packed_bank(self) -> bool:
        """Whether this env renders faster from a bank with the packed pyramid
        (``build_bank(..., packed=True)``): envs that read several pyramid levels per sample."""
        return False

    @property
    def wants_reference(self) -> bool:
        """Whether bank volume 0 must be the annotated reference (the template) rather than a subject:
        goal-conditioned envs cut their goal observations from it, and never run episodes in it."""
        return False

    @property
    def metric_labels(self) -> tuple[str, ...]:
        """One row name per agent for result tables (e.g. the target landmark, the structure)."""
        return tuple(f"agent{i}" for i in range(self.n_agents))

    def metric_stats(self, states, values, metric: str) -> dict:
        """Result-table rows (:func:`jaxmed.envs.metrics.metric_stats`) of ``values`` ``(E, A)``, ``metric``
        of the episodes started from ``states``: one row per :attr:`metric_labels` entry (default)."""
        from jaxmed.envs.metrics import metric_stats

        return metric_stats(np.asarray(values), self.metric_labels, metric)

    @property
    def landmark_targets(self) -> tuple[str, ...]:
        """For envs whose agents answer landmark positions: the bank landmark each of the ``A`` agents
        hunts (its answer is :meth:`positions_world`); ``()`` otherwise (default). Evaluation uses it
        for the template-prior / registration baselines, the trajectory figure and detection."""
        return ()

    def positions_world(self, state, bank):
        """``(A, 3)`` world RAS mm answered by the agents of one (unbatched) ``state``; only for envs
        with :attr:`landmark_targets`."""
        raise NotImplementedError(f"{self.name} agents do not answer landmark positions")

    def trajectory_of(self, state):
        """What a greedy rollout records after every step to draw the agents' paths (the trajectory
        figure of an evaluation): ``(A, 3)`` level-0 voxel positions of one ``state`` (batched states
        give a leading batch axis); only for envs with :attr:`landmark_targets`."""
        raise NotImplementedError(f"{self.name} agents do not answer landmark positions")

    def eval_params(self, params):
        """The parameters for evaluation: nothing that peeks at the ground truth (default: unchanged)."""
        return params

    def eval_states(self, params, bank, n_starts: int, seed: int = 0):
        """A batch (leading axis ``E``) of deterministic evaluation start states over every bank volume."""
        raise NotImplementedError(f"{self.name} does not define evaluation start states")

    def eval_metrics(self, state, params, bank) -> dict[str, jax.Array]:
        """Per-agent error metrics of a (final) state: ``{name: (A,) float32}``."""
        raise NotImplementedError(f"{self.name} does not define evaluation metrics")

    # -------------------------------------------------------------- host-side checks (optional)

    def check_bank(self, bank) -> None:
        """Raise a :class:`jaxmed.errors.JaxmedError` if ``bank`` cannot serve this env (host side)."""

    def check_action(self, action):
        """Validate ``action`` on the host (values only when concrete); returns it."""
        return action

    # -------------------------------------------------------------- generic API

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def num_actions(self) -> int:
        return int(self.action_space(self.default_params).n)

    def reset(self, key: jax.Array, params=None, bank=None) -> tuple[Obs, Any]:
        """``(obs, state)`` of a new episode drawn from ``key``."""
        params = self.default_params if params is None else params
        self.check_bank(bank)
        return self._reset(key, params, bank)

    def step(self, key: jax.Array, state, action, params=None, bank=None):
        """``(obs, state, reward, terminated, truncated, info)`` with auto-reset (module docstring)."""
        params = self.default_params if params is None else params
        self.check_bank(bank)
        action = self.check_action(action)
        return self._step(key, state, action, params, bank)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _reset(self, key, params, bank):
        state = self.reset_env(key, params, bank)
        return self.get_obs(state, params, bank), state

    @functools.partial(jax.jit, static_argnums=(0,))
    def _step(self, key, state, action, params, bank):
        key_step, key_reset = jax.random.split(key)
        final_state, reward, terminated, truncated, info = self.step_env(key_step, state, action, params, bank)
        reset_state = self.reset_env(key_reset, params, bank)
        done = jnp.logical_or(terminated, truncated)
        state = jax.tree.map(lambda r, s: jnp.where(done, r, s), reset_state, final_state)
        obs = self.get_obs(state, params, bank)
        info = dict(info)
        info["final_state"] = final_state
        return obs, state, reward, terminated, truncated, info

    # -------------------------------------------------------------- hashing for jit(static self)

    def _static_key(self) -> tuple:
        return (id(self),)

    def __hash__(self) -> int:
        return hash((type(self), self._static_key()))

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self._static_key() == other._static_key()

    def __repr__(self) -> str:
        return f"{self.name}()"


class ConfiguredEnv(Environment):
    """An :class:`Environment` described by a frozen static config and a params dataclass: the
    constructor, ``name``, ``default_params``, the bank-label checks, hashing and ``repr`` every task
    env shares.

    A subclass declares what it is made of as class keywords::

        class RegistrationEnv(ConfiguredEnv, config=RegistrationConfig, params=RegistrationParams,
                              name="registration", label_field="landmarks", label_role="TRE"):

    which set the class attributes ``config_class`` (the static config dataclass; its instance is
    ``self.config``), ``params_class`` (the default :attr:`default_params`), ``default_name``,
    ``label_field`` and ``label_role``; a keyword left out is inherited. An env that reads the bank
    landmarks named by one config field (a sequence of labels) names that field ``label_field``:
    :attr:`required_labels` is then its labels, each once, and :meth:`check_labels` raises
    ``"<name>: unknown <label_role> landmark(s) ..."`` for those missing from a bank. An env that
    reads landmarks otherwise overrides both. One that needs more state calls
    ``super().__init__(config, labels, name)`` first. Two instances are equal (one compiled program)
    when their type, config and bank labels are.
    """

    config_class: type = type(None)
    params_class: type = type(None)
    #: the :attr:`name` of an instance constructed without one
    default_name: str = ""
    #: the config field holding the bank landmark labels this env reads (``""``: none, or see the subclass)
    label_field: str = ""
    #: what the labels of ``label_field`` are to the env, in the message naming missing ones (``"target"``)
    label_role: str = ""

    def __init_subclass__(cls, *, config: type | None = None, params: type | None = None, name: str | None = None,
                          label_field: str | None = None, label_role: str | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        declared = {"config_class": config, "params_class": params, "default_name": name,
                    "label_field": label_field, "label_role": label_role}
        for attr, value in declared.items():
            if value is not None:
                setattr(cls, attr, value)
        if bool(cls.label_field) != bool(cls.label_role):
            raise TypeError(f"{cls.__name__}: label_field and label_role go together")

    def __init__(self, config=None, labels: Sequence[str] | None = None, name: str | None = None):
        """Args:
          config: a ``config_class`` instance (``None``: its defaults; another type is a :class:`ConfigError`).
          labels: the landmark labels of the bank(s) the env will run on (``bank.labels``), kept as
            ``self.labels`` (a tuple, or ``None``) and checked now by :meth:`check_labels` when given.
          name: the name reported by :attr:`name` (``None``: ``default_name``; the registry passes its own).
        """
        from jaxmed.errors import ConfigError

        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise ConfigError(f"{type(self).__name__}: config must be a {self.config_class.__name__}, got {type(config).__name__}")
        self.labels = tuple(labels) if labels is not None else None
        self._name = self.default_name if name is None else name
        if self.labels is not None:
            self.check_labels(self.labels)

    def check_labels(self, labels: Sequence[str]) -> None:
        """Raise :class:`jaxmed.errors.LandmarkError` unless the bank landmarks this env reads by name
        are among ``labels`` (a bank's landmark labels): those of ``config.<label_field>`` (none
        without a ``label_field``)."""
        if self.label_field:
            wanted = getattr(self.config, self.label_field)
            check_labels_present(wanted, labels, f"{self.name}: unknown {self.label_role} landmark(s)")

    @property
    def required_labels(self) -> tuple[str, ...]:
        """The labels of ``config.<label_field>``, each once (``()`` without a ``label_field``)."""
        return tuple(dict.fromkeys(getattr(self.config, self.label_field))) if self.label_field else ()

    @property
    def name(self) -> str:
        return self._name

    @property
    def default_params(self):
        return self.params_class()

    def _static_key(self) -> tuple:
        return (self.config, self.labels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, config={self.config})"
