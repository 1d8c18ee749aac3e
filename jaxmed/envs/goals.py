"""What the goal-conditioned envs (:mod:`jaxmed.envs.goal_landmark`, :mod:`jaxmed.envs.goal_plane`)
share: the goal reference volume, per-goal result rows.

Their static config carries ``goals`` (the names an episode may ask for: landmark labels or plane
names) and ``reference_volume`` (the bank index of the annotated image the goal observations are cut
from); their states carry ``goal`` (``(A,)`` or ``()`` int32 index into ``goals``, ``-1`` for a goal
given by example only).
"""

from __future__ import annotations

import numpy as np

from jaxmed.envs.base import ConfiguredEnv
from jaxmed.errors import ConfigError


def check_goal_config(config, what: str) -> tuple[str, ...]:
    """Check the ``goals`` and ``reference_volume`` of a goal-conditioned env's frozen config and store
    ``goals`` as a tuple of names (a single name becomes a 1-tuple); ``what`` names a goal in
    messages (``"landmark label"``, ``"plane"``). Returns the goals."""
    cls = type(config).__name__
    goals = (config.goals,) if isinstance(config.goals, str) else tuple(str(g) for g in config.goals)
    object.__setattr__(config, "goals", goals)
    if not goals:
        raise ConfigError(f"{cls}: goals is empty; give the {what}s an episode may ask for")
    if len(set(goals)) != len(goals):
        raise ConfigError(f"{cls}: goals repeat a {what}: {goals}")
    ref = config.reference_volume
    if not isinstance(ref, (int, np.integer)) or isinstance(ref, bool) or ref < 0:
        raise ConfigError(f"{cls}: reference_volume must be a bank index >= 0, got {ref!r}")
    return goals


class NavFields:
    """For a goal-conditioned state that wraps the state ``nav`` of the env it runs: the fields learners
    and tools read from any state (``done`` for the replay's ``valid`` flags, ``volume``, ``t``)."""

    done = property(lambda self: self.nav.done)
    volume = property(lambda self: self.nav.volume)
    t = property(lambda self: self.nav.t)


class GoalConditionedEnv(ConfiguredEnv):
    """Base of the goal-conditioned envs: the goal changes per episode, so result rows are per goal."""

    @property
    def metric_labels(self) -> tuple[str, ...]:
        """``"goal"`` per agent: which goal a row holds is decided per episode (see :meth:`metric_stats`)."""
        return ("goal",) * self.n_agents

    @property
    def wants_reference(self) -> bool:
        """Whether bank volume ``config.reference_volume`` must be the annotated reference the goal
        observations are cut from: an experiment builds such a bank as ``[template] + subjects`` when
        the reference is volume 0 (the default); episodes never run in it."""
        return self.config.reference_volume == 0

    def check_reference_volume(self, bank, cut: str) -> None:
        """:class:`ConfigError` unless ``bank`` holds the reference volume (``config.reference_volume``,
        the annotated image the goal observations, ``cut`` (e.g. ``"crops"``), are cut from) and at
        least one other volume to navigate in (host side)."""
        n = bank.levels[0].shape[0]
        if n < 2 or self.config.reference_volume >= n:
            raise ConfigError(
                f"{self.name}: the bank holds {n} volume(s); it needs the reference volume (index "
                f"{self.config.reference_volume}, the annotated image goal {cut} are cut from) and at least one other to navigate in"
            )

    def metric_stats(self, states, values, metric: str) -> dict:
        """Per-goal statistics (:func:`jaxmed.envs.metrics.metric_stats`, one row per goal name, ``"custom"``
        for goals given by example) of ``values`` ``(E, A)``, the metric of the episodes started from
        ``states`` (their ``goal`` decides the row)."""
        from jaxmed.envs.metrics import metric_stats

        goal = np.asarray(states.goal).reshape(-1)
        values = np.asarray(values, np.float64).reshape(-1)
        names = np.array([self.config.goals[g] if g >= 0 else "custom" for g in goal])
        out = {}
        for label in dict.fromkeys(names.tolist()):
            out.update(metric_stats(values[names == label][:, None], [label], metric))
        return out
