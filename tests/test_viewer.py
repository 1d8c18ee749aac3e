"""Episode pictures (jaxmed.envs.viewer): a PNG is written, never over an existing file."""

from __future__ import annotations

import numpy as np
import pytest

from jaxmed.data.bank import build_bank
from jaxmed.data.phantoms import blob_phantom
from jaxmed.envs.viewer import bank_volume, final_errors_mm, render_episode, trajectory_world
from jaxmed.errors import ConfigError, OverwriteError


@pytest.fixture(scope="module")
def phantom():
    return blob_phantom((24, 22, 20), 2.0, 2, seed=0)


def _walk(start, goal, n):
    """``(n, 3)`` integer voxel path from ``start`` toward ``goal``."""
    return np.rint(np.linspace(start, goal, n)).astype(int)


def test_trajectory_world_and_bank_volume(phantom):
    volume, landmarks = phantom
    bank = build_bank([phantom], max_crop=9)
    positions = np.stack([_walk([2, 3, 4], [12, 11, 10], 7), _walk([20, 1, 0], [5, 5, 5], 7)], axis=1)  # (T, n, 3)
    paths = trajectory_world(bank, 0, positions)
    assert paths.shape == (2, 7, 3)
    np.testing.assert_allclose(paths, volume.voxel_to_world(positions.transpose(1, 0, 2)), atol=1e-4)
    assert trajectory_world(bank, 0, positions[:, 0]).shape == (1, 7, 3)
    back = bank_volume(bank, 0)
    np.testing.assert_allclose(back.data, volume.data, atol=1e-6)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)


def test_render_episode_writes_png_and_refuses_overwrite(tmp_path, phantom):
    volume, landmarks = phantom
    target = landmarks.positions[0]
    path = volume.voxel_to_world(_walk([1, 1, 1], np.rint(volume.world_to_voxel(target)), 15))
    out = tmp_path / "episode.png"
    assert render_episode(volume, path, target, out) == out
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(OverwriteError):
        render_episode(volume, path, target, out)
    assert out.read_bytes() == data
    render_episode(volume, path, target, out, overwrite=True)


def test_render_multi_agent_episode(tmp_path, phantom):
    volume, landmarks = phantom
    targets = landmarks.positions
    paths = np.stack([volume.voxel_to_world(_walk([0, 0, 0], volume.world_to_voxel(t), 9)) for t in targets])
    out = render_episode(volume, paths, targets, tmp_path / "multi.png")
    assert out.stat().st_size > 1000
    errors = final_errors_mm(paths, targets)
    assert errors.shape == (2,) and np.all(errors < 2.0)
    with pytest.raises(ConfigError):
        render_episode(volume, paths, targets[:1].repeat(3, 0), tmp_path / "bad.png")
