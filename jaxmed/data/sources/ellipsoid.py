"""``data.source: ellipsoid`` — synthetic subjects made from an ellipsoid "organ" phantom whose
surface points ``organ#000 ...`` are the landmarks (box targets;
:func:`jaxmed.data.phantoms.ellipsoid_phantom`)."""

from __future__ import annotations

from jaxmed.data.sources.base import register
from jaxmed.data.sources.phantom import PhantomOptions
from jaxmed.data.sources.synthetic import SyntheticSource


@register
class EllipsoidSource(SyntheticSource):
    name = "ellipsoid"
    Options = PhantomOptions
    summary = "synthetic subjects from an ellipsoid organ phantom (surface points organ#i: box targets)"

    def load_reference(self):
        from jaxmed.data.phantoms import ellipsoid_phantom

        return ellipsoid_phantom(shape=tuple(self.options.phantom_shape), spacing=self.cfg.spacing, seed=self.cfg.seed)
