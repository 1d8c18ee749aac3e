"""``data.source: phantom`` — synthetic subjects made from a blob phantom with landmarks ``L0..L3``
(:func:`jaxmed.data.phantoms.blob_phantom`): fast unit tests and smoke runs."""

from __future__ import annotations

import dataclasses

from jaxmed.data.sources.base import register
from jaxmed.data.sources.synthetic import SyntheticSource, SynthOptions
from jaxmed.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class PhantomOptions(SynthOptions):
    """``phantom_shape``: the phantom's grid (voxels at ``data.spacing``); and ``synth`` (:class:`SynthOptions`)."""

    phantom_shape: tuple[int, ...] = (32, 32, 32)

    def check(self, cfg, where: str) -> None:
        if len(self.phantom_shape) != 3 or min(self.phantom_shape) < 8:
            raise ConfigError(f"{where}.phantom_shape: expected three sizes >= 8 voxels, got {list(self.phantom_shape)}")
        super().check(cfg, where)


@register
class PhantomSource(SyntheticSource):
    name = "phantom"
    Options = PhantomOptions
    summary = "synthetic subjects from a blob phantom (landmarks L0..L3); seconds to build"

    def load_reference(self):
        from jaxmed.data.phantoms import blob_phantom

        return blob_phantom(shape=tuple(self.options.phantom_shape), spacing=self.cfg.spacing, n_landmarks=4, seed=self.cfg.seed)
