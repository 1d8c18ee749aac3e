"""Named landmark sets in world RAS millimetres."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from jaxmed.errors import LandmarkError


@dataclasses.dataclass(frozen=True)
class Landmarks:
    """An ordered set of named points.

    Attributes:
      labels: ``n`` unique names (e.g. ``"AC"``).
      positions: ``(n, 3)`` float64, world RAS mm.
      descriptions: ``n`` free-text descriptions (may be empty strings).
      source: where the set came from, for error messages.
    """

    labels: tuple[str, ...]
    positions: np.ndarray
    descriptions: tuple[str, ...] = ()
    source: str = "<landmarks>"

    def __post_init__(self):
        labels = tuple(str(l) for l in self.labels)
        pos = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3) if len(labels) else np.zeros((0, 3))
        if pos.shape != (len(labels), 3):
            raise LandmarkError(f"{self.source}: {len(labels)} labels but positions of shape {np.shape(self.positions)}")
        if not np.all(np.isfinite(pos)):
            raise LandmarkError(f"{self.source}: landmark coordinates contain NaN or Inf")
        dup = sorted({l for l in labels if labels.count(l) > 1})
        if dup:
            raise LandmarkError(f"{self.source}: duplicate landmark labels {dup}")
        desc = tuple(str(d) for d in self.descriptions) or ("",) * len(labels)
        if len(desc) != len(labels):
            raise LandmarkError(f"{self.source}: {len(labels)} labels but {len(desc)} descriptions")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "positions", pos)
        object.__setattr__(self, "descriptions", desc)

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, label: str) -> int:
        """Position of ``label`` in this set; :class:`LandmarkError` naming the known labels if absent."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise LandmarkError(
                f"{self.source}: no landmark labelled {label!r}; available: {', '.join(self.labels)}"
            ) from None

    def __getitem__(self, label: str) -> np.ndarray:
        """World position ``(3,)`` of one landmark."""
        return self.positions[self.index(label)]

    def select(self, labels: Iterable[str]) -> "Landmarks":
        """The subset with the given labels, in the given order."""
        idx = [self.index(l) for l in labels]
        return Landmarks(
            tuple(self.labels[i] for i in idx),
            self.positions[idx],
            tuple(self.descriptions[i] for i in idx),
            self.source,
        )

    def with_positions(self, positions: np.ndarray, source: str | None = None) -> "Landmarks":
        """Same labels, new positions ``(n, 3)`` (world RAS mm)."""
        return Landmarks(self.labels, positions, self.descriptions, source or self.source)

    def check_inside(self, volume, labels: Sequence[str] | None = None) -> None:
        """Raise :class:`LandmarkError` if any landmark lies outside ``volume``'s voxel grid."""
        sub = self if labels is None else self.select(labels)
        inside = volume.contains(sub.positions)
        if not np.all(inside):
            bad = [f"{l} at {np.round(p, 2).tolist()} mm" for l, p, ok in zip(sub.labels, sub.positions, inside) if not ok]
            raise LandmarkError(f"{self.source}: landmarks outside the image {volume.source}: {'; '.join(bad)}")
