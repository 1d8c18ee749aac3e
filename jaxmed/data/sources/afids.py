"""``data.source: afids`` — synthetic subjects made from the AFIDs MNI152NLin2009cAsym T1 template
(32 expert landmarks; :mod:`jaxmed.data.afids`), optionally with anatomical structures carried as
surface points (``structures``, box targets; :mod:`jaxmed.data.anatomy`)."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxmed.data.landmarks import Landmarks
from jaxmed.data.sources.base import register
from jaxmed.data.sources.synthetic import SyntheticSource, SynthOptions
from jaxmed.data.volume import Volume
from jaxmed.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AfidsOptions(SynthOptions):
    """``structures``: anatomical structures carried as surface points ``"<structure>#i"`` (box
    targets; :data:`jaxmed.data.anatomy.STRUCTURES`, or ``aal:<name>`` AAL structures carried from
    Colin27, :mod:`jaxmed.data.aal_targets`); and ``synth`` (:class:`SynthOptions`)."""

    structures: tuple[str, ...] = ()

    def check(self, cfg, where: str) -> None:
        if self.structures:
            from jaxmed.data.aal_targets import check_structures, is_aal
            from jaxmed.data.anatomy import STRUCTURES

            check_structures(self.structures, f"{where}.structures")
            unknown = [s for s in self.structures if s not in STRUCTURES and not is_aal(s)]
            if unknown:
                raise ConfigError(f"{where}.structures: unknown structure(s) {unknown}; available: {', '.join(STRUCTURES)}")
        super().check(cfg, where)


@register
class AfidsSource(SyntheticSource):
    name = "afids"
    Options = AfidsOptions
    summary = "synthetic subjects from the AFIDs MNI152NLin2009cAsym T1 template (32 landmarks; pip wheel afids-cnn)"

    def load_reference(self):
        return afids_template(self.options.structures)


def afids_template(structures: Sequence[str] = ()) -> tuple[Volume, Landmarks]:
    """The AFIDs MNI152NLin2009cAsym T1 template as loaded (:func:`jaxmed.data.afids.load`: normalised,
    not conformed) with its 32 landmarks (world RAS mm), followed by the surface points ``"<structure>#i"``
    of ``structures``: first those of :data:`jaxmed.data.anatomy.STRUCTURES` (from the template's own
    masks), then the ``aal:<name>`` ones (Colin27's AAL labels carried onto the template,
    :func:`jaxmed.data.aal_targets.template_points`). The reference of the ``afids`` source and the
    template (prior) of ``colin27``, which shares its space."""
    from jaxmed.data import afids
    from jaxmed.data.aal_targets import append, is_aal, template_points

    volume, landmarks = afids.load()
    mask_defined = [s for s in structures if not is_aal(s)]
    aal = [s for s in structures if is_aal(s)]
    if mask_defined:
        from jaxmed.data.anatomy import structure_landmarks

        extra = structure_landmarks(volume, landmarks, mask_defined)
        landmarks = Landmarks(landmarks.labels + extra.labels, np.concatenate([landmarks.positions, extra.positions]),
                              landmarks.descriptions + extra.descriptions, source=landmarks.source)
    if aal:
        landmarks = append(landmarks, template_points(landmarks, aal))
    return volume, landmarks
