"""``data.source: afids`` — synthetic subjects made from the AFIDs MNI152NLin2009cAsym T1 template
(32 expert landmarks; :mod:`jaxmed.data.afids`), optionally with anatomical structures carried as
surface points (``structures``, box targets; :mod:`jaxmed.data.anatomy`)."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxmed.data.sources.base import register
from jaxmed.data.sources.synthetic import SyntheticSource, synth_config
from jaxmed.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AfidsOptions:
    """``structures``: anatomical structures carried as surface points ``"<structure>#i"`` (box
    targets; :data:`jaxmed.data.anatomy.STRUCTURES`). ``synth``: :class:`SynthConfig` overrides."""

    structures: tuple[str, ...] = ()
    synth: dict = dataclasses.field(default_factory=dict)

    def check(self, cfg, where: str) -> None:
        if self.structures:
            from jaxmed.data.anatomy import STRUCTURES

            unknown = [s for s in self.structures if s not in STRUCTURES]
            if unknown:
                raise ConfigError(f"{where}.structures: unknown structure(s) {unknown}; available: {', '.join(STRUCTURES)}")
        synth_config(self.synth, f"{where}.synth")


@register
class AfidsSource(SyntheticSource):
    name = "afids"
    Options = AfidsOptions
    summary = "synthetic subjects from the AFIDs MNI152NLin2009cAsym T1 template (32 landmarks; pip wheel afids-cnn)"

    def load_reference(self):
        from jaxmed.data import afids
        from jaxmed.data.landmarks import Landmarks

        volume, landmarks = afids.load()
        if self.options.structures:
            from jaxmed.data.anatomy import structure_landmarks

            extra = structure_landmarks(volume, landmarks, self.options.structures)
            landmarks = Landmarks(landmarks.labels + extra.labels, np.concatenate([landmarks.positions, extra.positions]),
                                  landmarks.descriptions + extra.descriptions, source=landmarks.source)
        return volume, landmarks
