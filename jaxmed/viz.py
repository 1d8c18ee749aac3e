"""PNG figures: orthogonal slices with landmarks, and agent paths (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmed.data.draw import VIEWS as _VIEWS
from jaxmed.data.draw import draw_orthogonal
from jaxmed.data.draw import pyplot as _pyplot
from jaxmed.data.image_io import reorient_to_ras
from jaxmed.data.volume import Volume
from jaxmed.errors import check_writable


def _save(plt, fig, path: Path, title: str, dpi: int) -> Path:
    """Title ``fig``, write it to ``path`` (parent folders created) and close it."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_landmarks(volume: Volume, landmarks, path: str | Path, *, overwrite: bool = False, title: str = "") -> Path:
    """Write a PNG of ``volume`` with its landmarks: a row of three orthogonal views per landmark
    group (the slices through the landmarks' centroid), every landmark marked and labelled."""
    path = Path(path)
    check_writable(path, overwrite)
    plt = _pyplot()
    volume = reorient_to_ras(volume)
    pts = landmarks.positions
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.5))
    # Show every landmark in every view: project onto slices through the centroid, thick slab.
    centre = np.median(pts, axis=0)
    draw_orthogonal(axes, volume, centre, None)
    for ax, (cut, (h, v), _) in zip(axes, _VIEWS):
        pv = volume.world_to_voxel(pts)
        ax.scatter(pv[:, h], pv[:, v], marker="+", color="red", s=25, linewidths=1)
        for p, lab in zip(pv, landmarks.labels):
            ax.annotate(lab, (p[h], p[v]), color="orange", fontsize=4.5, xytext=(2, 2), textcoords="offset points")
    title = title or f"{volume.source.split('/')[-1]}: {len(landmarks)} landmarks (projected)"
    return _save(plt, fig, path, title, dpi=150)


def subject_sheet(subjects, path: str | Path, *, label: str = "AC", overwrite: bool = False, title: str = "") -> Path:
    """Write a PNG sheet of subjects: one row per subject, three orthogonal slices (axial, coronal,
    sagittal) through its landmark ``label``, every landmark near the slices marked.

    ``subjects``: :class:`jaxmed.data.synth.Subject` objects or ``(volume, landmarks)`` pairs (any
    orientation; drawn in RAS voxel order). Raises :class:`~jaxmed.errors.LandmarkError` if a subject
    has no ``label`` (before anything is drawn).
    """
    path = Path(path)
    check_writable(path, overwrite)
    pairs = [(s.volume, s.landmarks) if hasattr(s, "volume") else tuple(s) for s in subjects]
    if not pairs:
        from jaxmed.errors import ConfigError

        raise ConfigError(f"{path}: no subjects to draw")
    centres = [lm[label] for _, lm in pairs]  # LandmarkError names the subject's landmark set
    plt = _pyplot()
    fig, axes = plt.subplots(len(pairs), 3, figsize=(9, 3 * len(pairs)), squeeze=False)
    for row, ((volume, landmarks), centre) in enumerate(zip(pairs, centres)):
        volume = reorient_to_ras(volume)
        draw_orthogonal(axes[row], volume, centre, landmarks.positions, landmarks.labels)
        sp = "×".join(f"{s:.2g}" for s in volume.spacing)
        axes[row][0].set_title(f"{volume.source.split('/')[-1][:48]}\n{sp} mm voxels; axial", fontsize=6)
    return _save(plt, fig, path, title or f"{len(pairs)} subjects, slices through {label}", dpi=90)
