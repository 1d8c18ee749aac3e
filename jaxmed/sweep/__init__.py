"""Hyperparameter search with vmapped populations and successive halving (``jaxmed sweep``).

* :mod:`jaxmed.sweep.space` — ``SPACE.yaml`` -> sampled trials, grouped by compiled program;
* :mod:`jaxmed.sweep.population` — one group's trials trained inside one jitted, vmapped program,
  the trial axis sharded over the devices (every device of every process under ``jax.distributed``);
* :mod:`jaxmed.sweep.checkpoint` — population checkpoints, each process writing its own rows;
* :mod:`jaxmed.sweep.cluster` — process 0 writes the files and broadcasts what it read;
* :mod:`jaxmed.sweep.halving` — successive halving / Hyperband brackets (pure Python);
* :mod:`jaxmed.sweep.runner` — the resumable driver and its result files.

Learners: any learner module with hyperparameter leaves in its runner state (:mod:`jaxmed.agents.hparams`):
``HPARAM_FIELDS``, ``default_hparams(config)``, ``stack_hparams(list)`` and
``make_train(...).init(key, bank, hparams=None)`` reading the values from the runner state
(DQN; A2C / PPO / GRPO).
"""

from jaxmed.sweep.halving import Rung, hyperband, run_bracket, select, successive_halving
from jaxmed.sweep.runner import run_sweep
from jaxmed.sweep.space import Space

__all__ = ["Rung", "Space", "hyperband", "run_bracket", "run_sweep", "select", "successive_halving"]
