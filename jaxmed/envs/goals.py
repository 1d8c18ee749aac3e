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
