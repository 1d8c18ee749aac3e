"""A trained registration agent (``registration-v0``) ready to register image pairs.

:class:`RegistrationAgent` is what ``jaxmed register --checkpoint`` runs and what
:mod:`jaxmed.registration_evaluation` scores: built once from a run, it keeps one compiled episode
batch per bank shape, so many pairs (or many poses of one subject) compile once. With several
intensity copies or starts, the episodes' answers are pooled robustly (:func:`pool_rigid`) and their
spread is reported as an uncertainty.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxmed.data.geometry import apply_affine, best_rigid
from jaxmed.errors import ConfigError

ENV_NAME = "registration-v0"


#: Half-width (mm) of the 3 x 3 x 3 grid of points about the registration centre that the answers
#: of several episodes are pooled on (:func:`pool_rigid`): the extent of a brain's deep structures.
POOL_HALF_WIDTH_MM = 30.0


@dataclasses.dataclass(frozen=True)
class RegistrationAnswer:
    """One registered pair.

    Attributes:
      matrix: ``(4, 4)`` float64, fixed world RAS mm -> moving world RAS mm (the pooled answer when
        several episodes ran).
      seconds: wall time of the episodes (compilation included on a shape's first call).
      steps: the longest episode's number of moves.
      episodes: episodes pooled (intensity copies x starts).
      spread_mm: median over the episodes of the mean distance (mm) between where the episode's
        answer and the pooled answer put the pooling points (0 for one episode): an uncertainty.
    """

    matrix: np.ndarray
    seconds: float
    steps: int
    episodes: int = 1
    spread_mm: float = 0.0


def pool_points(centre, half_width_mm: float = POOL_HALF_WIDTH_MM) -> np.ndarray:
    """``(27, 3)`` float64 world points: a 3 x 3 x 3 grid of ``centre + {-h, 0, h}^3`` mm."""
    offsets = np.array(np.meshgrid(*[(-1.0, 0.0, 1.0)] * 3, indexing="ij")).reshape(3, -1).T
    return np.asarray(centre, np.float64).reshape(1, 3) + float(half_width_mm) * offsets


def pool_rigid(matrices: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, float]:
    """Pool rigid answers ``matrices`` ``(K, 4, 4)`` (fixed world -> moving world) robustly: carry
    ``points`` ``(P, 3)`` by each, take the coordinate-wise median over the ``K`` answers per point and
    fit one rigid transform to it (:func:`jaxmed.data.geometry.best_rigid`). Returns ``(matrix (4, 4),
    spread_mm)``, the spread being the median over the answers of their mean point distance (mm) from
    the pooled one. One answer is returned as it is (spread 0)."""
    matrices = np.asarray(matrices, np.float64)
    if matrices.shape[0] == 1:
        return matrices[0], 0.0
    carried = np.stack([apply_affine(m, points) for m in matrices])  # (K, P, 3)
    pooled = best_rigid(points, np.median(carried, axis=0))
    spread = np.linalg.norm(carried - apply_affine(pooled, points)[None], axis=-1).mean(axis=1)
    return pooled, float(np.median(spread))


def draw_poses(n: int, seed: int, max_translation_mm: float = 20.0, max_rotation_deg: float = 20.0) -> np.ndarray:
    """``(n, 6)`` rigid parameters (tx, ty, tz mm; rx, ry, rz degrees), uniform in the bounds, seeded."""
    rng = np.random.default_rng(seed)
    scale = np.array([max_translation_mm] * 3 + [max_rotation_deg] * 3, np.float64)
    return rng.uniform(-1.0, 1.0, size=(int(n), 6)) * scale


def start_offsets(n: int, seed: int = 0, max_translation_mm: float = 5.0, max_rotation_deg: float = 5.0) -> np.ndarray:
    """``(n, 6)`` float32 start estimates (tx, ty, tz mm; rx, ry, rz degrees): the identity first, then
    the ``n - 1`` seeded draws of :func:`draw_poses`."""
    draws = draw_poses(max(int(n) - 1, 0), seed, max_translation_mm, max_rotation_deg)
    return np.concatenate([np.zeros((1, 6)), draws]).astype(np.float32)


class RegistrationAgent:
    """A trained ``registration-v0`` run ready to register image pairs: the env, the seed's parameters
    and one jitted episode batch, built once. ``jax.jit`` keeps one compiled program per bank shape,
    so registering many pairs of the same shapes compiles once (:meth:`register`'s seconds then
    exclude compilation; the first call of a shape includes it).

    ``run = (cfg, network, params)`` (:func:`jaxmed.runs.load_params`); ``seed``: which member of a
    multi-seed run; ``lookahead > 1``: look-ahead search (:mod:`jaxmed.agents.lookahead`, Q-value
    learners only) instead of the greedy episode; ``max_steps`` overrides the run's episode length.

    Robust inference: ``intensity_scales`` (default the run's ``eval.intensity_scales``) registers
    copies of the moving image with its intensities times each factor (clipped to its maximum,
    :func:`jaxmed.data.image_io.scaled_copies`), and ``starts`` > 1 also starts from ``starts - 1``
    seeded estimates within ``±start_mm`` / ``±start_deg`` of the identity; the ``copies x starts``
    episodes run as one batch and their answers are pooled by :func:`pool_rigid`."""

    def __init__(self, run, *, seed: int = 0, lookahead: int = 1, depth: int = 2, max_steps: int | None = None,
                 intensity_scales=None, starts: int = 1, start_mm: float = 5.0, start_deg: float = 5.0, start_seed: int = 0):
        from jaxmed.agents import learners
        from jaxmed.agents.lookahead import lookahead_rollout
        from jaxmed.agents.rollout import greedy_rollout
        from jaxmed.data.image_io import check_intensity_scales
        from jaxmed.experiment import make_env
        from jaxmed.runs import seed_params

        cfg, network, params = run
        if cfg.env_name != ENV_NAME:
            raise ConfigError(f"this run trained {cfg.env_name!r}, not {ENV_NAME!r}")
        learner = cfg.train.learner
        if lookahead > 1 and learners.spec(learner).network != "q":
            raise ConfigError(f"--lookahead {lookahead} ranks actions by Q-values; this run trained {learner!r} (a policy): "
                              "use --lookahead 1")
        if int(starts) < 1:
            raise ConfigError(f"registration starts must be >= 1, got {starts}")
        self.intensity_scales = (tuple(cfg.eval.intensity_scales) if intensity_scales is None
                                 else check_intensity_scales(intensity_scales, "intensity_scales"))
        self.starts = start_offsets(int(starts), start_seed, start_mm, start_deg)
        self.cfg, self.params = cfg, seed_params(cfg, params, seed)
        self.labels = tuple(cfg.env.get("landmarks") or ("centre",))
        # the env as training built it, centred on stand-in landmarks placed at the chosen centre (register)
        centred = dataclasses.replace(cfg, env={**cfg.env, "landmarks": list(self.labels), "centre": "landmarks"})
        self.env, _, env_params = make_env(centred, self.labels)
        if max_steps:
            env_params = env_params.replace(max_steps=int(max_steps))
        env = self.env
        if lookahead > 1:
            def episode(p, bank, state):
                return lookahead_rollout(network, p, env, env_params, bank, state, top_k=lookahead, depth=depth)
        else:
            def episode(p, bank, state):
                return greedy_rollout(lambda o: learners.policy_action(learner, network, p, o), env, env_params, bank, state)

        def episodes(p, bank, moving, start):
            """Every (moving copy, start estimate) pair from fixed volume 0: ``(E,)`` episodes."""
            n = moving.shape[0]
            states = jax.vmap(env.initial_state, in_axes=(None, 0, 0, 0))(
                bank, jnp.zeros((n,), jnp.int32), jnp.zeros((n, start.shape[1]), jnp.float32), moving)
            states = states.replace(estimate=start)
            res = episode(p, bank, states)
            return jax.vmap(env.transform_world, in_axes=(0, None))(res["final_state"], bank), res["steps"]

        self._episodes = jax.jit(episodes)

    @property
    def n_episodes(self) -> int:
        """Episodes per pair: intensity copies x starts."""
        return len(self.intensity_scales) * len(self.starts)

    def register(self, fixed, moving, *, centre=None) -> RegistrationAnswer:
        """Register ``moving`` to ``fixed`` (:class:`~jaxmed.data.Volume` s conformed to the run's voxel
        size) about ``centre`` (world mm of ``fixed``; default its grid centre), from the identity (and
        the other starts), on every intensity copy; the answers pooled (:class:`RegistrationAnswer`)."""
        from jaxmed.data import Landmarks, build_bank
        from jaxmed.data.image_io import scaled_copies
        from jaxmed.registration_baseline import grid_centre

        c = grid_centre(fixed) if centre is None else np.asarray(centre, np.float64).reshape(3)
        if not fixed.contains(c[None])[0]:
            raise ConfigError(f"--centre {np.round(c, 1).tolist()} mm lies outside the fixed image {fixed.source}")
        n = len(self.labels)
        stand_in = Landmarks(self.labels, np.repeat(c[None], n, axis=0), source="registration centre")
        moving_lm = Landmarks(self.labels, np.repeat(grid_centre(moving)[None], n, axis=0), source="moving image centre (unused)")
        data = self.cfg.data
        copies = scaled_copies([moving], self.intensity_scales)
        bank = build_bank([(fixed, stand_in)] + [(v, moving_lm) for v in copies], self.labels, factors=data.factors,
                          max_crop=self.env.max_crop, dtype=data.dtype, full_scale=data.intensity_ceiling)
        k, s = len(copies), len(self.starts)
        moving_index = jnp.asarray(np.repeat(np.arange(1, k + 1), s), jnp.int32)
        start = jnp.asarray(np.tile(self.starts, (k, 1)))
        t0 = time.perf_counter()
        matrices, steps = jax.block_until_ready(self._episodes(self.params, bank, moving_index, start))
        seconds = time.perf_counter() - t0
        matrix, spread = pool_rigid(np.asarray(matrices, np.float64), pool_points(c))
        return RegistrationAnswer(matrix, seconds, int(np.max(np.asarray(steps))), k * s, spread)
