"""Successive halving and Hyperband brackets (Jamieson & Talwalkar 2016; Li et al. 2018), budget in chunks.

Pure Python: a bracket is a list of :class:`Rung` s (how many trials train up to which cumulative
budget); :func:`select` keeps the best trials of a rung by a metric; :func:`run_bracket` drives one
bracket with any ``train_to`` function (the sweep runner passes a vmapped population, the tests a
toy objective).
"""

from __future__ import annotations

import math
from typing import Callable, Hashable, Iterable, NamedTuple, Sequence

from jaxmed.errors import ConfigError


class Rung(NamedTuple):
    """``n`` trials train until they have used ``budget`` chunks in total (cumulative)."""

    n: int
    budget: int


def successive_halving(n_trials: int, min_budget: int, max_budget: int, eta: int = 2) -> list[Rung]:
    """Rungs ``i = 0, 1, ...``: ``floor(n_trials / eta^i)`` trials at ``min_budget * eta^i`` chunks,
    until one trial is left or the budget reaches ``max_budget`` (the last rung is capped at it)."""
    if n_trials < 1 or min_budget < 1 or max_budget < min_budget or eta < 2:
        raise ConfigError(f"successive halving needs n_trials >= 1, 1 <= min_budget <= max_budget and eta >= 2; "
                          f"got n_trials={n_trials}, min_budget={min_budget}, max_budget={max_budget}, eta={eta}")
    rungs, n, budget = [], n_trials, min_budget
    while True:
        rungs.append(Rung(n, min(budget, max_budget)))
        if n == 1 or budget >= max_budget:
            return rungs
        n, budget = max(n // eta, 1), budget * eta


def hyperband(min_budget: int, max_budget: int, eta: int = 2) -> list[list[Rung]]:
    """Hyperband's brackets, most exploratory first: bracket ``s = s_max .. 0`` starts
    ``ceil((s_max + 1) / (s + 1) * eta^s)`` trials at ``max_budget / eta^s`` chunks and halves them
    (``s_max = floor(log_eta(max_budget / min_budget))``)."""
    if min_budget < 1 or max_budget < min_budget or eta < 2:
        raise ConfigError(f"hyperband needs 1 <= min_budget <= max_budget and eta >= 2; got {min_budget}, {max_budget}, {eta}")
    s_max = int(math.floor(math.log(max_budget / min_budget, eta) + 1e-9))
    brackets = []
    for s in range(s_max, -1, -1):
        n = int(math.ceil((s_max + 1) / (s + 1) * eta**s))
        r = max(int(round(max_budget / eta**s)), 1)
        brackets.append(successive_halving(n, r, max_budget, eta))
    return brackets


def select(metrics: dict[Hashable, float], keep: int, mode: str = "min") -> list:
    """The ``keep`` best trial ids by metric (``mode``: ``min`` or ``max``), in their original order.

    NaN counts as the worst value; ties keep the earlier trial."""
    if mode not in ("min", "max"):
        raise ConfigError(f"metric mode must be 'min' or 'max', got {mode!r}")
    ids = list(metrics)
    sign = 1.0 if mode == "min" else -1.0

    def score(i):
        v = metrics[i]
        return (1, 0.0, ids.index(i)) if v is None or math.isnan(v) else (0, sign * v, ids.index(i))

    best = set(sorted(ids, key=score)[:keep])
    return [i for i in ids if i in best]


def run_bracket(ids: Sequence, rungs: Sequence[Rung], train_to: Callable[[list, int], dict], mode: str = "min",
                start: int = 0, alive: Iterable | None = None, on_rung: Callable[[int, dict, list], None] | None = None) -> list:
    """Run the rungs ``start ..`` of one bracket and return the trial ids alive after the last one.

    ``train_to(ids, budget) -> {id: metric}`` trains the given trials up to ``budget`` cumulative
    chunks (continuing from their state) and measures them. After rung ``i`` the best
    ``rungs[i + 1].n`` trials survive. ``alive`` (the survivors of rung ``start - 1``) resumes a
    bracket; ``on_rung(i, metrics, survivors)`` is called after every rung (checkpointing).
    """
    alive = list(ids if alive is None else alive)
    for i in range(start, len(rungs)):
        metrics = train_to(alive, rungs[i].budget)
        keep = rungs[i + 1].n if i + 1 < len(rungs) else len(alive)
        alive = select({t: metrics[t] for t in alive}, min(keep, len(alive)), mode)
        if on_rung is not None:
            on_rung(i, metrics, alive)
    return alive
