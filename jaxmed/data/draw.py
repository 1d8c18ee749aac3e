"""Drawing volumes with matplotlib (Agg backend): orthogonal slices through a world point, with
points and paths projected onto them (world RAS mm). Used by :mod:`jaxmed.viz` and the env
trajectory viewer (:mod:`jaxmed.envs.viewer`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxmed.data.image_io import reorient_to_ras
from jaxmed.data.volume import Volume


def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: (axis through which the slice is cut, the two voxel axes shown (horizontal, vertical), title)
VIEWS = ((2, (0, 1), "axial"), (1, (0, 2), "coronal"), (0, (1, 2), "sagittal"))


def _slice(data: np.ndarray, axis: int, index: int) -> np.ndarray:
    index = int(np.clip(round(index), 0, data.shape[axis] - 1))
    return np.take(data, index, axis=axis)


def draw_orthogonal(
    ax_row,
    volume: Volume,
    centre_world: np.ndarray,
    points_world: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    paths_world: Sequence[np.ndarray] = (),
    marker_kw: dict | None = None,
) -> None:
    """Draw axial / coronal / sagittal slices through ``centre_world`` (mm) on three axes.

    ``points_world``: ``(n, 3)`` mm points projected onto every view (labelled when ``labels`` is
    given); ``paths_world``: polylines ``(t, 3)`` mm drawn in every view.
    """
    volume = reorient_to_ras(volume)  # views are named for RAS voxel order
    c_vox = volume.world_to_voxel(np.asarray(centre_world))
    for ax, (cut, (h, v), title) in zip(ax_row, VIEWS):
        img = _slice(volume.data, cut, c_vox[cut])
        aspect = volume.spacing[v] / volume.spacing[h]  # square millimetres on screen
        ax.imshow(img.T, cmap="gray", origin="lower", interpolation="nearest", aspect=aspect)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        for path in paths_world:
            pv = volume.world_to_voxel(np.asarray(path))
            ax.plot(pv[:, h], pv[:, v], "-", color="deepskyblue", lw=1)
            ax.plot(pv[0, h], pv[0, v], "o", color="deepskyblue", ms=4)
            ax.plot(pv[-1, h], pv[-1, v], "s", color="yellow", ms=4)
        if points_world is not None and len(points_world):
            pv = volume.world_to_voxel(np.asarray(points_world))
            near = np.abs(pv[:, cut] - c_vox[cut]) <= 6  # only points near this slice
            kw = dict(marker="+", color="red", s=30, linewidths=1)
            kw.update(marker_kw or {})
            ax.scatter(pv[near, h], pv[near, v], **kw)
            if labels is not None:
                for p, lab, ok in zip(pv, labels, near):
                    if ok:
                        ax.annotate(lab, (p[h], p[v]), color="orange", fontsize=5, xytext=(2, 2), textcoords="offset points")
