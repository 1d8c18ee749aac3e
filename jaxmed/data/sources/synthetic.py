"""Sources whose subjects are drawn from one template by :mod:`jaxmed.data.synth`.

Train, validation and test subjects come from disjoint seed ranges of ``data.seed``
(:func:`jaxmed.data.synth.split_seeds`); epoch ``k`` of the training split draws the next block of
``n`` training seeds, so every epoch's subjects are new and still disjoint from the test split.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from jaxmed.config import build
from jaxmed.data.sources.base import LabelledSubject, Source, check_labels, check_split
from jaxmed.data.synth import SynthConfig, split_seeds, synthesize_subject
from jaxmed.errors import ConfigError


def synth_config(options: dict | None, where: str = "data.synth") -> SynthConfig:
    """A :class:`SynthConfig` from a ``synth:`` mapping of overrides (empty: the defaults)."""
    return build(SynthConfig, options or {}, where)


def epoch_seeds(split: str, n: int, base_seed: int, epoch: int) -> list[int]:
    """Seeds of ``n`` subjects of ``split``; for the training split, epoch ``k`` takes seeds
    ``k n .. (k + 1) n - 1`` of the split's range (epoch 0: exactly :func:`split_seeds`)."""
    if epoch < 0:
        raise ConfigError(f"epoch must be >= 0, got {epoch}")
    if split != "train" or epoch == 0:
        return split_seeds(split, n, base_seed)
    return split_seeds(split, n * (epoch + 1), base_seed)[n * epoch:]


@dataclasses.dataclass(frozen=True)
class SynthOptions:
    """The ``data.*`` key every synthetic source has: ``synth``, :class:`SynthConfig` overrides (a
    mapping of its fields) that change the subject model. A source with keys of its own subclasses it
    and extends :meth:`check`."""

    synth: dict = dataclasses.field(default_factory=dict)

    def check(self, cfg, where: str) -> None:
        synth_config(self.synth, f"{where}.synth")


class SyntheticSource(Source):
    """Subjects synthesised from :meth:`reference` (random affine + elastic warp, bias field, gamma,
    noise, voxel size, orientation and field of view; landmarks carried exactly). Subclasses implement
    :meth:`load_reference`; their ``Options`` are :class:`SynthOptions` or a subclass of it."""

    Options = SynthOptions

    def synth_config(self) -> SynthConfig:
        return synth_config(self.options.synth)

    def count(self, split: str) -> int:
        return self.cfg.n_train if split == "train" else self.cfg.n_test

    def subjects(self, split: str, labels: Sequence[str], *, epoch: int = 0, n: int | None = None) -> list[LabelledSubject]:
        from jaxmed.data.image_io import conform

        check_split(split)
        volume, landmarks = self.reference()
        check_labels(landmarks, labels, f"the {self.cfg.source} template")
        landmarks = landmarks.select(labels)
        n = self.count(split) if n is None else int(n)
        config = self.synth_config()
        out = []
        for i, seed in enumerate(epoch_seeds(split, n, self.cfg.seed, epoch)):
            s = synthesize_subject(volume, landmarks, seed, config)
            out.append(LabelledSubject(f"{split}-{i:04d}", conform(s.volume, self.cfg.spacing), s.landmarks,
                                       {"source": s.volume.source, "split": split, "seed": seed, "epoch": epoch}))
        return out
