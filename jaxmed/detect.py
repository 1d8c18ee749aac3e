"""Find trained landmarks in a new image: load any NIfTI, run every trained agent in one pass, write a
Slicer ``.fcsv``.

All agents of the run (one per landmark, or several per landmark with ``agents_per_target``) start
from ``n_starts`` fixed points and run greedily in one jitted, vmapped rollout; each landmark's answer
aggregates the end points of every agent that hunts it, from every start (the "several agents, one
landmark" estimate of multi-agent landmark detection). With test-time intensity augmentation
(``intensity_scales``) every image also runs with its intensities scaled, and the end points of all
copies are pooled too.

Many images in one process: :class:`LandmarkDetector` keeps the compiled program per (bucketed)
bank shape, so a batch of images pays the start-up and the compilation once
(:func:`detect_files`, ``jaxmed detect IMG [IMG ...] -o DIR``).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmed import experiment as ex
from jaxmed import inference
from jaxmed.data import run_data
from jaxmed.data.image_io import check_intensity_scales, scaled_copies
from jaxmed.envs.registry import with_level_step_limit
from jaxmed.errors import ConfigError, LandmarkError

AGGREGATES = inference.AGGREGATES
#: Shape checks of the answers (:mod:`jaxmed.shape_model`): ``none``, or ``affine`` (a robust affine fit
#: of the template's landmarks finds answers that disagree with all the others and mends them).
SHAPES = ("none", "affine")
#: Where the agents start: ``grid`` (the env's evaluation starts: the 3x3x3 grid for 27, else random
#: points of the volume) or ``registration`` (each agent near its landmark's template position carried
#: to the image by the 12-dof affine registration baseline, :func:`registration_offsets`).
START_FROM = ("grid", "registration")


@dataclasses.dataclass(frozen=True)
class DetectionOptions:
    """How a trained landmark run is applied to new images (test time only; nothing here changes the
    network). ``None`` means the run's own setting (its ``env`` / ``eval`` sections).

    Attributes:
      n_starts: start points per agent and volume (27: the 3x3x3 grid; else seeded random points at
        the same fractions of every volume's extent; default: the run's ``env.eval_starts``).
      aggregate: :data:`AGGREGATES`: how a landmark's end points become one answer.
      seed: the seed of random starts and of the shape check's robust fit.
      shape: :data:`SHAPES`: ``affine`` checks every image's answers for all trained landmarks against
        the template's configuration (:func:`jaxmed.shape_model.check_landmarks`; the run's data
        source must have a template and the run at least :data:`~jaxmed.shape_model.MIN_LANDMARKS`
        landmarks) before the requested labels are picked.
      intensity_scales: test-time intensity augmentation (default: the run's
        ``eval.intensity_scales``, ``(1.0,)`` unless set): every volume also runs with its
        intensities multiplied by each factor (:func:`jaxmed.data.image_io.scaled_copies`) and a landmark's answer pools
        the end points of every copy, as it pools agents, starts and ensemble members.
      split_starts: with several intensity copies, every start runs on one copy only
        (:func:`deal_starts`) rather than on all: one copy's work (default: the run's ``eval.split_starts``).
      level_step_limit: moves an agent may make at one search level before it moves on as if it had
        oscillated (:attr:`jaxmed.experiment.EvalSection.level_step_limit`; ``0``: no limit;
        default: the run's ``eval.level_step_limit``, else the env's own).
      start_from: :data:`START_FROM`. ``registration`` registers the run's template to every image
        (:data:`jaxmed.registration_baseline.AFFINE_LANDMARK` at the run's spacing) and starts each
        agent at its landmark's carried position and ``n_starts - 1`` points within
        ``start_radius_mm`` of it (:func:`registration_offsets`); the registration's time counts in
        the detection time (its first run per image size, which compiles it, in
        :attr:`LandmarkDetector.compile_seconds`).
      start_radius_mm: the radius of those starts, mm.

    Every value is checked here (:class:`ConfigError` naming the option); the ones that depend on the
    run (``n_starts`` against ``split_starts``, ``level_step_limit`` against the env) when a
    :class:`LandmarkDetector` takes them.
    """

    n_starts: int | None = None
    aggregate: str = "median"
    seed: int = 0
    shape: str = "none"
    intensity_scales: tuple[float, ...] | None = None
    split_starts: bool | None = None
    level_step_limit: int | None = None
    start_from: str = "grid"
    start_radius_mm: float = 8.0

    def __post_init__(self):
        for name, value, allowed in (("aggregate", self.aggregate, AGGREGATES), ("shape check", self.shape, SHAPES),
                                     ("start_from", self.start_from, START_FROM)):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if not np.isfinite(self.start_radius_mm) or self.start_radius_mm < 0:
            raise ConfigError(f"start_radius_mm must be a finite number >= 0, got {self.start_radius_mm}")
        if self.n_starts is not None and self.n_starts < 1:
            raise ConfigError(f"n_starts must be >= 1, got {self.n_starts}")
        if self.intensity_scales is not None:
            object.__setattr__(self, "intensity_scales", check_intensity_scales(self.intensity_scales, "intensity_scales"))


def registration_offsets(n_starts: int, radius_mm: float, seed: int = 0) -> np.ndarray:
    """``(n_starts, 3)`` float64 mm: start 0 at the registered point itself, the others drawn once
    (``seed``) uniformly in the ball of ``radius_mm`` around it; the same offsets for every image and
    every agent, so an image's starts do not depend on the images it is detected with."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(n_starts, 3))
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-12)
    radius = float(radius_mm) * rng.uniform(size=(n_starts, 1)) ** (1.0 / 3.0)
    offsets = direction * radius
    offsets[0] = 0.0
    return offsets


def robust_mean(points: np.ndarray, method: str = "median", trim: float = 0.2) -> np.ndarray:
    """Aggregate end points ``(n, 3)`` (mm) into one ``(3,)`` answer (:func:`jaxmed.inference.aggregate`:
    ``median``, ``mean``, ``trimmed`` or ``geomedian``)."""
    return inference.aggregate(points, method, trim).position


IMAGE_SUFFIXES = (".nii", ".nii.gz", ".mgz", ".img", ".hdr")


class LandmarkDetector:
    """A landmark run's agents, ready to answer landmarks in many images in one process.

    Built once from a run's config and network parameters; every call of :meth:`find` stacks the
    given conformed volumes in one bank, pads it to a bucketed shape (:meth:`~jaxmed.data.bank.VolumeBank.bucket_shapes`) and runs
    all agents from ``n_starts`` fixed starts per volume in one jitted, vmapped rollout; the
    compiled program is kept per bank shape, so images of similar size compile once
    (:attr:`compilations` counts them). Each landmark's answer aggregates the end points of every
    agent that hunts it, from every start (:func:`robust_mean`).

    Args:
      cfg: the run's :class:`~jaxmed.experiment.ExperimentConfig`; network, params: its network and
        parameters (one seed; see :func:`jaxmed.runs.seed_params`), or a list of parameter trees of
        the same network (an ensemble, e.g. every seed of a ``--seeds S`` run): each member runs the
        same compiled rollout and every member's end points are pooled into one answer.
      options: :class:`DetectionOptions` (default: the run's own settings); keyword arguments named
        like its fields replace single options (``LandmarkDetector(cfg, net, params, n_starts=8)``).
      labels: the landmarks to answer (default: every trained one).
      experiment: the run's built :class:`~jaxmed.experiment.Experiment` (its env and evaluation
        parameters are used); ``None``: the env is made from ``cfg``.
      where: what error messages name (e.g. the run directory).
    """

    def __init__(self, cfg, network, params, options: DetectionOptions | None = None, *,
                 labels: Sequence[str] | None = None, experiment: ex.Experiment | None = None, where: str = "run",
                 **option_fields):
        from jaxmed.agents.learners import policy_rollout

        try:
            options = dataclasses.replace(options or DetectionOptions(), **option_fields)
        except ConfigError as err:  # an option given here: name the run as the other checks do
            raise ConfigError(f"{where}: {err}") from None
        members = list(params) if isinstance(params, (list, tuple)) else [params]
        if not members:
            raise ConfigError(f"{where}: an ensemble needs at least one parameter set")
        self.cfg, self.members = cfg, members
        self.params = members[0]
        if experiment is not None:
            self.env, self.eval_params = experiment.env, experiment.eval_params
        else:
            self.env, _, self.eval_params = ex.make_env(cfg)
        self.targets = self.env.landmark_targets
        if not self.targets:
            raise ConfigError(f"{where}: a {cfg.env_name} run does not detect landmarks (use the command for that task)")
        self.trained = self.env.required_labels
        self.labels = tuple(labels) if labels else self.trained
        missing = [l for l in self.labels if l not in self.trained]
        if missing:
            raise LandmarkError(f"{where}: the model was trained for {', '.join(self.trained)}; it cannot detect {', '.join(missing)}")
        self.eval_params = with_level_step_limit(self.eval_params, options.level_step_limit, f"{where}: level_step_limit")
        scales = cfg.eval.intensity_scales if options.intensity_scales is None else options.intensity_scales
        n_starts = cfg.eval_starts if options.n_starts is None else options.n_starts
        split = cfg.eval.split_starts if options.split_starts is None else options.split_starts
        #: every option resolved against the run; the attributes below read it
        self.options = dataclasses.replace(
            options, n_starts=int(n_starts), seed=int(options.seed), intensity_scales=tuple(scales), split_starts=bool(split),
            level_step_limit=int(getattr(self.eval_params, "level_step_limit", 0)), start_radius_mm=float(options.start_radius_mm))
        if self.split_starts:
            deal_starts(self.n_starts, len(self.intensity_scales))  # refuses too few starts now
        self.shape_template = self._shape_template(where) if self.shape != "none" else None
        self._registration = self._registration_reference(where) if self.start_from == "registration" else None
        self._registration_warm: set = set()
        self._rollout = policy_rollout(cfg.train.learner, network, self.env, self.eval_params)
        self._compiled: dict = {}
        self.compilations = 0
        self.compile_seconds = 0.0

    n_starts = property(lambda self: self.options.n_starts)
    aggregate = property(lambda self: self.options.aggregate)
    seed = property(lambda self: self.options.seed)
    shape = property(lambda self: self.options.shape)
    intensity_scales = property(lambda self: self.options.intensity_scales)
    split_starts = property(lambda self: self.options.split_starts)
    level_step_limit = property(lambda self: self.options.level_step_limit)
    start_from = property(lambda self: self.options.start_from)
    start_radius_mm = property(lambda self: self.options.start_radius_mm)

    def _shape_template(self, where: str):
        """The template's landmarks (every trained label) for the shape check; clear errors when the
        run cannot have one."""
        from jaxmed.shape_model import MIN_LANDMARKS

        if len(self.trained) < MIN_LANDMARKS:
            raise ConfigError(f"{where}: the shape check needs a model of at least {MIN_LANDMARKS} landmarks; "
                              f"this one answers {len(self.trained)} ({', '.join(self.trained)})")
        return self._template_having(self.trained, where, "for the shape check")[1].select(self.trained)

    def _template_having(self, labels: Sequence[str], where: str, purpose: str):
        """``(Volume, Landmarks)`` of the run's template (:func:`jaxmed.data.run_data.template`), which must
        hold every one of ``labels``; :class:`ConfigError` naming ``where`` and ``purpose`` otherwise."""
        reference = run_data.template(self.cfg.data)
        if reference is None:
            raise ConfigError(f"{where}: data.source {self.cfg.data.source} has no template {purpose}")
        missing = sorted({l for l in labels if l not in reference[1].labels})
        if missing:
            raise ConfigError(f"{where}: the template has no {', '.join(missing)} {purpose}")
        return reference

    def _registration_reference(self, where: str):
        """``(template volume conformed to the run's spacing, (A, 3) world mm of every agent's
        landmark in it)`` for registration starts; clear errors when the run cannot have them."""
        from jaxmed.data import conform

        volume, landmarks = self._template_having(self.targets, where, "for start_from=registration")
        if not hasattr(self.env, "states_at"):
            raise ConfigError(f"{where}: a {self.cfg.env_name} run cannot be started at given points (start_from=registration)")
        points = landmarks.positions[[landmarks.labels.index(t) for t in self.targets]]
        return conform(volume, self.cfg.data.spacing), points

    def registered_targets(self, volumes) -> tuple[np.ndarray, float]:
        """``(points (V, A, 3) world RAS mm, seconds)``: every agent's landmark carried from the template
        to each conformed volume by the affine registration baseline, and the wall time of those
        registrations (a first, untimed run per padded image size compiles; its time goes to
        :attr:`compile_seconds`)."""
        from jaxmed.registration_baseline import AFFINE_LANDMARK, transfer_landmarks

        template, points = self._registration
        out, seconds = [], 0.0
        for v in volumes:
            pad = tuple(int(-(-max(a, b) // 16) * 16) for a, b in zip(v.shape, template.shape))  # shared compilations
            if pad not in self._registration_warm:
                t0 = time.perf_counter()
                transfer_landmarks(template, points, v, AFFINE_LANDMARK, pad_to=pad)
                self.compile_seconds += time.perf_counter() - t0
                self._registration_warm.add(pad)
            carried, res = transfer_landmarks(template, points, v, AFFINE_LANDMARK, pad_to=pad)
            out.append(carried)
            seconds += res.seconds
        return np.asarray(out, np.float64), seconds

    def start_states(self, bank, carried: np.ndarray | None = None):
        """The rollout's start states for ``bank``: the env's evaluation starts, or with ``carried``
        (``(V, A, 3)`` world mm, :meth:`registered_targets`) :attr:`n_starts` starts per volume around
        each agent's carried point (:func:`registration_offsets`), volume-major like the env's."""
        if carried is None:
            return self.env.eval_states(self.eval_params, bank, self.n_starts, seed=self.seed)
        n_vol = bank.n_volumes
        offsets = registration_offsets(self.n_starts, self.start_radius_mm, self.seed)  # (S, 3)
        world = carried[:, None, :, :] + offsets[None, :, None, :]  # (V, S, A, 3)
        inv = np.linalg.inv(np.asarray(bank.affines[0], np.float64)[:n_vol])  # level-0 world -> voxel
        vox = np.einsum("vij,vsaj->vsai", inv[:, :3, :3], world) + inv[:, None, None, :3, 3]
        starts = np.rint(vox).reshape(n_vol * self.n_starts, *carried.shape[1:]).astype(np.int32)
        return self.env.states_at(bank, np.repeat(np.arange(n_vol, dtype=np.int32), self.n_starts), starts)

    def bank(self, volumes, landmarks=None, full_scale: float | None = None):
        """A bucketed detection bank of conformed ``volumes``; ``landmarks`` (one per volume, with the
        trained labels) are carried for evaluation, else a placeholder (detection never reads them:
        no reward, no target stop). uint8 storage scale: ``full_scale``, else the run's
        ``data.intensity_ceiling``, else the volumes' maximum (:func:`jaxmed.data.build_bank`)."""
        from jaxmed.data import Landmarks, build_bank

        cfg, env = self.cfg, self.env
        if landmarks is None:
            landmarks = [Landmarks(self.trained, np.repeat(v.voxel_to_world((np.array(v.shape) - 1) / 2)[None], len(self.trained), 0),
                                   source=v.source) for v in volumes]
        bank = build_bank(list(zip(volumes, landmarks)), self.trained, factors=cfg.data.factors, max_crop=env.max_crop,
                          dtype=cfg.data.dtype, packed=env.wants_packed_bank,
                          full_scale=cfg.data.intensity_ceiling if full_scale is None else full_scale)
        env.check_bank(bank)
        return bank.padded_to(bank.bucket_shapes())  # images of similar size share one compiled program

    def compiled_for(self, bank, states):
        """The compiled rollout for this bank shape (compiling it the first time, timed)."""
        import jax

        key = jax.tree.map(lambda x: (x.shape, str(x.dtype)), (bank, states))
        key = (tuple(jax.tree.leaves(key)), jax.tree.structure(bank))
        if key not in self._compiled:
            t0 = time.perf_counter()
            self._compiled[key] = self._rollout.lower(self.params, bank, states).compile()
            self.compile_seconds += time.perf_counter() - t0
            self.compilations += 1
        return self._compiled[key]

    def end_points(self, volumes, landmarks=None, intensity_scales: Sequence[float] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, float]:
        """``(world, volume_index, seconds)``: every ensemble member's sub-voxel end points
        (:func:`jaxmed.inference.end_points`, the centre of each agent's final oscillation) in world
        RAS mm, ``(R, A, 3)`` float64, the index into ``volumes`` of each row ``(R,)``, and the wall
        time of the compiled rollouts (compilation excluded; with :attr:`start_from` ``registration`` the
        registrations too). Rows come intensity copy after copy,
        member after member within one; a copy has a row per start of every volume, or with
        :attr:`split_starts` only the starts :func:`deal_starts` gives it (``R = M * E`` then, ``E`` =
        starts of all volumes, else ``R = C * M * E``). The :attr:`intensity_scales` copies run one
        after another, each in a bank of its own (memory for one copy of the volumes at a time),
        all stored on the scale of the unscaled volumes (so that a uint8 bank keeps a copy's
        dimming). ``intensity_scales`` overrides the detector's for this call."""
        import jax

        world, vols, seconds = [], [], 0.0
        full_scale = self.cfg.data.intensity_ceiling or max(float(np.max(v.data)) for v in volumes) or 1.0
        scales = self.intensity_scales if intensity_scales is None else check_intensity_scales(intensity_scales, "intensity_scales")
        dealt = deal_starts(self.n_starts, len(scales)) if self.split_starts else None
        carried = None
        if self._registration is not None:
            carried, seconds = self.registered_targets(volumes)
        for c, scale in enumerate(scales):
            bank = self.bank(scaled_copies(volumes, [scale]), landmarks, full_scale=full_scale)
            states = self.start_states(bank, carried)
            if dealt is not None:  # rows are volume-major: row r is start r % n_starts of its volume
                rows = np.flatnonzero(np.tile(dealt == c, bank.n_volumes))
                states = jax.tree.map(lambda x: x[rows], states)
            compiled = self.compiled_for(bank, states)
            t0 = time.perf_counter()
            finals = [jax.block_until_ready(compiled(p, bank, states)["final_state"]) for p in self.members]
            seconds += time.perf_counter() - t0
            for final in jax.device_get(finals):
                vox = inference.end_points(final, self.env.config.osc_window)  # (E, A, 3) level-0 voxels
                v = np.asarray(final.volume).reshape(-1)
                affines = np.asarray(bank.affines[0], np.float64)[v]  # (E, 4, 4)
                world.append(np.einsum("eij,eaj->eai", affines[:, :3, :3], vox) + affines[:, None, :3, 3])
                vols.append(v)
            del bank, states, finals
        return np.concatenate(world), np.concatenate(vols), seconds

    def find(self, volumes, landmarks=None, sources: Sequence[str] | None = None) -> tuple[list, float]:
        """``(answers, seconds)``: one :class:`jaxmed.data.Landmarks` (the :attr:`labels`, world RAS mm,
        each description carrying its uncertainty, :func:`jaxmed.inference.estimate_landmarks`) per
        conformed volume, aggregated over every agent, start and ensemble member
        (:meth:`end_points`), then shape-checked (``shape``), and the wall time of the compiled
        rollouts (compilation excluded)."""
        from jaxmed.shape_model import check_landmarks

        world, vols, seconds = self.end_points(volumes, landmarks)
        answers = []
        for s in range(len(volumes)):
            src = sources[s] if sources is not None else f"jaxmed detect {volumes[s].source}"
            if self.shape_template is None:
                answers.append(inference.estimate_landmarks(world[vols == s], self.targets, self.labels, self.aggregate, source=src))
                continue
            every = inference.estimate_landmarks(world[vols == s], self.targets, self.trained, self.aggregate, source=src)
            answers.append(check_landmarks(every, self.shape_template, seed=self.seed)[0].select(self.labels))
        return answers, seconds

    @classmethod
    def from_run(cls, run_dir, *, ensemble: bool = False, **kwargs) -> "LandmarkDetector":
        """The detector of a run directory's saved network: seed 0, or with ``ensemble`` every seed of
        a ``--seeds S`` run, their end points pooled."""
        from jaxmed.runs import load_run, seed_params

        exp, params = load_run(run_dir)
        seeds = range(exp.cfg.train.seeds) if ensemble else range(1)
        kwargs.setdefault("experiment", exp)
        return cls(exp.cfg, exp.network, [seed_params(exp.cfg, params, s) for s in seeds], where=str(run_dir), **kwargs)


def deal_starts(n_starts: int, n_copies: int) -> np.ndarray:
    """``(n_starts,)`` int: the intensity copy each start of an image runs on when the copies share
    the starts (:attr:`LandmarkDetector.split_starts`). A cube count (``n_starts == k**3``) is dealt as
    a ``k x k x k`` grid: start ``(i, j, l)`` goes to copy ``(i + j + l) % n_copies``. For the landmark
    env's 27 starts, its 3x3x3 grid, every copy of three then has one start on each grid line (each
    copy sees the whole image); other cube counts are random points there, for which this is just
    another even deal. Other counts go round in turn (``i % n_copies``). :class:`ConfigError` when there are
    fewer starts than copies (a copy would run nothing)."""
    if n_starts < n_copies:
        raise ConfigError(f"split_starts: {n_starts} start(s) cannot be dealt out among {n_copies} intensity copies")
    k = round(n_starts ** (1 / 3))
    if k ** 3 == n_starts:
        digits = np.stack(np.unravel_index(np.arange(n_starts), (k, k, k)), axis=-1)
        return digits.sum(axis=-1) % n_copies
    return np.arange(n_starts) % n_copies


def read_conformed(image, spacing: float):
    """Load ``image`` (any NIfTI / DICOM) and conform it to ``spacing`` mm; every failure is an
    :class:`ImageError` naming the file (raised before any compilation)."""
    from jaxmed.data import conform, load_image
    from jaxmed.errors import ImageError, JaxmedError

    try:
        return conform(load_image(image), spacing)
    except JaxmedError:
        raise
    except MemoryError:
        raise ImageError(f"{image}: image too large to load") from None
    except Exception as err:  # an unreadable file: nibabel / numpy raise many kinds
        raise ImageError(f"{image}: cannot read this image ({type(err).__name__}: {err})") from None


def detect(run_dir: str | Path, image: str | Path, labels: Sequence[str] | None = None, **options):
    """Detect the run's landmarks in ``image`` (all of them, or ``labels``) in one pass; ``options`` are
    :class:`DetectionOptions` fields (``n_starts``, ``aggregate``, ``seed``, ``shape``,
    ``intensity_scales``, ``split_starts``, ``level_step_limit``, ``start_from``, ``start_radius_mm``)
    or ``options=DetectionOptions(...)``.

    Returns :class:`jaxmed.data.Landmarks` in world RAS mm. For many images use
    :class:`LandmarkDetector` (one compilation) or :func:`detect_files`.
    """
    det = LandmarkDetector.from_run(run_dir, labels=labels, **options)
    volume = read_conformed(image, det.cfg.data.spacing)
    answers, _ = det.find([volume], sources=[f"jaxmed detect {image}"])
    return answers[0]


def expand_inputs(specs: Sequence[str]) -> list[Path]:
    """Image paths from command-line inputs: files, directories of NIfTI images (a directory without
    any is one DICOM series), glob patterns, or a manifest ``.csv`` / ``.tsv`` whose ``image`` column
    (or first column) lists images (relative paths from the manifest's folder). Raises
    :class:`ConfigError` for a pattern that matches nothing or a manifest without images."""
    import csv
    import glob

    out: list[Path] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if any(ch in spec for ch in "*?[") and not p.exists():
            hits = sorted(glob.glob(str(p), recursive=True))
            if not hits:
                raise ConfigError(f"{spec}: no file matches this pattern")
            out.extend(Path(h) for h in hits)
        elif p.is_dir():
            images = sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith(IMAGE_SUFFIXES))
            out.extend(images or [p])
        elif p.suffix.lower() in (".csv", ".tsv") and p.is_file():
            with open(p, newline="") as f:
                rows = list(csv.reader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ","))
            if not rows:
                raise ConfigError(f"{p}: empty manifest")
            head = [h.strip().lower() for h in rows[0]]
            col = head.index("image") if "image" in head else 0
            body = rows[1:] if "image" in head or not rows[0][0].lower().endswith(IMAGE_SUFFIXES) else rows
            paths = [Path(r[col].strip()) for r in body if r and r[col].strip()]
            if not paths:
                raise ConfigError(f"{p}: no images listed in the manifest")
            out.extend(q if q.is_absolute() else p.parent / q for q in paths)
        else:
            out.append(p)
    return list(dict.fromkeys(out))


def output_name(image: Path, suffix: str) -> str:
    """The landmark file name of an image: its name without image extensions, plus ``suffix``."""
    name = image.name
    for ext in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return name + suffix


def detect_files(detector: LandmarkDetector, images: Sequence[Path], out_dir: str | Path, *, suffix: str = ".fcsv",
                 overwrite: bool = False, keep_going: bool = False, on_result=None, group: int = 8) -> dict:
    """Detect landmarks in every image and write one landmark file per image into ``out_dir``
    (``<image name><suffix>``, each written atomically).

    Images are read and conformed one by one and run ``group`` at a time in one bank (one rollout for
    all their agents and starts: on a CPU one image alone is latency-bound); every group has the
    same number of volumes (the last one is filled with repeats, whose answers are dropped), so
    images of similar size share one compiled program. The answers do not depend on the grouping:
    the 27 grid starts and seeded random starts alike sit at the same fractions of every image's extent.

    Every output path is checked before any image is read (an existing file is an
    :class:`OverwriteError` without ``overwrite``; two images with the same name are refused). An
    image that cannot be read raises its :class:`ImageError` after the images read before it are
    written (no later one is) unless ``keep_going``, which skips it.
    ``on_result(image, landmarks | error, seconds)`` is called per image. Returns ``{"written":
    [...], "failed": [(image, message)], "seconds": [per image: its group's rollout / its images],
    "compilations": n, "compile_seconds": s}``.
    """
    from jaxmed.data import write_landmarks
    from jaxmed.errors import JaxmedError, OverwriteError, check_writable

    if group < 1:
        raise ConfigError(f"group must be >= 1, got {group}")
    out_dir = Path(out_dir)
    targets = [out_dir / output_name(Path(im), suffix) for im in images]
    dup = [t.name for t in targets if targets.count(t) > 1]
    if dup:
        raise ConfigError(f"several inputs would write the same output file(s) {sorted(set(dup))}; rename the images or run them apart")
    for t in targets:
        try:
            check_writable(t, overwrite)
        except OverwriteError as err:
            raise OverwriteError(f"{err} (pass --overwrite to replace outputs)") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    size = max(1, min(int(group), len(images)))
    written, failed, seconds, pending = [], [], [], []

    def flush():
        if not pending:
            return
        volumes = [v for _, _, v in pending]
        volumes += [volumes[-1]] * (size - len(volumes))  # a fixed bank size: one compilation
        answers, dt = detector.find(volumes, sources=[f"jaxmed detect {im}" for im, _, _ in pending] + [""] * (size - len(pending)))
        for (image, target, _), found in zip(pending, answers):
            written.append(write_landmarks(found, target, overwrite=overwrite))
            seconds.append(dt / len(pending))
            if on_result is not None:
                on_result(image, found, dt / len(pending))
        pending.clear()

    for image, target in zip(images, targets):
        try:
            volume = read_conformed(image, detector.cfg.data.spacing)
        except JaxmedError as err:
            if not keep_going:
                flush()
                raise
            failed.append((str(image), str(err)))
            if on_result is not None:
                on_result(image, err, None)
            continue
        pending.append((image, target, volume))
        if len(pending) == size:
            flush()
    flush()
    return {"written": written, "failed": failed, "seconds": seconds, "compilations": detector.compilations,
            "compile_seconds": detector.compile_seconds}


def detect_goal(run_dir: str | Path, image: str | Path, goal: str | None = None, goal_patch: str | Path | None = None,
                n_starts: int | None = None, aggregate: str = "median", seed: int = 0):
    """Walk a goal-conditioned run's agent (``goal-landmark-v0``) to a goal in ``image``.

    The goal is given by example, never by training: ``goal`` names a landmark of the run's template
    (any of its labels, trained or not; its goal image is the template's crop there) or
    ``goal_patch`` is a ``.npy`` cube of ``crop_size * f`` voxels at the run's spacing centred on
    the goal (``f``: pyramid factor of the coarsest level used). Returns
    :class:`jaxmed.data.Landmarks` with one point (label ``goal`` or ``"goal"``), world RAS mm.
    """
    import jax

    from jaxmed.agents.learners import policy_rollout
    from jaxmed.data import Landmarks, build_bank, conform, load_image
    from jaxmed.envs.goal_landmark import GoalLandmarkConfig, GoalLandmarkEnv, goal_example
    from jaxmed.runs import load_run, seed_params

    if (goal is None) == (goal_patch is None):
        raise ConfigError("give exactly one of a goal label (--goal) or a goal patch file (--goal-patch)")
    if aggregate not in AGGREGATES:
        raise ConfigError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    exp, params = load_run(run_dir)
    cfg, network, env, eval_params = exp.cfg, exp.network, exp.env, exp.eval_params
    if not isinstance(env, GoalLandmarkEnv):
        raise ConfigError(f"{run_dir}: a {cfg.env_name} run is not goal-conditioned; --goal / --goal-patch need a goal-landmark-v0 run")
    label = goal if goal is not None else "goal"
    if goal is not None:
        tpl_volume, tpl_landmarks = run_data.template(cfg.data)
        if goal not in tpl_landmarks.labels:
            raise LandmarkError(f"unknown goal {goal!r}: the template of this run has {', '.join(tpl_landmarks.labels)}")
        reference = (conform(tpl_volume, cfg.data.spacing), tpl_landmarks.select([goal]))
    else:
        path = Path(goal_patch)
        try:
            patch = np.load(path)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: cannot read a goal patch (.npy array): {err}") from None
        edge = env.config.crop_size * max(cfg.data.factors[l] for l in env.config.levels)
        try:
            reference = goal_example(patch, cfg.data.spacing, edge, label)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    volume = conform(load_image(image), cfg.data.spacing)
    # the subject's goal position is unknown and never read (no reward, no target stop)
    placeholder = Landmarks((label,), volume.voxel_to_world((np.array(volume.shape) - 1) / 2)[None], source=str(image))
    bank = build_bank([reference, (volume, placeholder)], (label,), factors=cfg.data.factors, max_crop=env.max_crop, dtype=cfg.data.dtype,
                      full_scale=cfg.data.intensity_ceiling)
    c = env.config
    goal_cfg = GoalLandmarkConfig(goals=(label,), n_agents=c.n_agents, crop_size=c.crop_size, frames=c.frames, levels=c.levels,
                                  osc_window=c.osc_window, reference_volume=0)
    denv = GoalLandmarkEnv(goal_cfg, labels=bank.labels, name=env.name)
    states = denv.eval_states(eval_params, bank, cfg.eval_starts if n_starts is None else n_starts, seed=seed)
    rollout = policy_rollout(cfg.train.learner, network, denv, eval_params)
    res = jax.device_get(rollout(seed_params(cfg, params, 0), bank, states))
    world = volume.voxel_to_world(np.asarray(res["final_state"].nav.pos, dtype=np.float64).reshape(-1, 3))
    return Landmarks((label,), robust_mean(world, aggregate)[None], source=f"jaxmed detect --goal {label} {image}")
