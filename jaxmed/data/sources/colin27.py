"""``data.source: colin27`` — Colin27, the MNI single-subject brain (one person, 27 averaged scans),
with and without skull, and its 32 AFIDs: a real, different brain to evaluate on. The files are
fetched, verified and read by :mod:`jaxmed.data.colin27`. Every subject is in the test split (an
evaluation set); the template (the prior) is the AFIDs MNI template, whose space Colin27 shares.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxmed.data.colin27 import IMAGES, LANDMARK_RESOURCE, fetch, landmarks, load
from jaxmed.data.sources.afids import afids_template
from jaxmed.data.sources.base import LabelledSubject, Source, check_labels, check_split, register
from jaxmed.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Colin27Options:
    """``images``: which Colin27 images are subjects: ``ch2`` (with skull, ``colin27``) and/or
    ``ch2bet`` (skull-stripped, ``colin27-bet``). ``structures``: AAL structures ``aal:<name>`` carried
    as surface points of Colin27's own AAL labels (box targets; :mod:`jaxmed.data.aal_targets`)."""

    images: tuple[str, ...] = ("ch2", "ch2bet")
    structures: tuple[str, ...] = ()

    def check(self, cfg, where: str) -> None:
        bad = [i for i in self.images if i not in IMAGES]
        if bad or not self.images or len(set(self.images)) != len(self.images):
            raise ConfigError(f"{where}.images: expected distinct names from {', '.join(IMAGES)}, got {list(self.images)}")
        if self.structures:
            from jaxmed.data.aal_targets import check_structures, is_aal

            check_structures(self.structures, f"{where}.structures")
            other = [s for s in self.structures if not is_aal(s)]
            if other:
                raise ConfigError(f"{where}.structures: Colin27 carries only AAL structures (aal:<name>), got {other}")


@register
class Colin27Source(Source):
    name = "colin27"
    Options = Colin27Options
    summary = "Colin27 with and without skull + its 32 AFIDs: a real brain, test split only (Debian mricron-data)"

    def load_reference(self):
        return afids_template(self.options.structures)  # only aal: structures (Options.check)

    def _landmarks(self):
        lm = landmarks()
        if self.options.structures:
            from jaxmed.data.aal_targets import append, colin27_points

            lm = append(lm, colin27_points(self.options.structures))
        return lm

    def labels(self) -> tuple[str, ...]:
        return self._landmarks().labels

    def subjects(self, split: str, labels: Sequence[str], *, epoch: int = 0, n: int | None = None) -> list[LabelledSubject]:
        check_split(split)
        if split != "test":
            raise ConfigError(f"data.source colin27 is an evaluation set: all its subjects are in the test split, "
                              f"none in {split!r}; train on another source and evaluate with `--data colin27`")
        lm = self._landmarks()
        check_labels(lm, labels, "Colin27")
        files = fetch()
        out = []
        for image in self.options.images:
            volume, _ = load(image, spacing=self.cfg.spacing)
            out.append(LabelledSubject(IMAGES[image], volume, lm.select(labels),
                                       {"source": str(files[image]), "split": "test", "landmarks": LANDMARK_RESOURCE}))
        return out
