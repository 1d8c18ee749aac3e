"""Hyperparameter search with vmapped populations and successive halving (``jaxmed sweep``).

* :mod:`jaxmed.sweep.space` — ``SPACE.yaml`` -> sampled trials, grouped by compiled program;
* :mod:`jaxmed.sweep.population` — one group's trials trained inside one jitted, vmapped program;
* :mod:`jaxmed.sweep.halving` — successive halving / Hyperband brackets (pure Python);
* :mod:`jaxmed.sweep.runner` — the resumable driver and its result files.

Learners: DQN (its numeric hyperparameters are :class:`jaxmed.agents.dqn.Hparams` leaves of the
runner state). A policy-gradient learner joins once its module provides the same plumbing:
``HPARAM_FIELDS``, ``default_hparams(config)``, ``stack_hparams(list)`` and
``make_train(...).init(key, bank, hparams=None)`` reading the values from the runner state.
"""

from jaxmed.sweep.halving import Rung, hyperband, run_bracket, select, successive_halving
from jaxmed.sweep.space import Space
from jaxmed.sweep.runner import run_sweep

__all__ = ["Rung", "Space", "hyperband", "run_bracket", "run_sweep", "select", "successive_halving"]
