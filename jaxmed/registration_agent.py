"""A trained registration agent (``registration-v0``) ready to register image pairs.

:class:`RegistrationAgent` is what ``jaxmed register --checkpoint`` runs and what
:mod:`jaxmed.registration_evaluation` scores: built once from a run, it keeps one compiled episode
per bank shape, so many pairs (or many poses of one subject) compile once.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxmed.errors import ConfigError

ENV_NAME = "registration-v0"


class RegistrationAgent:
    """A trained ``registration-v0`` run ready to register image pairs: the env, the seed's parameters
    and one jitted episode, built once. ``jax.jit`` keeps one compiled program per bank shape, so
    registering many pairs of the same shapes compiles once (:meth:`register`'s seconds then exclude
    compilation; the first call of a shape includes it).

    ``run = (cfg, network, params)`` (:func:`jaxmed.runs.load_params`); ``seed``: which member of a
    multi-seed run; ``lookahead > 1``: look-ahead search (:mod:`jaxmed.agents.lookahead`, Q-value
    learners only) instead of the greedy episode; ``max_steps`` overrides the run's episode length."""

    def __init__(self, run, *, seed: int = 0, lookahead: int = 1, depth: int = 2, max_steps: int | None = None):
        from jaxmed.agents import learners
        from jaxmed.agents.lookahead import lookahead_rollout
        from jaxmed.agents.rollout import greedy_rollout
        from jaxmed.experiment import make_env
        from jaxmed.runs import seed_params

        cfg, network, params = run
        if cfg.env_name != ENV_NAME:
            raise ConfigError(f"this run trained {cfg.env_name!r}, not {ENV_NAME!r}")
        learner = cfg.train.learner
        if lookahead > 1 and learners.spec(learner).network != "q":
            raise ConfigError(f"--lookahead {lookahead} ranks actions by Q-values; this run trained {learner!r} (a policy): "
                              "use --lookahead 1")
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
        self._episode = jax.jit(episode)

    def register(self, fixed, moving, *, centre=None):
        """Register ``moving`` to ``fixed`` (:class:`~jaxmed.data.Volume` s conformed to the run's voxel
        size) from the identity about ``centre`` (world mm of ``fixed``; default its grid centre):
        ``(matrix (4, 4) fixed world -> moving world, seconds of the episode, steps taken)``."""
        from jaxmed.data import Landmarks, build_bank
        from jaxmed.registration_baseline import grid_centre

        c = grid_centre(fixed) if centre is None else np.asarray(centre, np.float64).reshape(3)
        if not fixed.contains(c[None])[0]:
            raise ConfigError(f"--centre {np.round(c, 1).tolist()} mm lies outside the fixed image {fixed.source}")
        n = len(self.labels)
        stand_in = Landmarks(self.labels, np.repeat(c[None], n, axis=0), source="registration centre")
        moving_lm = Landmarks(self.labels, np.repeat(grid_centre(moving)[None], n, axis=0), source="moving image centre (unused)")
        data = self.cfg.data
        bank = build_bank([(fixed, stand_in), (moving, moving_lm)], self.labels, factors=data.factors, max_crop=self.env.max_crop,
                          dtype=data.dtype, full_scale=data.intensity_ceiling)
        state = jax.tree.map(lambda x: x[None], self.env.pair_state(bank, 0, 1))
        t0 = time.perf_counter()
        res = jax.block_until_ready(self._episode(self.params, bank, state))
        seconds = time.perf_counter() - t0
        final = jax.tree.map(lambda x: x[0], res["final_state"])
        matrix = np.asarray(self.env.transform_world(final, bank), np.float64)
        return matrix, seconds, int(res["steps"][0])
