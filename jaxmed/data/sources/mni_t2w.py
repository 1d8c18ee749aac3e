"""``data.source: mni-t2w`` — synthetic subjects made from the T2-weighted MNI152NLin2009cAsym 1 mm
template, whose landmarks are the T1 template's 32 AFIDs (both share one space). The files are
fetched, verified and read by :mod:`jaxmed.data.mni_t2w`.

The source draws ``n_train`` / ``n_test`` synthetic subjects from the T2w image with the population
machinery of :mod:`jaxmed.data.synth` (held-out seeds as for ``afids``); ``include_template: true``
adds the template itself to the test split. Its template (the prior) is the T2w image with the AFIDs.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxmed.data.mni_t2w import load
from jaxmed.data.sources.base import LabelledSubject, register
from jaxmed.data.sources.synthetic import SyntheticSource, SynthOptions


@dataclasses.dataclass(frozen=True)
class MniT2wOptions(SynthOptions):
    """``include_template``: add the template itself to the test split; and ``synth`` (:class:`SynthOptions`)."""

    include_template: bool = False


@register
class MniT2wSource(SyntheticSource):
    name = "mni-t2w"
    Options = MniT2wOptions
    summary = "the T2w MNI152NLin2009cAsym template (AFIDs landmarks) and synthetic subjects from it (pip wheel autoafids)"

    def load_reference(self):
        return load()

    def subjects(self, split: str, labels: Sequence[str], *, epoch: int = 0, n: int | None = None) -> list[LabelledSubject]:
        out = super().subjects(split, labels, epoch=epoch, n=n)
        if split == "test" and self.options.include_template:
            t = self.template(labels)
            out.append(dataclasses.replace(t, meta={**t.meta, "split": "test"}))
        return out
