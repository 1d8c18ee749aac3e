"""PNG figures: orthogonal slices with landmarks, and agent paths (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from jaxmed.data.draw import VIEWS as _VIEWS
from jaxmed.data.draw import draw_orthogonal
from jaxmed.data.draw import pyplot as _pyplot
from jaxmed.data.image_io import reorient_to_ras
from jaxmed.data.volume import Volume
from jaxmed.errors import check_writable


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
    fig.suptitle(title or f"{volume.source.split('/')[-1]}: {len(landmarks)} landmarks (projected)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
