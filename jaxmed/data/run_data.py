"""A run's data: the subjects of a ``data:`` config and the volume banks an environment asks for.

An environment says what its bank must hold through a few attributes (duck-typed, so this layer
imports nothing above it): ``required_labels`` (landmarks to carry), ``max_crop`` (the largest crop
edge, voxels: the bank's margin), ``wants_reference`` (goal-conditioned envs: the template is bank
volume 0), ``wants_packed_bank`` (all levels in one buffer) and ``wants_label_bank`` (segmentation
envs: image and label crops of ``config.structure``, ``config.crop_size`` voxels wide).
:func:`make_bank` builds that bank for a split; :class:`EpochBanks` keeps the training bank of each
epoch of a run that refreshes its subjects (``train.refresh_every``) at one padded shape.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

from jaxmed.data import sources
from jaxmed.data.sources import DataConfig
from jaxmed.errors import ConfigError


def template(cfg: DataConfig):
    """``(Volume, Landmarks)`` of the source's template (the atlas subjects are made from, whose
    coordinates are the template prior): as loaded (its own grid, normalised, every label), once per
    process and data config; ``None`` for a source without one (``files`` without ``template``).
    Callers must not mutate it."""
    return sources.make(cfg).reference()


def make_subjects(cfg: DataConfig, split: str, n: int, labels: Sequence[str], *, epoch: int = 0) -> list:
    """Conformed ``(Volume, Landmarks)`` pairs of ``split`` (train / val / test) with ``labels``:
    ``n`` subjects for synthetic sources, the split's subjects for sources on disk (``n`` unused);
    ``epoch > 0``: fresh augmented / synthesised training subjects."""
    return [s.pair() for s in sources.make(cfg).subjects(split, labels, epoch=epoch, n=n)]


def template_subject(cfg: DataConfig, labels: Sequence[str]) -> tuple:
    """The template as one more conformed ``(Volume, Landmarks)`` subject with ``labels``: the annotated
    reference (bank volume 0) of goal-conditioned envs."""
    subject = sources.make(cfg).template(labels)
    if subject is None:
        raise ConfigError(f"data.source {cfg.source} has no template; this env needs one as its reference "
                          f"(files source: set data.template, e.g. afids for scans in MNI space)")
    return subject.pair()


def seg_template(cfg: DataConfig, structure: str):
    """``(template Volume, structure mask)`` a segmentation run's subjects are synthesised from: an AAL
    structure (:data:`jaxmed.data.structures.AAL_STRUCTURES`, e.g. ``caudate_l``) on Colin27 at
    ``data.spacing`` (``jaxmed data fetch colin27``), else the source's template with its mask-defined
    structure (an ellipsoid phantom's organ, an AFIDs structure)."""
    from jaxmed.data.structures import AAL_STRUCTURES, colin27_structure, template_structure_mask

    if structure in AAL_STRUCTURES:
        return colin27_structure(structure, cfg.spacing)
    volume, landmarks = template(cfg)
    return volume, template_structure_mask(volume, landmarks, structure)


def make_bank(cfg: DataConfig, env: Any, split: str, n: int, *, epoch: int = 0) -> tuple:
    """``(bank, subjects, seconds)``: ``n`` subjects of ``split`` (see :func:`make_subjects`) in the bank
    ``env`` asks for (module docstring): its landmarks, its crop margin, the template first for an env
    that ``wants_reference`` (goal-conditioned), image and label crops for a segmentation env.
    ``subjects``: the subjects' conformed ``(Volume, Landmarks)`` pairs (segmentation: their crops);
    ``seconds``: wall time of building it."""
    from jaxmed.data.bank import build_bank

    t0 = time.perf_counter()
    if getattr(env, "wants_label_bank", False):  # segmentation envs: image + label crops (jaxmed.data.structures)
        from jaxmed.data.structures import build_seg_bank, seg_subjects

        volume, mask = seg_template(cfg, env.config.structure)
        subjects = seg_subjects(volume, mask, n, split=split, base_seed=cfg.seed, crop_size=env.config.crop_size,
                                spacing=cfg.spacing, name=env.config.structure)
        return build_seg_bank(subjects, env.config.structure, cfg.dtype), subjects, time.perf_counter() - t0
    labels = env.required_labels
    subjects = make_subjects(cfg, split, n, labels, epoch=epoch)
    # goal-conditioned envs cut their goal images from bank volume 0: make it the template
    volumes = [template_subject(cfg, labels)] + subjects if env.wants_reference else subjects
    bank = build_bank(volumes, labels, factors=cfg.factors, max_crop=env.max_crop, dtype=cfg.dtype,
                      packed=env.wants_packed_bank, full_scale=cfg.intensity_ceiling)
    return bank, subjects, time.perf_counter() - t0


class EpochBanks:
    """The training bank of each epoch of a run whose subjects are refreshed every ``every`` chunks
    (epoch ``k = chunk // every``), all padded to one shape (bucketed with headroom,
    :meth:`jaxmed.data.bank.VolumeBank.bucket_shapes`) so a compiled chunk function never recompiles; a
    later epoch's bank that does not fit grows the shape (one recompilation, reported on stderr).

    ``first``: the bank of epoch 0; ``make(epoch)``: the bank of a later epoch (fresh subjects).
    The bank of a chunk is a function of the chunk alone, so a resumed run sees the same banks.
    """

    def __init__(self, first, every: int, make: Callable[[int], Any]):
        self.every, self._make = int(every), make
        self.shapes = first.bucket_shapes()
        self.epoch, self.bank = 0, self._fit(first)
        self.epochs_built = [0]

    def _fit(self, bank):
        grown = [tuple(max(int(a), int(b)) for a, b in zip(s, o)) for s, o in zip(self.shapes, bank.level_shapes)]
        if grown != self.shapes:
            print(f"train.refresh_every: the new subjects need a larger bank {grown} than {self.shapes}: one recompilation",
                  file=sys.stderr)
            self.shapes = grown
        return bank.padded_to(self.shapes)

    def for_chunk(self, chunk: int):
        """The (padded) bank chunk ``chunk`` trains on; builds the epoch's bank on its first chunk."""
        epoch = chunk // self.every
        if epoch != self.epoch:
            self.epoch, self.bank = epoch, self._fit(self._make(epoch))
            self.epochs_built.append(epoch)
        return self.bank

    def starts_epoch(self, chunk: int) -> bool:
        """Whether ``chunk`` is the first of a new epoch (not epoch 0): what was collected on the old
        subjects is no longer valid."""
        return chunk > 0 and chunk % self.every == 0
