"""``data.source: files`` — your own labelled scans on disk.

Where the subjects are (``root``):

* a directory with one folder per subject; in each folder ``image`` and ``landmarks`` are glob
  patterns that must match exactly one entry each (``"*T1w.nii.gz"``, ``"anat/*.fcsv"``; an image may
  be a DICOM series directory); the folder name is the subject name;
* or a manifest ``.csv`` / ``.tsv`` with a header ``subject,image,landmarks[,split]`` and paths
  relative to the manifest.

Images: anything :func:`jaxmed.data.load_image` reads (NIfTI, DICOM series), any orientation and
voxel size; each is conformed (RAS, ``data.spacing`` mm, percentile-normalised) once and cached on
disk (:mod:`jaxmed.data.subject_cache`). Landmarks: anything :func:`jaxmed.data.read_landmarks`
reads (``.fcsv``, ``.mrk.json``, CSV, JSON; RAS or LPS), matched to the run's labels by name after
``label_map`` (``{"1": AC, "2": PC}`` for sets that number their landmarks).

Splits, by subject: the manifest's ``split`` column (train / val / test) if it has one; else
cross-validation ``fold: [k, K]`` (subjects dealt into K seeded folds; test = fold k, train = the
others; :func:`folds` lists them); else a seeded shuffle cut by ``split_ratio`` (train, val, test
fractions). Training subjects can be augmented (``augment: {copies: N, ...}``) with the subject
model of :mod:`jaxmed.data.synth`, each subject being the template of its own copies; ``epoch``
``k`` draws fresh copies.

Every problem names the subject and its file: an unreadable image, NaN voxels, a landmark outside
its image, wrong landmark columns. Subjects that lack a required label are all listed in one error,
or dropped with a warning under ``skip_incomplete: true``.
"""

from __future__ import annotations

import csv
import dataclasses
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmed.data.sources.base import SPLITS, LabelledSubject, Source, check_split, names, register
from jaxmed.data.sources.synthetic import synth_config
from jaxmed.errors import ConfigError, ImageError, LandmarkError

MANIFEST_SUFFIXES = (".csv", ".tsv")
#: normalisation used for every files-source image (recorded in the cache key)
_NORMALISE = {"low_pct": 0.5, "high_pct": 99.5}


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    """``augment:`` of the files source: ``copies`` augmented copies per training subject per
    epoch; ``keep_original``: the unaugmented subjects stay in the training split; every other key
    is a :class:`~jaxmed.data.synth.SynthConfig` field (``max_rotation_deg``, ``warp_max_mm``, ...)."""

    copies: int = 0
    keep_original: bool = True
    synth: dict = dataclasses.field(default_factory=dict)

    @staticmethod
    def parse(mapping: dict, where: str) -> "AugmentOptions":
        mapping = dict(mapping or {})
        own = {k: mapping.pop(k) for k in ("copies", "keep_original") if k in mapping}
        copies = own.get("copies", 0)
        if isinstance(copies, bool) or not isinstance(copies, int) or copies < 0:
            raise ConfigError(f"{where}.copies: expected an integer >= 0, got {copies!r}")
        keep = own.get("keep_original", True)
        if not isinstance(keep, bool):
            raise ConfigError(f"{where}.keep_original: expected true/false, got {keep!r}")
        synth_config(mapping, where)  # validates the subject-model keys
        return AugmentOptions(copies, keep, mapping)


@dataclasses.dataclass(frozen=True)
class FilesOptions:
    """The files source's ``data.*`` keys (module docstring).

    Attributes:
      root: a directory of subject folders, or a manifest ``.csv`` / ``.tsv``.
      image, landmarks: glob patterns inside each subject folder (directory layout only).
      label_map: ``{label in the file: label used}``; unmapped labels keep their name.
      skip_incomplete: drop (with a warning) subjects that lack a required label instead of failing.
      split_ratio: ``(train, val, test)`` fractions of the seeded split (no split column, no fold).
      fold: ``[k, K]``: cross-validation fold ``k`` (0-based) of ``K``; test = fold k, train = the rest.
      augment: ``{copies: N, keep_original: true, <SynthConfig fields>}`` for the training split.
      template: a registered source whose template is this data's prior (``afids`` for scans in MNI
        space), or ``""`` for none.
      cache: keep conformed images in the on-disk subject cache.
    """

    root: str = ""
    image: str = "*.nii*"
    landmarks: str = "*.fcsv"
    label_map: dict = dataclasses.field(default_factory=dict)
    skip_incomplete: bool = False
    split_ratio: tuple[float, ...] = (0.8, 0.0, 0.2)
    fold: tuple[int, ...] = ()
    augment: dict = dataclasses.field(default_factory=dict)
    template: str = ""
    cache: bool = True

    def check(self, cfg, where: str) -> None:
        if not self.root:
            raise ConfigError(f"{where}.root: required for data.source files (a directory of subject folders or a manifest .csv/.tsv)")
        r = self.split_ratio
        if len(r) != 3 or min(r) < 0 or not abs(sum(r) - 1.0) < 1e-6:
            raise ConfigError(f"{where}.split_ratio: expected three fractions (train, val, test) >= 0 summing to 1, got {list(r)}")
        if self.fold and (len(self.fold) != 2 or self.fold[1] < 2 or not 0 <= self.fold[0] < self.fold[1]):
            raise ConfigError(f"{where}.fold: expected [k, K] with K >= 2 and 0 <= k < K, got {list(self.fold)}")
        AugmentOptions.parse(self.augment, f"{where}.augment")
        if self.template and (self.template == "files" or self.template not in names()):
            raise ConfigError(f"{where}.template: expected a source with a template ({', '.join(n for n in names() if n != 'files')}) "
                              f"or '', got {self.template!r}")


@dataclasses.dataclass(frozen=True)
class SubjectFiles:
    """One subject's files: ``name``, ``image`` (file or DICOM directory), ``landmarks`` and the
    manifest's ``split`` (``None`` without a split column)."""

    name: str
    image: Path
    landmarks: Path
    split: str | None = None


def _single(folder: Path, pattern: str, what: str) -> Path:
    matches = sorted(folder.glob(pattern))
    if len(matches) != 1:
        found = ", ".join(m.name for m in matches) if matches else "none"
        raise ConfigError(f"{folder}: expected exactly one {what} matching {pattern!r}, found {len(matches)} ({found}); "
                          f"set data.{what} to a pattern that matches one file per subject folder")
    return matches[0]


def _read_manifest(path: Path) -> list[SubjectFiles]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the manifest ({e})") from None
    rows = list(csv.reader([l for l in text.splitlines() if l.strip() and not l.startswith("#")], delimiter=delimiter))
    if not rows:
        raise ConfigError(f"{path}: empty manifest; expected a header subject,image,landmarks[,split]")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in ("subject", "image", "landmarks") if c not in header]
    if missing:
        raise ConfigError(f"{path}: manifest header {rows[0]} lacks column(s) {missing}; expected subject,image,landmarks[,split]")
    col = {c: header.index(c) for c in ("subject", "image", "landmarks", "split") if c in header}
    out, seen = [], set()
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ConfigError(f"{path}: line {lineno} has {len(row)} fields, the header {len(header)}")
        name = row[col["subject"]].strip()
        if not name or name in seen:
            raise ConfigError(f"{path}: line {lineno}: subject name {name!r} is empty or repeated")
        seen.add(name)
        split = row[col["split"]].strip().lower() if "split" in col else None
        if split is not None and split not in SPLITS:
            raise ConfigError(f"{path}: line {lineno} (subject {name}): split {split!r} is not one of {', '.join(SPLITS)}")
        paths = []
        for key in ("image", "landmarks"):
            p = Path(row[col[key]].strip())
            p = p if p.is_absolute() else path.parent / p
            if not p.exists():
                raise ConfigError(f"{path}: line {lineno} (subject {name}): {key} {p} not found")
            paths.append(p)
        out.append(SubjectFiles(name, paths[0], paths[1], split))
    if not out:
        raise ConfigError(f"{path}: the manifest lists no subjects")
    return out


def discover(options: FilesOptions) -> list[SubjectFiles]:
    """Every subject of ``options.root`` (manifest rows, or subject folders sorted by name)."""
    root = Path(options.root).expanduser()
    if not root.exists():
        raise ConfigError(f"{root}: data.root not found")
    if root.is_file():
        if root.suffix.lower() not in MANIFEST_SUFFIXES:
            raise ConfigError(f"{root}: data.root must be a directory of subject folders or a manifest .csv/.tsv")
        return _read_manifest(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ConfigError(f"{root}: no subject folders (expected one folder per subject holding "
                          f"{options.image!r} and {options.landmarks!r}, or point data.root at a manifest .csv/.tsv)")
    return [SubjectFiles(f.name, _single(f, options.image, "image"), _single(f, options.landmarks, "landmarks")) for f in folders]


def _shuffled(names_: Sequence[str], seed: int) -> list[str]:
    order = np.random.default_rng([int(seed), 0x5EED]).permutation(len(names_))
    ordered = sorted(names_)
    return [ordered[i] for i in order]


def fold_names(subject_names: Sequence[str], n_folds: int, seed: int) -> list[tuple[str, ...]]:
    """Deal subjects into ``n_folds`` disjoint folds covering them all (seeded shuffle, then round
    robin: fold sizes differ by at most one); each fold's names sorted."""
    if n_folds < 2 or n_folds > len(subject_names):
        raise ConfigError(f"cross-validation: {n_folds} folds for {len(subject_names)} subjects; need 2 <= K <= subjects")
    shuffled = _shuffled(subject_names, seed)
    return [tuple(sorted(shuffled[i::n_folds])) for i in range(n_folds)]


def assign_splits(subjects: Sequence[SubjectFiles], options: FilesOptions, seed: int) -> dict[str, str]:
    """``{subject name: split}`` by the manifest's split column, else the fold, else the seeded ratio."""
    names_ = [s.name for s in subjects]
    with_split = [s for s in subjects if s.split is not None]
    if with_split:
        if options.fold:
            raise ConfigError(f"{options.root}: the manifest has a split column and data.fold is set; use one of them")
        return {s.name: s.split for s in subjects}
    if options.fold:
        k, n_folds = options.fold
        test = set(fold_names(names_, n_folds, seed)[k])
        return {n: ("test" if n in test else "train") for n in names_}
    shuffled = _shuffled(names_, seed)
    n = len(shuffled)
    n_test = int(round(options.split_ratio[2] * n))
    n_val = int(round(options.split_ratio[1] * n))
    if options.split_ratio[2] > 0 and n >= 2:
        n_test = max(n_test, 1)
    n_val = min(n_val, n - n_test)
    out = {name: "test" for name in shuffled[:n_test]}
    out.update({name: "val" for name in shuffled[n_test:n_test + n_val]})
    out.update({name: "train" for name in shuffled[n_test + n_val:]})
    return out


def folds(cfg) -> list[tuple[str, ...]]:
    """The subject names of each of the ``K`` cross-validation folds of a files-source config
    (``data.fold: [k, K]``; fold ``k`` is the test split of that config). Disjoint, covering every
    subject; ``jaxmed cv`` runs one training per fold and pools the per-subject results."""
    if cfg.source != "files" or not cfg.options.fold:
        raise ConfigError("folds: needs data.source files with data.fold: [k, K]")
    return fold_names([s.name for s in discover(cfg.options)], cfg.options.fold[1], cfg.seed)


def _augment_seed(base: int, epoch: int, index: int, copy: int) -> int:
    return int(np.random.SeedSequence([int(base), 0xA06, int(epoch), int(index), int(copy)]).generate_state(1, np.uint64)[0])


@register
class FilesSource(Source):
    name = "files"
    Options = FilesOptions
    summary = "your own labelled scans: a folder of subject folders (globs) or a manifest .csv/.tsv"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.augment = AugmentOptions.parse(self.options.augment, "data.augment")
        self.cache_hits = 0
        self.cache_misses = 0

    def load_reference(self):
        if not self.options.template:
            return None
        from jaxmed.data import sources
        from jaxmed.data.sources.config import DataConfig

        return sources.make(DataConfig(source=self.options.template, spacing=self.cfg.spacing, seed=self.cfg.seed)).reference()

    def split_files(self, split: str) -> list[SubjectFiles]:
        """The files of ``split``'s subjects, in name order."""
        check_split(split)
        found = discover(self.options)
        assigned = assign_splits(found, self.options, self.cfg.seed)
        return sorted((s for s in found if assigned[s.name] == split), key=lambda s: s.name)

    def _labelled(self, files: SubjectFiles):
        from jaxmed.data.landmark_files import read_landmarks
        from jaxmed.data.landmarks import Landmarks

        try:
            lm = read_landmarks(files.landmarks)
        except LandmarkError as e:
            raise LandmarkError(f"subject {files.name}: {e}") from None
        if self.options.label_map:
            mapping = {str(k): str(v) for k, v in self.options.label_map.items()}
            try:
                lm = Landmarks(tuple(mapping.get(l, l) for l in lm.labels), lm.positions, lm.descriptions, lm.source)
            except LandmarkError as e:
                raise LandmarkError(f"subject {files.name}: data.label_map gives duplicate labels: {e}") from None
        return lm

    def _complete(self, split_files: list[SubjectFiles], labels: Sequence[str]):
        """``[(files, landmarks)]`` of the subjects having every label; the others are listed in one
        :class:`LandmarkError`, or dropped with a warning under ``skip_incomplete``."""
        kept, incomplete = [], []
        for f in split_files:
            lm = self._labelled(f)
            missing = [l for l in labels if l not in lm.labels]
            if missing:
                incomplete.append(f"{f.name} ({f.landmarks}): missing {', '.join(missing)}")
            else:
                kept.append((f, lm.select(labels)))
        if incomplete:
            detail = "; ".join(incomplete)
            if not self.options.skip_incomplete:
                raise LandmarkError(f"{len(incomplete)} subject(s) of {self.options.root} lack required landmarks: {detail}. "
                                    f"Fix the files, map their labels with data.label_map, or drop them with data.skip_incomplete: true")
            warnings.warn(f"data.skip_incomplete: dropping {len(incomplete)} subject(s) without every label: {detail}", stacklevel=3)
        return kept

    def _conformed(self, files: SubjectFiles, landmarks) -> LabelledSubject:
        from jaxmed.data.image_io import load_image
        from jaxmed.data.subject_cache import cached_volume

        settings = {"spacing": self.cfg.spacing, "normalise": _NORMALISE}

        def load():
            return load_image(files.image, spacing=self.cfg.spacing, **_NORMALISE)

        def validate(volume):
            landmarks.check_inside(volume)

        try:
            volume, hit = cached_volume(files.image, settings, load, validate, enabled=self.options.cache)
        except (ImageError, LandmarkError) as e:
            raise type(e)(f"subject {files.name}: {e}") from None
        if hit:
            self.cache_hits += 1
        else:
            self.cache_misses += 1
        return LabelledSubject(files.name, volume, landmarks,
                               {"source": {"image": str(files.image), "landmarks": str(files.landmarks)}, "split": None,
                                "fold": list(self.options.fold) or None})

    def subjects(self, split: str, labels: Sequence[str], *, epoch: int = 0, n: int | None = None) -> list[LabelledSubject]:
        check_split(split)
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        split_files = self.split_files(split)
        if not split_files:
            raise ConfigError(f"{self.options.root}: no subjects in the {split!r} split "
                              f"({self._split_rule()}); change data.split_ratio / data.fold or the manifest's split column")
        out = []
        for f, lm in self._complete(split_files, labels):
            s = self._conformed(f, lm)
            out.append(dataclasses.replace(s, meta={**s.meta, "split": split}))
        if not out:
            raise ConfigError(f"{self.options.root}: every subject of the {split!r} split was dropped by data.skip_incomplete")
        if split == "train" and self.augment.copies > 0:
            out = self._augmented(out, epoch)
        return out

    def _split_rule(self) -> str:
        if self.options.fold:
            return f"fold {list(self.options.fold)}"
        return f"split_ratio {list(self.options.split_ratio)} or the manifest's split column"

    def _augmented(self, subjects: list[LabelledSubject], epoch: int) -> list[LabelledSubject]:
        """``augment.copies`` synthetic copies of each subject (drawn with seeds of ``(data.seed,
        epoch, subject, copy)``), after the originals when ``keep_original``."""
        from jaxmed.data.image_io import conform
        from jaxmed.data.synth import synthesize_subject

        config = synth_config(self.augment.synth, "data.augment")
        out = list(subjects) if self.augment.keep_original else []
        for i, s in enumerate(subjects):
            for c in range(self.augment.copies):
                seed = _augment_seed(self.cfg.seed, epoch, i, c)
                try:
                    a = synthesize_subject(s.volume, s.landmarks, seed, config)
                except LandmarkError as e:
                    raise LandmarkError(f"subject {s.name}: augmentation copy {c} (seed {seed}): {e}") from None
                out.append(LabelledSubject(f"{s.name}~aug{epoch}.{c}", conform(a.volume, self.cfg.spacing), a.landmarks,
                                           {**s.meta, "augmented_from": s.name, "seed": seed, "epoch": epoch,
                                            "landmark_residual_mm": a.landmark_residual_mm}))
        return out

    def labels(self) -> tuple[str, ...]:
        """Labels of the first subject's landmark file (after ``label_map``)."""
        found = discover(self.options)
        return self._labelled(found[0]).labels
