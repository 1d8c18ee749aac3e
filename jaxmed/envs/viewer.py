"""Pictures of landmark episodes: the agents' paths over orthogonal slices through their targets.

Typical use after an evaluation rollout whose level-0 positions were collected as ``(T, n_agents, 3)``::

    paths = trajectory_world(bank, volume, positions)          # (n_agents, T, 3) mm
    targets = np.asarray(bank.landmarks_world[volume, target_ids])
    render_episode(bank_volume(bank, volume), paths, targets, "episode.png")

The slices are drawn by :func:`jaxmed.data.draw.draw_orthogonal` (start: circle, end: square, path: line);
the target is a red cross; the title gives each agent's final error in mm.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxmed.data import geometry
from jaxmed.data.draw import draw_orthogonal, pyplot
from jaxmed.data.volume import Volume
from jaxmed.errors import ConfigError, check_writable

TARGET_MARKER = dict(marker="x", color="red", s=60, linewidths=1.5)


def bank_volume(bank, volume: int, level: int = 0) -> Volume:
    """The unpadded volume ``volume`` of a :class:`~jaxmed.data.bank.VolumeBank` at ``level`` as a
    :class:`Volume` (float32 normalised intensities, that level's voxel -> world RAS mm affine)."""
    shape = np.asarray(bank.shapes[level, volume])
    m = bank.margin
    stored = np.asarray(bank.levels[level][volume, m : m + shape[0], m : m + shape[1], m : m + shape[2]])
    data = stored.astype(np.float32) * float(bank.intensity_scale)
    return Volume(data, np.asarray(bank.affines[level, volume], np.float64), source=f"bank volume {volume} (level {level})")


def trajectory_world(bank, volume: int, positions_level0) -> np.ndarray:
    """Level-0 voxel positions of a rollout ``(T, n_agents, 3)`` (or ``(T, 3)``) -> world RAS mm.

    Uses ``bank.affines[0, volume]``. Returns ``(n_agents, T, 3)`` float64 mm, agent-major (the
    layout :func:`render_episode` takes); a ``(T, 3)`` input gives ``(1, T, 3)``.
    """
    pos = np.asarray(positions_level0)
    if pos.ndim == 2:
        pos = pos[:, None]
    if pos.ndim != 3 or pos.shape[-1] != 3:
        raise ConfigError(f"trajectory_world: positions must be (T, n_agents, 3) or (T, 3), got shape {pos.shape}")
    affine = np.asarray(bank.affines[0, volume], np.float64)
    return geometry.voxel_to_world(affine, pos.transpose(1, 0, 2))


def _agent_major(path_world, target_world) -> tuple[np.ndarray, np.ndarray]:
    """Normalise paths to ``(n, T, 3)`` and targets to ``(n, 3)`` (a single target is shared)."""
    paths = np.asarray(path_world, np.float64)
    paths = paths[None] if paths.ndim == 2 else paths
    if paths.ndim != 3 or paths.shape[-1] != 3 or paths.shape[1] == 0:
        raise ConfigError(f"render_episode: path_world must be (T, 3) or (n_agents, T, 3) mm, got shape {np.shape(path_world)}")
    targets = np.asarray(target_world, np.float64).reshape(-1, 3)
    if len(targets) == 1:
        targets = np.repeat(targets, len(paths), axis=0)
    if len(targets) != len(paths):
        raise ConfigError(f"render_episode: {len(paths)} paths but {len(targets)} targets")
    return paths, targets


def final_errors_mm(path_world, target_world) -> np.ndarray:
    """``(n_agents,)`` distance (mm) from each path's last point to its target."""
    paths, targets = _agent_major(path_world, target_world)
    return np.linalg.norm(paths[:, -1] - targets, axis=-1)


def _legend(fig) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color="deepskyblue", marker="o", ms=4, label="path / start"),
        Line2D([], [], color="yellow", marker="s", ms=4, ls="", label="end"),
        Line2D([], [], color="red", marker="x", ms=6, ls="", label="target"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)


def render_episode(volume: Volume, path_world, target_world, out_png, overwrite: bool = False) -> Path:
    """Write a PNG of an episode: per agent, a row of axial / coronal / sagittal slices through its
    target with its path projected on them, start, end and target marked.

    Args:
      volume: the :class:`Volume` the episode ran in (e.g. :func:`bank_volume`).
      path_world: ``(T, 3)`` or ``(n_agents, T, 3)`` world RAS mm, positions over time.
      target_world: ``(3,)`` or ``(n_agents, 3)`` world RAS mm.
      out_png: output path; refused (:class:`~jaxmed.errors.OverwriteError`) if it exists, unless
        ``overwrite``.

    Returns the path written. The title gives the final error (mm) of every agent.
    """
    paths, targets = _agent_major(path_world, target_world)
    errors = final_errors_mm(paths, targets)
    out_png = Path(out_png)
    check_writable(out_png, overwrite)
    plt = pyplot()
    n = len(paths)
    fig, axes = plt.subplots(n, 3, figsize=(10, 3.6 * n + 0.8), squeeze=False)
    for i, (row, path, target) in enumerate(zip(axes, paths, targets)):
        draw_orthogonal(row, volume, target, points_world=target[None], paths_world=[path], marker_kw=TARGET_MARKER)
        if n > 1:
            row[0].text(0.02, 0.95, f"agent {i}: {errors[i]:.1f} mm", transform=row[0].transAxes, color="white", fontsize=8, va="top")
    steps = paths.shape[1] - 1
    detail = f"{errors[0]:.2f} mm" if n == 1 else f"mean {errors.mean():.2f} mm (" + ", ".join(f"{e:.1f}" for e in errors) + ")"
    fig.suptitle(f"{volume.source}: final error {detail} after {steps} steps", fontsize=10)
    _legend(fig)
    fig.tight_layout(rect=(0, 0.05, 1, 1), h_pad=2.0)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_first_episode(targets, bank, path_vox, volumes, out_png) -> Path:
    """Draw an evaluation's first episode on the first evaluated volume: each agent's path
    (``path_vox``, what :meth:`~jaxmed.envs.base.Environment.trajectory_of` recorded, ``(T + 1, E, A, 3)``
    level-0 voxels; ``volumes``: ``(E,)`` the bank volume of each episode) and its target landmark
    (``targets``: the bank labels the agents look for, :attr:`~jaxmed.envs.base.Environment.landmark_targets`)
    on orthogonal slices of that volume, written to ``out_png`` (replaced if it exists)."""
    v = int(volumes[0])
    volume = bank_volume(bank, v)
    episode = int(np.flatnonzero(np.asarray(volumes) == v)[0])
    world = trajectory_world(bank, v, np.asarray(path_vox)[:, episode])  # (A, T+1, 3) mm
    target_world = np.asarray(bank.landmarks_world[v])[[bank.label_index(t) for t in targets]]
    return render_episode(volume, world, target_world, out_png, overwrite=True)
