"""What every data source provides: labelled subjects by split, and optionally a template.

A *source* turns a :class:`~jaxmed.data.sources.config.DataConfig` into subjects: a conformed
(RAS voxel order, isotropic ``spacing`` mm, intensities normalised to ~[0, 1]) :class:`Volume` with
its :class:`Landmarks` in world RAS mm. Sources register a class under a name
(:func:`register`); each declares its own ``data.*`` keys as a frozen dataclass ``Options``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

from jaxmed.data.landmarks import Landmarks
from jaxmed.data.volume import Volume
from jaxmed.errors import ConfigError

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class LabelledSubject:
    """One subject ready for a volume bank.

    Attributes:
      name: unique within its source and split (``"sub-03"``, ``"train-000000"``, ``"colin27"``).
      volume: conformed image: RAS voxel order, isotropic ``data.spacing`` mm, normalised ~[0, 1].
      landmarks: the requested labels, in the requested order, world RAS mm, inside ``volume``.
      meta: where it came from: ``source`` (paths or a description), ``split``, ``fold`` (cross-
        validation), ``seed`` (synthesis or augmentation seed), ``augmented_from`` ... (JSON-able).
    """

    name: str
    volume: Volume
    landmarks: Landmarks
    meta: dict = dataclasses.field(default_factory=dict)

    def pair(self) -> tuple[Volume, Landmarks]:
        """``(volume, landmarks)``, the form :func:`jaxmed.data.build_bank` and older code take."""
        return self.volume, self.landmarks


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A source without options of its own."""


class Source:
    """Base class of data sources. Subclasses set :attr:`name`, :attr:`Options` and implement
    :meth:`subjects`; those with an atlas implement :meth:`reference`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: one line for ``jaxmed data list``
    summary: ClassVar[str] = ""

    def __init__(self, cfg):
        self.cfg = cfg
        self.options = cfg.options
        self._reference = None

    def subjects(self, split: str, labels: Sequence[str], *, epoch: int = 0, n: int | None = None) -> list[LabelledSubject]:
        """The subjects of ``split`` (``train`` / ``val`` / ``test``) with ``labels``.

        ``epoch > 0`` gives fresh augmented (synthetic sources: freshly drawn) copies of the training
        split; other splits do not change with ``epoch``. ``n`` overrides the configured count for
        sources that synthesise subjects (``data.n_train`` / ``data.n_test``); sources of fixed
        subjects on disk ignore it.
        """
        raise NotImplementedError

    def load_reference(self) -> tuple[Volume, Landmarks] | None:
        """Load the atlas (not conformed; normalised; every label it has), or ``None``."""
        return None

    def reference(self) -> tuple[Volume, Landmarks] | None:
        """The atlas subjects are drawn from / whose coordinates are the template prior, as loaded
        (its own grid, every label), cached per source object; ``None`` if the source has none.
        Callers must not mutate it."""
        if self._reference is None:
            self._reference = self.load_reference() or False
        return self._reference or None

    def template(self, labels: Sequence[str] | None = None) -> LabelledSubject | None:
        """The atlas conformed to ``data.spacing`` with ``labels`` (all when ``None``), or ``None``."""
        from jaxmed.data.image_io import conform

        ref = self.reference()
        if ref is None:
            return None
        volume, landmarks = ref
        if labels is not None:
            check_labels(landmarks, labels, f"the {self.cfg.source} template")
            landmarks = landmarks.select(labels)
        return LabelledSubject("template", conform(volume, self.cfg.spacing), landmarks,
                               {"source": volume.source, "split": "template"})

    def labels(self) -> tuple[str, ...]:
        """Landmark labels this source's subjects carry (the template's, for synthetic sources)."""
        ref = self.reference()
        return ref[1].labels if ref is not None else ()


def check_labels(landmarks: Landmarks, labels: Sequence[str], what: str) -> None:
    """:class:`ConfigError` if ``labels`` are not all in ``landmarks`` (the message lists the available ones)."""
    missing = [l for l in labels if l not in landmarks.labels]
    if missing:
        raise ConfigError(f"env.targets {missing} are not landmarks of {what}; available: {', '.join(landmarks.labels)}")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: expected one of {', '.join(SPLITS)}")


_REGISTRY: dict[str, type[Source]] = {}


def register(cls: type[Source]) -> type[Source]:
    """Register a :class:`Source` subclass under ``cls.name`` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a source needs a name")
    if not dataclasses.is_dataclass(cls.Options):
        raise ValueError(f"{cls.__name__}.Options must be a dataclass")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> tuple[str, ...]:
    """Registered source names, in registration order."""
    return tuple(_REGISTRY)


def source_class(name: str) -> type[Source]:
    """The class registered as ``name``; :class:`ConfigError` listing the names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"data.source must be one of {', '.join(_REGISTRY)}, got {name!r}") from None


def option_fields(name: str) -> dict[str, Any]:
    """``{key: default}`` of a source's own ``data.*`` keys."""
    out = {}
    for f in dataclasses.fields(source_class(name).Options):
        out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return out
