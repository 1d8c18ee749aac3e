"""Threshold segmentation agent (Sahba et al. 2006): move a threshold window and a structuring element.

Sahba, Tizhoosh & Salama, "A reinforcement learning framework for medical image segmentation",
IJCNN 2006: a Q-learning agent adjusts local thresholds and the size of a morphological
post-processing element, rewarded by the quality of the resulting segmentation. Here, in 3D, on
a crop around one structure (a :class:`jaxmed.data.structures.SegBank` example):

* mask ``M = opening(low <= I <= high, r)``: the threshold window on the normalised intensities
  ``I`` of the ``D``³ crop, then a morphological opening by the cube of edge ``2 r + 1``
  (:func:`jaxmed.ops.masks.opening`; ``r = 0`` leaves the thresholded mask). The mask is a function
  of ``(volume, low, high, r)``, so the state stores no mask.
* actions ``(1,)`` int32 (a scalar is accepted), ``δ`` = ``params.window_step`` (normalised
  intensity): ``0/1`` low ``+/- δ``; ``2/3`` high ``+/- δ``; ``4/5`` the whole window ``+/- δ``;
  ``6/7`` ``r`` ``+/- 1`` (clipped to ``0..config.max_radius``); ``8`` stop (terminates).
  ``low`` and ``high`` stay in ``[0, params.window_max]`` with ``low <= high``.
* reward ``(1,)`` float32: ``reward_scale * (Dice_new - Dice_old)`` (``config.reward == "delta"``) or
  its sign (``"sign"``); the stop action 0 (the return of an episode is then ``reward_scale`` times
  the Dice gained).
* ``terminated`` = stop; ``truncated`` = ``t >= max_steps`` and not terminated; auto-reset (base).
* observation ``(1, 2, D, D, D)`` in the bank's storage dtype: channel 0 the image crop as stored,
  channel 1 the current mask (255 / 1.0 inside for uint8 / float banks).
* ``info``: ``dice`` ``(1,)``, ``final_dice`` (NaN unless the episode ended), all pre-reset.

Evaluation (:meth:`ThresholdSegEnv.eval_states`): per example the middle window ``[0.25, 0.75]
window_max`` with ``r = 0``, then ``n_starts - 1`` starts drawn once (seeded) from the training
distribution. :meth:`ThresholdSegEnv.eval_metrics`: ``dice`` ``(1,)``; :meth:`mask` gives the mask of
any state for host-side metrics (95 % Hausdorff, :mod:`jaxmed.ops.masks`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmed.config import bounded, check_fields
from jaxmed.envs.base import Box, ConfiguredEnv, Discrete, check_discrete_action, episode_end
from jaxmed.errors import ConfigError
from jaxmed.ops.masks import dice, opening, window_mask

ACTION_NAMES = ("low+", "low-", "high+", "high-", "up", "down", "radius+", "radius-", "stop")
N_ACTIONS = len(ACTION_NAMES)
REWARDS = ("delta", "sign")


@dataclasses.dataclass(frozen=True)
class ThresholdSegConfig:
    """Static configuration.

    Attributes:
      structure: the structure the bank's labels are (the name of :attr:`SegBank.structure`).
      crop_size: ``D``, the crop edge in voxels (the bank's crops must have it).
      max_radius: largest structuring-element radius (voxels).
      reward: ``"delta"`` (scaled Dice change) or ``"sign"``.
    """

    structure: str = "organ"
    crop_size: int = bounded(24, 3)
    max_radius: int = bounded(3, 0)
    reward: str = "delta"

    def __post_init__(self):
        check_fields(self)
        if not self.structure:
            raise ConfigError(f"ThresholdSegConfig: structure must be a non-empty name, got {self.structure!r}")
        if self.reward not in REWARDS:
            raise ConfigError(f"ThresholdSegConfig: reward must be one of {REWARDS}, got {self.reward!r}")


@struct.dataclass
class ThresholdSegParams:
    """Numeric parameters (pytree leaves).

    Attributes:
      max_steps: episode length limit (truncation).
      window_step: ``δ``, normalised intensity per window move.
      window_max: upper bound of the window (normalised intensity; the uint8 banks store up to 1.2).
      reward_scale: factor of the Dice change.
      start_low_max: training starts draw ``low`` uniform in ``[0, start_low_max]``.
      start_width_lo, start_width_hi: and the width ``high - low`` uniform in this range.
    """

    max_steps: int = bounded(30, 1)
    window_step: float = bounded(0.05, 0.0, low_open=True)
    window_max: float = bounded(1.2, 0.0, low_open=True)
    reward_scale: float = bounded(10.0, 0.0, low_open=True)
    start_low_max: float = bounded(0.7, 0.0)
    start_width_lo: float = bounded(0.2, 0.0)
    start_width_hi: float = bounded(0.8, 0.0)


@struct.dataclass
class ThresholdSegState:
    """Per-environment state (about 30 bytes; no mask).

    Attributes:
      volume: ``()`` int32, bank example.  window: ``(2,)`` float32 ``(low, high)``, normalised intensity.
      radius: ``()`` int32, structuring-element radius.  t: ``()`` int32.  done: ``(1,)`` bool.
      dice: ``(1,)`` float32, Dice of the current mask.
    """

    volume: jax.Array
    window: jax.Array
    radius: jax.Array
    t: jax.Array
    done: jax.Array
    dice: jax.Array


@struct.dataclass
class ThresholdSegObsState:
    """What the observation is rendered from: ``volume`` ``()``, ``window`` ``(2,)``, ``radius`` ``()``."""

    volume: jax.Array
    window: jax.Array
    radius: jax.Array


def check_seg_bank(env, bank, crop_size: int) -> None:
    """:class:`ConfigError` unless ``bank`` is a :class:`jaxmed.data.structures.SegBank` of ``crop_size``³ crops."""
    if bank is None or not hasattr(bank, "labels_mask") or not hasattr(bank, "images"):
        raise ConfigError(f"{env.name}: needs a SegBank (jaxmed.data.structures.build_seg_bank), got {type(bank).__name__}")
    if tuple(bank.images.shape[1:]) != (crop_size,) * 3:
        raise ConfigError(f"{env.name}: crop_size {crop_size} but the bank's crops are {tuple(bank.images.shape[1:])}")


def seg_box(shape: tuple[int, ...], bank=None) -> Box:
    """The observation space of images rendered from a SegBank: ``shape``, the bank's storage dtype
    (``uint8`` entries in ``[0, 255]``, floats in ``[0, inf)``); uint8 without a bank."""
    dtype = bank.images.dtype if bank is not None else jnp.uint8
    high = 255.0 if dtype == jnp.uint8 else np.inf
    return Box(0.0, high, tuple(shape), dtype)


class SegCropEnv(ConfiguredEnv):
    """What the segmentation envs on a :class:`SegBank` of ``config.crop_size``³ crops share."""

    @property
    def wants_label_bank(self) -> bool:
        """The experiment builds a :class:`SegBank` (image + label crops) for this env."""
        return True

    def check_bank(self, bank) -> None:
        check_seg_bank(self, bank, self.config.crop_size)


class ThresholdSegEnv(SegCropEnv, config=ThresholdSegConfig, params=ThresholdSegParams, name="threshold-seg"):
    """Single-agent threshold-window segmentation (module docstring)."""

    # -------------------------------------------------------------- descriptions

    @property
    def metric_labels(self) -> tuple[str, ...]:
        return (self.config.structure,)

    def observation_space(self, params=None, bank=None) -> Box:
        d = self.config.crop_size
        return seg_box((1, 2, d, d, d), bank)

    def action_space(self, params=None) -> Discrete:
        return Discrete(N_ACTIONS, (1,))

    def check_action(self, action):
        return check_discrete_action(self, action, N_ACTIONS, ", ".join(ACTION_NAMES))

    # -------------------------------------------------------------- masks

    def mask_of(self, bank, volume, window, radius) -> jax.Array:
        """``(D, D, D)`` bool: ``opening(window_mask(I, low, high), radius)``."""
        return opening(window_mask(bank.intensity(volume), window[0], window[1]), radius)

    def mask(self, state: ThresholdSegState, bank) -> jax.Array:
        """The current mask ``(D, D, D)`` bool of ``state`` (batched states: vmap it)."""
        return self.mask_of(bank, state.volume, state.window, state.radius)

    def _dice(self, bank, volume, window, radius) -> jax.Array:
        return dice(self.mask_of(bank, volume, window, radius), bank.labels_mask[volume])[None]

    # -------------------------------------------------------------- reset

    def _initial_state(self, bank, volume, window, radius, params) -> ThresholdSegState:
        volume = jnp.asarray(volume, jnp.int32)
        window = self._clip_window(jnp.asarray(window, jnp.float32), params)
        radius = jnp.clip(jnp.asarray(radius, jnp.int32), 0, self.config.max_radius)
        return ThresholdSegState(volume=volume, window=window, radius=radius, t=jnp.zeros((), jnp.int32),
                                 done=jnp.zeros((1,), bool), dice=self._dice(bank, volume, window, radius))

    def _clip_window(self, window, params):
        low = jnp.clip(window[0], 0.0, params.window_max)
        high = jnp.clip(window[1], low, params.window_max)
        return jnp.stack([low, high])

    def _start(self, u, params) -> tuple[jax.Array, jax.Array]:
        """A training start ``(window (2,), radius ())`` from 3 uniforms in [0, 1)."""
        low = u[0] * params.start_low_max
        width = params.start_width_lo + u[1] * (params.start_width_hi - params.start_width_lo)
        radius = jnp.floor(u[2] * (self.config.max_radius + 1)).astype(jnp.int32)
        return jnp.stack([low, low + width]), radius

    def reset_env(self, key, params: ThresholdSegParams, bank) -> ThresholdSegState:
        n = bank.images.shape[0]
        u = jax.random.uniform(key, (4,))
        volume = jnp.minimum(jnp.floor(u[0] * n).astype(jnp.int32), n - 1)
        window, radius = self._start(u[1:], params)
        return self._initial_state(bank, volume, window, radius, params)

    def states_at(self, bank, volumes, windows, radii, params=None) -> ThresholdSegState:
        """Deterministic start states, batched: ``volumes`` ``(E,)``, ``windows`` ``(E, 2)``, ``radii`` ``(E,)``."""
        params = self.default_params if params is None else params
        self.check_bank(bank)
        return self._batch_states(bank, jnp.asarray(volumes, jnp.int32), jnp.asarray(windows, jnp.float32),
                                  jnp.asarray(radii, jnp.int32), params)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _batch_states(self, bank, volumes, windows, radii, params):
        return jax.vmap(self._initial_state, in_axes=(None, 0, 0, 0, None))(bank, volumes, windows, radii, params)

    def eval_states(self, params, bank, n_starts: int, seed: int = 0) -> ThresholdSegState:
        """``E = n_volumes * n_starts``: per example the middle window with ``r = 0``, then seeded draws."""
        params = self.default_params if params is None else params
        self.check_bank(bank)
        if n_starts < 1:
            raise ConfigError(f"{self.name}: n_starts must be >= 1, got {n_starts}")
        rng = np.random.default_rng(seed)
        wmax = float(params.window_max)
        vols, windows, radii = [], [], []
        for v in range(bank.n_volumes):
            u = rng.uniform(size=(n_starts, 3)).astype(np.float32)
            w, r = jax.vmap(lambda ui: self._start(ui, params))(jnp.asarray(u))
            w, r = np.array(w), np.array(r)
            w[0], r[0] = (0.25 * wmax, 0.75 * wmax), 0
            vols.append(np.full(n_starts, v, np.int32))
            windows.append(w)
            radii.append(r)
        return self.states_at(bank, np.concatenate(vols), np.concatenate(windows), np.concatenate(radii), params)

    # -------------------------------------------------------------- step

    def step_env(self, key, state: ThresholdSegState, action, params: ThresholdSegParams, bank):
        del key  # deterministic dynamics
        a = jnp.reshape(jnp.asarray(action, jnp.int32), (1,))[0]
        live = ~state.done[0]
        d = params.window_step
        dlow = jnp.select([a == 0, a == 1, a == 4, a == 5], [d, -d, d, -d], 0.0)
        dhigh = jnp.select([a == 2, a == 3, a == 4, a == 5], [d, -d, d, -d], 0.0)
        window = self._clip_window(state.window + jnp.stack([dlow, dhigh]), params)
        radius = jnp.clip(state.radius + jnp.where(a == 6, 1, 0) - jnp.where(a == 7, 1, 0), 0, self.config.max_radius)
        stop = live & (a == N_ACTIONS - 1)
        move = live & ~stop
        window = jnp.where(move, window, state.window)
        radius = jnp.where(move, radius, state.radius)
        new_dice = self._dice(bank, state.volume, window, radius)
        diff = new_dice - state.dice
        reward = params.reward_scale * diff if self.config.reward == "delta" else jnp.sign(diff)
        reward = jnp.where(move, reward, 0.0).astype(jnp.float32)
        new_state = ThresholdSegState(volume=state.volume, window=window, radius=radius, t=state.t + 1,
                                      done=state.done | stop, dice=new_dice)
        terminated, truncated, ended = episode_end(new_state.done, new_state.t, params.max_steps)
        info = {"dice": new_dice, "final_dice": jnp.where(ended, new_dice, jnp.nan), "stopped": stop[None]}
        return new_state, reward, terminated, truncated, info

    # -------------------------------------------------------------- metrics

    def eval_metrics(self, state: ThresholdSegState, params, bank) -> dict[str, jax.Array]:
        """``{"dice": (1,)}`` of the current mask."""
        return {"dice": self._dice(bank, state.volume, state.window, state.radius)}

    # -------------------------------------------------------------- observation

    def obs_state(self, state: ThresholdSegState) -> ThresholdSegObsState:
        return ThresholdSegObsState(volume=state.volume.astype(jnp.int32), window=state.window, radius=state.radius)

    def render(self, obs_state: ThresholdSegObsState, bank) -> jax.Array:
        image = bank.images[obs_state.volume]
        mask = self.mask_of(bank, obs_state.volume, obs_state.window, obs_state.radius)
        on = 255 if image.dtype == jnp.uint8 else 1
        return jnp.stack([image, (mask * on).astype(image.dtype)])[None]

    def get_obs(self, state: ThresholdSegState, params=None, bank=None) -> jax.Array:
        """``(1, 2, D, D, D)`` storage dtype: the crop and the current mask."""
        return self.render(self.obs_state(state), bank)
