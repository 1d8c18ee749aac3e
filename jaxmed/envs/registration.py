"""Rigid 3D registration as a sequence of discrete moves, pure and jitted.

An agent aligns a *moving* image to a *fixed* image by changing a rigid transform one small step at a
time, seeing both images on the same grid, and is rewarded for every millimetre the target
registration error (TRE) over a set of landmarks decreases. This is the formulation of

* Liao et al., "An artificial agent for robust image registration", AAAI 2017 (12 actions: ±1 mm /
  ±1° per rigid parameter; reward = decrease of the distance to the ground-truth transform;
  hierarchical coarse-to-fine registration), with the TRE of the issue as the distance;
* its multimodal follow-ups (Sun et al., ACCV 2018; Hu et al., MedIA 2021), whose test-time
  look-ahead lives in :mod:`jaxmed.agents.lookahead`.

Pairs
-----
Every bank volume ``n`` is a *fixed* image ``F``. Its *moving* image is the same subject under a
ground-truth rigid perturbation ``G`` (world -> world, drawn at reset): ``M(y) = r(F(G^{-1} y))``,
where ``r`` is the optional intensity remap (``config.remap``, below). The anatomy at fixed world
point ``x`` appears at moving world point ``G x``; the answer of the registration, the transform that
maps fixed world coordinates to moving world coordinates, is ``G`` itself. The ground truth is
therefore exact and no second volume is stored: the moving image is rendered on the fly by
resampling the bank volume. ``G`` has uniform parameters in ``±max_translation_mm`` per axis and
``±max_rotation_deg`` per Euler angle, about the registration centre ``c``.

Registration centre ``c`` (``config.centre``): ``"fov"`` (default), the world position of the centre of
the fixed volume's voxel grid (level 0, ``affine @ (shape - 1) / 2``), which needs no ground truth, so
:mod:`jaxmed.commands.register` uses the same centre on a new image pair; or ``"landmarks"``, the
centroid of the fixed image's TRE landmarks (then a rotation about ``c`` does not move the landmarks'
centroid, which decouples rotation from translation in the TRE; on a new pair the command takes
``--centre``). Rotations (of ``G``, of the estimate, of the actions) are about ``c``; the observation
is centred on ``c``.

Transforms and actions
----------------------
Parameters ``(6,)``: translations ``(tx, ty, tz)`` mm and Euler angles ``(rx, ry, rz)`` degrees about
``c`` (:func:`jaxmed.ops.rigid.rigid_matrix`: ``x' = R (x - c) + c + t``, ``R = Rz Ry Rx``). The state
holds the current estimate ``T`` (fixed world -> moving world; identity at reset) as such parameters.

Action ``a`` in ``0..11`` is an increment ``d`` of one parameter: parameter ``a // 2`` (0-2 the
translations, 3-5 the rotations) by ``+step`` (``a`` even) or ``-step`` (odd), ``step`` = mm or
degrees of the current level. It is *composed in the fixed image's frame*: ``T <- T o D(d)`` with
``D(d) = rigid_matrix(d, c)``. From the identity this changes exactly one parameter by ``±step``; in
general the new parameters are ``matrix_to_params(T @ D(d), c)``. Deviation from adding ``d`` to the
parameters, and why: the observation is a function of the residual ``W = G^{-1} T`` only (below);
composing on the right gives ``W <- W o D(d)``, so an action's effect on the observation, and on the
reward, does not depend on the unseen ``G``, and the process is Markov in what the agent sees.
Additive increments would act as ``G^{-1} D(d) G``: a translation rotated by the unknown ``G``.

Observation
-----------
``(1, 2, D, D, D)`` float32 normalised intensities (``A = 1`` agent, the two channels take the place
of frames, so the Q-networks of :mod:`jaxmed.networks` apply unchanged): channel 0 the fixed crop of
``D^3`` voxels of pyramid level ``config.levels[level]`` around the voxel nearest ``c``; channel 1
the moving image resampled (trilinear, 0 outside the image) on exactly the same grid under the
current estimate: ``M(T x) = r(F(W x))``, ``W = G^{-1} T``, one interpolation from the bank level.
On a real pair (:meth:`RegistrationEnv.pair_state`, ``G = I``, ``moving`` another bank volume)
channel 1 samples that volume at ``T x``.

Pairs of two subjects (``config.other_subject_prob > 0``): at reset, with this probability the moving
image is rendered from another bank volume ``m`` (drawn uniformly among the others) instead of the
fixed one, under the same kind of perturbation ``G``: ``M(y) = r(V_m(G^{-1} y))``. The anatomy at
landmark ``L_i`` of the fixed subject lies at ``G L^m_i`` in the moving image, and the TRE becomes
``mean_i |T L_i - G L^m_i| = mean_i |W L_i - L^m_i|`` (``G`` is rigid), whose minimum over rigid ``T``
is the two subjects' anatomical difference rather than 0: the agent learns to align two different
brains as well as a rigid transform can, which is what registering a new subject to an atlas asks.
With ``moving == volume`` every formula is the one above.

Reward, coarse-to-fine, termination
-----------------------------------
* TRE: mean over the landmarks ``L_i`` (``config.landmarks``, world mm of the fixed image) of
  ``|T L_i - G L_i| = |W L_i - L_i|`` mm (two subjects: ``|W L_i - L^m_i|``, above). Reward ``(1,)``
  float32: ``clip(prev_err - err, ±reward_clip)``
  with the *current* step's error ``err``: the TRE in mm (``config.reward == "tre"``, default) or
  Liao's weighted parameter distance ``translation_error_mm + rotation_error_deg`` (``"pose"``: 1 mm
  per degree, so rotations are rewarded as strongly as translations even when the landmarks lie
  close to ``c``); 0 once done.
* Levels: ``config.levels`` (bank pyramid levels, finest first) with ``config.steps`` (mm and degrees
  per action, same length, finest first), e.g. levels ``(0, 1, 2)`` with steps ``(1, 2, 4)``. The
  agent starts at the coarsest; when it oscillates (the new estimate lies within ``0.25 step`` in
  every parameter of at least ``osc_repeats`` of the newest ``min(osc_window, since_switch + 1)``
  estimates, itself included) it moves one level finer; oscillation at the finest level ends the
  episode (``terminated``). ``terminate_at_tre_mm > 0`` (training only: it reads the ground truth;
  :meth:`RegistrationEnv.eval_params` disables it) also ends it when ``tre <= terminate_at_tre_mm``
  after a move at the finest level. ``truncated`` when ``t >= max_steps`` and not terminated.
* Auto-reset (:meth:`Environment.step`): ``info["final_state"]`` is the state the episode ended in;
  ``info`` also holds ``tre_mm`` ``(1,)``, ``final_tre_mm``, ``final_rotation_error_deg``,
  ``final_translation_error_mm`` ``(1,)`` (NaN unless the episode ended), ``oscillated`` ``(1,)`` bool
  and ``level`` ``(1,)`` int32.

Multimodal option (``config.remap``): ``"none"``; ``"monotone"`` (a fixed concave piecewise-linear
curve: contrast changes, order kept); ``"nonmonotone"`` (a fixed piecewise-linear curve that folds
the intensity range over itself, so dark, mid and bright tissue swap order: intensity matching such
as cross-correlation fails, structure is kept). Both keep 0 at 0 (background stays background); see
:data:`REMAP_KNOTS` and :func:`remap_intensity`.

Random gain of the moving image (``RegistrationParams.gain_prob``, training only): with this
probability a reset draws a factor log-uniform in ``[gain_min, gain_max]``
(:func:`jaxmed.ops.intensity.random_gain`) and the episode's moving image is ``min(gain * M, full
scale)``; the fixed image is unchanged. Two scans of one brain normalised to ``[0, 1]`` differ by such a
factor when one field of view holds a bright scalp and the other does not (Colin27 with skull: its
brain is about 0.6 times as bright as the template's after normalisation); an agent trained without
it answers such a pair tens of millimetres off.

Edge features (``config.features``): ``"edges"`` shows the agent each crop's normalised-gradient-field
magnitude (:func:`jaxmed.ops.features.edge_map`) instead of its intensities: where tissues meet,
whatever their contrast, and unchanged by a gain (up to clipping). ``"intensity+edges"`` shows both
(four channels).
Applied at render time to both images after the remap and the gain, so state-based replay stores
nothing more.

Evaluation: :meth:`RegistrationEnv.eval_states` (``n_starts`` fixed perturbations per volume drawn
from a seeded generator, estimate = identity), :meth:`RegistrationEnv.eval_metrics` (``tre_mm``,
``rotation_error_deg`` = angle of the residual rotation, ``translation_error_mm`` = displacement of
the centre ``c``). Replay without pixels: :meth:`RegistrationEnv.obs_state` (volume and moving index,
the residual as a ``(3, 4)`` matrix, the level: 57 bytes) and :meth:`RegistrationEnv.render`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmed.config import bounded, check_fields
from jaxmed.envs.base import (
    Box,
    ConfiguredEnv,
    Discrete,
    check_discrete_action,
    check_levels,
    check_volume_bank,
    episode_end,
    oscillation,
)
from jaxmed.errors import ConfigError
from jaxmed.ops.features import edge_map
from jaxmed.ops.intensity import random_gain
from jaxmed.ops.linalg import apply_affine, matmul, matvec
from jaxmed.ops.resample import affine_grid, trilinear_levels
from jaxmed.ops.rigid import invert_rigid, matrix_to_params, rigid_distance, rigid_matrix

N_ACTIONS = 12
N_PARAMS = 6

#: Knots ``(x, y)`` of the piecewise-linear intensity remaps (normalised intensities; constant beyond
#: the last knot). ``monotone``: concave and increasing. ``nonmonotone``: drawn once by hand to fold
#: the range three times (0.3 -> 1.0, 0.5 -> 0.2, 0.7 -> 0.8, 0.9 -> 0.1), like a T1 -> T2 contrast
#: swap between dark, mid and bright tissue.
REMAP_KNOTS = {
    "monotone": ((0.0, 0.25, 0.5, 0.75, 1.0), (0.0, 0.45, 0.65, 0.8, 1.0)),
    "nonmonotone": ((0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0), (0.0, 0.6, 1.0, 0.2, 0.8, 0.1, 0.4)),
}
REMAPS = ("none",) + tuple(REMAP_KNOTS)
CENTRES = ("fov", "landmarks")
FEATURES = ("intensity", "edges", "intensity+edges")
REWARDS = ("tre", "pose")


def remap_intensity(values, kind: str):
    """Apply the named intensity remap to normalised intensities ``values`` (any shape, float32).

    ``"none"`` returns them unchanged; see :data:`REMAP_KNOTS` for the others. Works on NumPy and
    JAX arrays (returns the same kind)."""
    if kind == "none":
        return values
    if kind not in REMAP_KNOTS:
        raise ConfigError(f"unknown intensity remap {kind!r}; choose one of {', '.join(REMAPS)}")
    xs, ys = REMAP_KNOTS[kind]
    if isinstance(values, np.ndarray):
        return np.interp(values, xs, ys).astype(np.float32)
    return jnp.interp(values, jnp.asarray(xs, jnp.float32), jnp.asarray(ys, jnp.float32))


def action_increment(action, step):
    """``(6,)`` float32 parameter increment of ``action`` (0..11) with step ``step`` (mm / degrees)."""
    action = jnp.asarray(action, jnp.int32)
    sign = jnp.where(action % 2 == 0, 1.0, -1.0)
    return jax.nn.one_hot(action // 2, N_PARAMS, dtype=jnp.float32) * (sign * step)


def compose_action(params, action, step, center):
    """New estimate parameters ``(6,)`` after ``action``: ``T o D(d)`` (module docstring)."""
    t = matmul(rigid_matrix(params, center), rigid_matrix(action_increment(action, step), center))
    return matrix_to_params(t, center)


def tre(residual, points, targets=None):
    """Mean distance (mm) between the images of ``points`` ``(K, 3)`` under ``residual`` ``(4, 4)`` and
    ``targets`` ``(K, 3)`` (default: ``points`` themselves).

    With ``residual = G^{-1} T`` (both rigid) this is ``mean_i |T p_i - G q_i|`` for targets ``q``.
    Returns ``()`` float32."""
    moved = apply_affine(points, residual)
    return jnp.mean(jnp.linalg.norm(moved - (points if targets is None else targets), axis=-1))


# ------------------------------------------------------------------ configuration, params, state


@dataclasses.dataclass(frozen=True)
class RegistrationConfig:
    """Static configuration (hashable; fixes array shapes).

    Attributes:
      landmarks: bank landmark labels the TRE is measured over (at least one).
      crop_size: ``D``, crop edge in voxels at every level; ``<= bank.max_crop``.
      levels: bank pyramid levels, finest first, strictly increasing.
      steps: action size per level (mm for translations, degrees for rotations), finest first,
        positive and non-decreasing; ``len(steps) == len(levels)``.
      osc_window: how many recent estimates the oscillation test looks at.
      remap: moving-image intensity remap, ``"none" | "monotone" | "nonmonotone"``.
      centre: registration centre ``c`` of each fixed volume: ``"fov"`` (the centre of its voxel
        grid) or ``"landmarks"`` (the centroid of its TRE landmarks); see the module docstring.
      reward: the error whose decrease is the reward: ``"tre"`` (mm) or ``"pose"``
        (``translation_error_mm + rotation_error_deg``, 1 mm per degree, Liao's parameter distance).
      other_subject_prob: probability in ``[0, 1]`` that a training pair's moving image comes from
        another bank volume (module docstring, "Pairs of two subjects"; needs ``reward == "tre"``; a
        bank of one volume gives one-subject pairs). Evaluation starts
        (:meth:`RegistrationEnv.eval_states`) keep one subject per pair.
      features: what the observation channels show: ``"intensity"`` (the two crops' intensities),
        ``"edges"`` (each crop's normalised-gradient-field magnitude, :func:`jaxmed.ops.features.edge_map`:
        its tissue boundaries, whatever their contrast; unchanged by a gain of the moving image, up to
        clipping at full scale) or
        ``"intensity+edges"`` (four channels: both intensities, then both edge maps).
      edge_rel_eps: ``rel_eps`` of :func:`~jaxmed.ops.features.edge_map` when ``features`` has edges
        (> 0: the gradient, as a fraction of the crop's mean gradient, at which an edge reaches 0.71).
    """

    landmarks: tuple[str, ...] = ("L0",)
    crop_size: int = bounded(15, 1)
    levels: tuple[int, ...] = (0,)
    steps: tuple[float, ...] = (1.0,)
    osc_window: int = bounded(8, 1)
    remap: str = "none"
    centre: str = "fov"
    reward: str = "tre"
    other_subject_prob: float = bounded(0.0, 0.0, 1.0)
    features: str = "intensity"
    edge_rel_eps: float = bounded(0.5, 0.0, low_open=True)

    def __post_init__(self):
        landmarks = (self.landmarks,) if isinstance(self.landmarks, str) else tuple(str(t) for t in self.landmarks)
        steps = (float(self.steps),) if np.ndim(self.steps) == 0 else tuple(float(s) for s in self.steps)
        object.__setattr__(self, "landmarks", landmarks)
        object.__setattr__(self, "steps", steps)
        if not landmarks:
            raise ConfigError("RegistrationConfig: landmarks is empty; name the landmarks the TRE is measured over")
        if len(set(landmarks)) != len(landmarks):
            raise ConfigError(f"RegistrationConfig: duplicate landmarks in {landmarks}")
        check_fields(self)
        levels = check_levels(self, "RegistrationConfig")
        if len(steps) != len(levels):
            raise ConfigError(f"RegistrationConfig: one step per level needed: levels {levels}, steps {steps}")
        if any(not np.isfinite(s) or s <= 0 for s in steps) or any(b < a for a, b in zip(steps, steps[1:])):
            raise ConfigError(f"RegistrationConfig: steps must be positive and non-decreasing (finest first), got {steps}")
        if self.remap not in REMAPS:
            raise ConfigError(f"RegistrationConfig: remap must be one of {', '.join(REMAPS)}, got {self.remap!r}")
        if self.centre not in CENTRES:
            raise ConfigError(f"RegistrationConfig: centre must be one of {', '.join(CENTRES)}, got {self.centre!r}")
        if self.other_subject_prob > 0 and self.reward != "tre":
            raise ConfigError(f"RegistrationConfig: other_subject_prob {self.other_subject_prob} needs reward 'tre': the pose "
                              f"error of a pair of two subjects has no ground truth")
        if self.features not in FEATURES:
            raise ConfigError(f"RegistrationConfig: features must be one of {', '.join(FEATURES)}, got {self.features!r}")
        if self.reward not in REWARDS:
            raise ConfigError(f"RegistrationConfig: reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")

    @property
    def history_len(self) -> int:
        return self.osc_window

    @property
    def n_channels(self) -> int:
        """Observation channels: 2 (fixed, moving), 4 with ``features == "intensity+edges"``."""
        return 4 if self.features == "intensity+edges" else 2


@struct.dataclass
class RegistrationParams:
    """Numeric parameters (pytree leaves).

    Attributes:
      max_steps: episode length limit (truncation).
      reward_clip: reward clip, mm.
      max_translation_mm: ground-truth translations drawn uniformly in ± this per axis.
      max_rotation_deg: ground-truth Euler angles drawn uniformly in ± this per axis.
      terminate_at_tre_mm: ``> 0``: end the episode when the TRE after a move at the finest level is
        at most this (reads the ground truth: training only); ``<= 0`` disables it.
      osc_repeats: occurrences of the new estimate among the recent ones that count as oscillation.
      gain_prob: probability that a reset multiplies the moving image's intensities by a random gain
        (module docstring); evaluation never does.
      gain_min, gain_max: bounds of that gain (log-uniform; ``0 < gain_min <= gain_max``).
    """

    max_steps: int = bounded(100, 1)
    reward_clip: float = bounded(4.0, 0.0, low_open=True)
    max_translation_mm: float = bounded(20.0, 0.0)
    max_rotation_deg: float = bounded(20.0, 0.0, 180.0)
    terminate_at_tre_mm: float = 0.0
    osc_repeats: int = bounded(3, 2)
    gain_prob: float = bounded(0.0, 0.0, 1.0)
    gain_min: float = bounded(1.0, 0.0, low_open=True)
    gain_max: float = bounded(1.0, 0.0, low_open=True)


@struct.dataclass
class RegistrationState:
    """Per-environment state (``H`` = ``osc_window``); about 300 bytes, no pixels.

    Attributes:
      volume: ``()`` int32, bank index of the fixed image.
      moving: ``()`` int32, bank index of the volume the moving image is rendered from (``volume``
        for synthetic pairs).
      estimate: ``(6,)`` float32, current transform ``T`` (fixed world -> moving world) about ``c``.
      gt: ``(6,)`` float32, ground-truth perturbation ``G`` about ``c`` (zero on a real pair).
      level: ``()`` int32, index into ``config.levels`` (0 = finest).
      history: ``(H, 6)`` float32, ring of recent estimates, newest first.
      since_switch: ``()`` int32, steps since the reset or the last level switch.
      done: ``(1,)`` bool, the agent has finished.
      t: ``()`` int32, steps taken in this episode.
      prev_error: ``(1,)`` float32, the error the reward decreases (:meth:`RegistrationEnv.error`) of ``estimate``.
      gain: ``()`` float32, the episode's moving-image gain (1: none).
    """

    volume: jax.Array
    moving: jax.Array
    estimate: jax.Array
    gt: jax.Array
    level: jax.Array
    history: jax.Array
    since_switch: jax.Array
    done: jax.Array
    t: jax.Array
    prev_error: jax.Array
    gain: jax.Array


@struct.dataclass
class RegistrationObsState:
    """What an observation is rendered from: ``volume``, ``moving`` ``()`` int32, ``residual``
    ``(3, 4)`` float32 (``G^{-1} T``, world -> world), ``level`` ``()`` int8, ``gain`` ``()`` float32."""

    volume: jax.Array
    moving: jax.Array
    residual: jax.Array
    level: jax.Array
    gain: jax.Array


# ------------------------------------------------------------------ the environment


class RegistrationEnv(ConfiguredEnv, config=RegistrationConfig, params=RegistrationParams, name="registration",
                      label_field="landmarks", label_role="TRE"):
    """Rigid registration of a moving image to a fixed image by 12 discrete moves (module docstring).

    Args:
      config: a :class:`RegistrationConfig`.
      labels: the bank's landmark labels (``bank.labels``); when given, ``config.landmarks`` (the TRE
        landmarks, :attr:`required_labels`) is checked against them now.
      name: the name reported by :attr:`name` (the registry passes its name).
    """

    # -------------------------------------------------------------- descriptions

    @property
    def wants_packed_bank(self) -> bool:
        """Several pyramid levels: a packed bank samples only the current level (about 4x faster rendering)."""
        return len(self.config.levels) > 1

    @property
    def metric_labels(self) -> tuple[str, ...]:
        return ("rigid",)

    def eval_params(self, params: RegistrationParams) -> RegistrationParams:
        """``params`` without the ground-truth termination (``terminate_at_tre_mm = 0``) or a random gain."""
        return params.replace(terminate_at_tre_mm=0.0, gain_prob=0.0)

    def observation_space(self, params=None, bank=None) -> Box:
        d = self.config.crop_size
        return Box(-np.inf, np.inf, (1, self.config.n_channels, d, d, d), jnp.float32)

    def action_space(self, params=None) -> Discrete:
        return Discrete(N_ACTIONS, (1,))

    # -------------------------------------------------------------- host-side checks

    def check_bank(self, bank) -> None:
        """Crop size within the margin, levels present, TRE landmarks among the bank's labels."""
        check_volume_bank(self, bank, self.config.levels, self.config.crop_size)
        self._landmark_indices(bank)

    def _landmark_indices(self, bank) -> np.ndarray:
        return np.array([bank.label_index(t) for t in self.config.landmarks], np.int32)

    def check_action(self, action):
        """:class:`ConfigError` unless ``action`` is ``(1,)`` or ``()`` integers in ``0..11``."""
        return check_discrete_action(self, action, N_ACTIONS, "±tx, ±ty, ±tz, ±rx, ±ry, ±rz")


    # -------------------------------------------------------------- geometry

    def center(self, bank, volume) -> jax.Array:
        """``(3,)`` float32 world mm: the registration centre of fixed volume ``volume``."""
        if self.config.centre == "landmarks":
            return jnp.mean(self._landmarks(bank, volume), axis=0)
        mid = (bank.shapes[0, volume].astype(jnp.float32) - 1.0) / 2.0
        return apply_affine(mid, bank.affines[0, volume])

    def _steps(self) -> jax.Array:
        return jnp.asarray(self.config.steps, jnp.float32)

    def residual(self, state: RegistrationState, bank) -> jax.Array:
        """``(4, 4)`` float32 ``G^{-1} T`` (world -> world of the fixed image)."""
        c = self.center(bank, state.volume)
        return matmul(invert_rigid(rigid_matrix(state.gt, c)), rigid_matrix(state.estimate, c))

    def _landmarks(self, bank, volume) -> jax.Array:
        return bank.landmarks_world[volume][jnp.asarray(self._landmark_indices(bank))]

    def tre_mm(self, state: RegistrationState, bank) -> jax.Array:
        """``(1,)`` float32, the TRE (mm) of the current estimate: the fixed subject's landmarks carried
        by the residual against the moving subject's (the same ones on a one-subject pair)."""
        return tre(self.residual(state, bank), self._landmarks(bank, state.volume), self._landmarks(bank, state.moving))[None]

    def error(self, state: RegistrationState, bank) -> jax.Array:
        """``(1,)`` float32, the error whose decrease is the reward: the TRE (mm, ``config.reward ==
        "tre"``) or the pose error ``translation_error_mm + rotation_error_deg`` (``"pose"``)."""
        if self.config.reward == "tre":
            return self.tre_mm(state, bank)
        trans, angle = rigid_distance(state.estimate, state.gt)
        return (trans + angle)[None].astype(jnp.float32)

    def transform_world(self, state: RegistrationState, bank) -> jax.Array:
        """``(4, 4)`` float32, the current estimate ``T``: fixed world RAS mm -> moving world RAS mm."""
        return rigid_matrix(state.estimate, self.center(bank, state.volume))

    # -------------------------------------------------------------- reset

    def initial_state(self, bank, volume, gt, moving=None) -> RegistrationState:
        """The state at reset: estimate = identity, coarsest level, ground truth ``gt`` ``(6,)``.
        ``moving`` (default ``volume``) is the bank volume the moving image is rendered from."""
        c = self.config
        volume = jnp.asarray(volume, jnp.int32)
        moving = volume if moving is None else jnp.asarray(moving, jnp.int32)
        gt = jnp.asarray(gt, jnp.float32).reshape(N_PARAMS)
        estimate = jnp.zeros((N_PARAMS,), jnp.float32)
        state = RegistrationState(
            volume=volume,
            moving=moving,
            estimate=estimate,
            gt=gt,
            level=jnp.asarray(len(c.levels) - 1, jnp.int32),
            history=jnp.zeros((c.history_len, N_PARAMS), jnp.float32),
            since_switch=jnp.zeros((), jnp.int32),
            done=jnp.zeros((1,), bool),
            t=jnp.zeros((), jnp.int32),
            prev_error=jnp.zeros((1,), jnp.float32),
            gain=jnp.ones((), jnp.float32),
        )
        return state.replace(prev_error=self.error(state, bank))

    def reset_env(self, key, params: RegistrationParams, bank) -> RegistrationState:
        """Random fixed volume; random perturbation, uniform in ``±max_translation_mm`` / ``±max_rotation_deg``;
        with probability ``config.other_subject_prob`` the moving image from another random volume; with
        probability ``params.gain_prob`` a random moving-image gain. Each option draws from its own
        fold of ``key``, so the draws without it are unchanged."""
        n_volumes = bank.levels[0].shape[0]
        u = jax.random.uniform(key, (1 + N_PARAMS,), jnp.float32)
        volume = jnp.minimum(jnp.floor(u[0] * n_volumes).astype(jnp.int32), n_volumes - 1)
        scale = jnp.concatenate([jnp.full((3,), params.max_translation_mm, jnp.float32),
                                 jnp.full((3,), params.max_rotation_deg, jnp.float32)])
        moving = volume
        if self.config.other_subject_prob > 0 and n_volumes > 1:
            # another volume, uniform among the n - 1 others (draws of their own: the one-subject stream is unchanged)
            v = jax.random.uniform(jax.random.fold_in(key, 1), (2,), jnp.float32)
            shift = 1 + jnp.minimum(jnp.floor(v[0] * (n_volumes - 1)).astype(jnp.int32), n_volumes - 2)
            moving = jnp.where(v[1] < self.config.other_subject_prob, (volume + shift) % n_volumes, volume)
        state = self.initial_state(bank, volume, (2.0 * u[1:] - 1.0) * scale, moving)
        return state.replace(gain=random_gain(jax.random.fold_in(key, 2), params.gain_prob, params.gain_min, params.gain_max))

    def draw_perturbations(self, params: RegistrationParams, n: int, seed: int) -> np.ndarray:
        """``(n, 6)`` float32 ground-truth perturbations from ``numpy.random.default_rng(seed)`` (host side)."""
        rng = np.random.default_rng(seed)
        scale = np.array([float(params.max_translation_mm)] * 3 + [float(params.max_rotation_deg)] * 3, np.float32)
        return (rng.uniform(-1.0, 1.0, size=(n, N_PARAMS)) * scale).astype(np.float32)

    def eval_states(self, params: RegistrationParams | None, bank, n_starts: int, seed: int = 0) -> RegistrationState:
        """``n_starts`` fixed ground-truth perturbations per bank volume (seeded; the same for the same
        ``seed``), estimate = identity: a batched state with leading axis ``E = n_volumes * n_starts``,
        volume-major."""
        params = self.default_params if params is None else params
        self.check_bank(bank)
        if int(n_starts) < 1:
            raise ConfigError(f"{self.name}: n_starts must be >= 1, got {n_starts}")
        n_vol = bank.n_volumes
        gts = self.draw_perturbations(params, n_vol * int(n_starts), seed)
        vols = np.repeat(np.arange(n_vol, dtype=np.int32), int(n_starts))
        return self.states_at(bank, vols, gts)

    def states_at(self, bank, volumes, gts, moving=None) -> RegistrationState:
        """Batched :meth:`initial_state` for ``volumes`` ``(E,)`` and perturbations ``gts`` ``(E, 6)``."""
        self.check_bank(bank)
        volumes = jnp.asarray(volumes, jnp.int32)
        moving = volumes if moving is None else jnp.asarray(moving, jnp.int32)
        return self._states_at(bank, volumes, jnp.asarray(gts, jnp.float32), moving)

    @functools.partial(jax.jit, static_argnums=(0,))
    def _states_at(self, bank, volumes, gts, moving):
        return jax.vmap(self.initial_state, in_axes=(None, 0, 0, 0))(bank, volumes, gts, moving)

    def pair_state(self, bank, fixed: int = 0, moving: int = 1) -> RegistrationState:
        """Start state for registering bank volume ``moving`` to bank volume ``fixed`` (a real pair:
        no ground truth, ``G = I``; rewards and TRE are then meaningless and only the estimate counts)."""
        self.check_bank(bank)
        for name, v in (("fixed", fixed), ("moving", moving)):
            if not 0 <= int(v) < bank.n_volumes:
                raise ConfigError(f"{self.name}: {name} volume index {int(v)} out of range: the bank holds {bank.n_volumes} volumes")
        return self.initial_state(bank, fixed, jnp.zeros((N_PARAMS,)), moving)

    # -------------------------------------------------------------- step

    def step_env(self, key, state: RegistrationState, action, params: RegistrationParams, bank):
        """One move, no auto-reset: ``(state, reward, terminated, truncated, info)``."""
        del key  # deterministic dynamics
        c = self.config
        action = jnp.reshape(jnp.asarray(action, jnp.int32), ())
        live = ~state.done[0]
        step = self._steps()[state.level]
        centre = self.center(bank, state.volume)
        moved = compose_action(state.estimate, action, step, centre)
        estimate = jnp.where(live, moved, state.estimate)
        new = state.replace(estimate=estimate)
        err = self.error(new, bank)
        clip = jnp.asarray(params.reward_clip, jnp.float32)
        reward = jnp.where(live, jnp.clip(state.prev_error - err, -clip, clip), 0.0).astype(jnp.float32)

        pushed = jnp.concatenate([estimate[None], state.history[:-1]], axis=0)
        close = jnp.all(jnp.abs(pushed - estimate[None]) <= 0.25 * step, axis=-1)
        oscillated, since = oscillation(close, state.since_switch, c.osc_window, params.osc_repeats, live)
        at_finest = state.level == 0
        switch = oscillated & ~at_finest
        thr = jnp.asarray(params.terminate_at_tre_mm, jnp.float32)
        metrics = self.eval_metrics(new, params, bank)
        reached = at_finest & (thr > 0) & (metrics["tre_mm"][0] <= thr)
        finished = live & ((oscillated & at_finest) | reached)

        new = new.replace(
            level=jnp.where(switch, state.level - 1, state.level),
            history=jnp.where(live, pushed, state.history),
            since_switch=jnp.where(switch, 0, jnp.where(live, since, state.since_switch)),
            done=state.done | finished,
            t=state.t + 1,
            prev_error=jnp.where(live, err, state.prev_error),
        )
        terminated, truncated, ended = episode_end(new.done, new.t, params.max_steps)
        info = {
            "tre_mm": metrics["tre_mm"],
            "oscillated": oscillated[None],
            "level": new.level[None],
        }
        for k, v in metrics.items():
            info[f"final_{k}"] = jnp.where(ended, v, jnp.nan)
        return new, reward, terminated, truncated, info

    # -------------------------------------------------------------- evaluation metrics

    def eval_metrics(self, state: RegistrationState, params=None, bank=None) -> dict[str, jax.Array]:
        """Errors of the estimate, each ``(1,)`` float32: ``tre_mm`` (mean over the landmarks),
        ``rotation_error_deg`` (angle of the residual rotation ``R_G^T R_T``), ``translation_error_mm``
        (``|T c - G c|``)."""
        trans, angle = rigid_distance(state.estimate, state.gt)
        return {
            "tre_mm": self.tre_mm(state, bank),
            "rotation_error_deg": angle[None].astype(jnp.float32),
            "translation_error_mm": trans[None].astype(jnp.float32),
        }

    # -------------------------------------------------------------- observation

    def obs_state(self, state: RegistrationState) -> RegistrationObsState:
        """The few bytes the observation is a function of (what a replay buffer stores). The residual
        is stored relative to the centre ``c`` (:func:`_residual_about_origin`), so no bank is needed
        here; :meth:`render` puts ``c`` back."""
        return RegistrationObsState(
            volume=state.volume.astype(jnp.int32),
            moving=state.moving.astype(jnp.int32),
            residual=_residual_about_origin(state.estimate, state.gt),
            level=state.level.astype(jnp.int8),
            gain=state.gain.astype(jnp.float32),
        )

    def get_obs(self, state: RegistrationState, params=None, bank=None) -> jax.Array:
        """``(1, C, D, D, D)`` float32: fixed crop and moving image under the current estimate (their
        intensities, their edge maps, or both: ``C = config.n_channels``, see ``config.features``)."""
        return self.render(self.obs_state(state), bank)

    def render(self, obs_state: RegistrationObsState, bank) -> jax.Array:
        """The observation of an :class:`RegistrationObsState`; ``render(obs_state(s), bank) == get_obs(s, params, bank)``.

        The level is traced: with one configured level it is static; with several, the fixed crop
        and the moving samples come from the bank's packed pyramid when it has one
        (``build_bank(packed=True)``: one gather whatever the level), else every configured level is
        sampled and the right one selected (:func:`jaxmed.ops.resample.trilinear_levels`)."""
        c = self.config
        volume, moving = obs_state.volume, obs_state.moving
        centre = self.center(bank, volume)
        residual = _about_center(obs_state.residual, centre)
        if len(c.levels) == 1:
            bank_level = c.levels[0]
        else:
            bank_level = jnp.asarray(c.levels, jnp.int32)[obs_state.level.astype(jnp.int32)]
        d = c.crop_size
        aff = bank.affines[bank_level, volume]
        inv = jnp.linalg.inv(aff)
        ext = bank.shapes[bank_level, volume]
        centre_vox = jnp.clip(jnp.round(apply_affine(centre, inv)).astype(jnp.int32), 0, ext - 1)
        fixed = bank.to_intensity(bank.crops(volume, centre_vox, d, bank_level, candidates=c.levels))
        origin = (centre_vox - d // 2).astype(jnp.float32)
        shift = jnp.eye(4, dtype=jnp.float32).at[:3, 3].set(origin)
        # crop voxel -> moving level voxel
        grid = matmul(matmul(matmul(jnp.linalg.inv(bank.affines[bank_level, moving]), residual), aff), shift)
        points = affine_grid(grid, d)
        sampled = trilinear_levels(bank.levels, bank.shapes[:, moving], moving, bank_level, points, bank.margin, 0.0,
                                   candidates=c.levels, packed=bank.packed)
        moving_img = remap_intensity(_gained(sampled, obs_state.gain, bank) * bank.intensity_scale, c.remap).astype(jnp.float32)
        pair = jnp.stack([fixed, moving_img])
        if c.features == "edges":
            pair = edge_map(pair, c.edge_rel_eps)
        elif c.features == "intensity+edges":
            pair = jnp.concatenate([pair, edge_map(pair, c.edge_rel_eps)])
        return pair[None]


def _gained(stored, gain, bank) -> jax.Array:
    """Stored intensities ``stored`` times ``gain``, clipped to the bank's full scale (255 for uint8
    storage, normalised intensity 1 for float storage); a gain of 1 returns them unchanged."""
    return jnp.where(gain == 1.0, stored, jnp.minimum(stored * gain, bank.stored_full_scale))


def _residual_about_origin(estimate, gt) -> jax.Array:
    """``(3, 4)`` float32 ``G^{-1} T`` expressed with both transforms about the origin, i.e. the
    residual *in coordinates relative to the centre*: ``x - c -> W(x) - c``. It does not depend on
    ``c``, so the replay can store it without the bank."""
    zero = jnp.zeros((3,), jnp.float32)
    w = matmul(invert_rigid(rigid_matrix(gt, zero)), rigid_matrix(estimate, zero))
    return w[:3]


def _about_center(residual34, centre) -> jax.Array:
    """``(4, 4)`` world -> world matrix of a centre-relative residual ``(3, 4)``: ``x -> c + W (x - c)``."""
    r = residual34[:, :3]
    t = residual34[:, 3] + centre - matvec(r, centre)
    top = jnp.concatenate([r, t[:, None]], axis=1)
    return jnp.concatenate([top, jnp.asarray([[0.0, 0.0, 0.0, 1.0]], jnp.float32)], axis=0)
