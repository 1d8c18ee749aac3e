"""benchmarks/commissure_offsets.py: the bundle centre of an intensity line and the line sampler."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from jaxmed.data import Volume

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "commissure_offsets.py"
_spec = importlib.util.spec_from_file_location("commissure_offsets", _PATH)
co = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(co)


def test_bundle_centre_finds_the_near_bundle_not_a_brighter_structure_further_away():
    t = np.arange(-4.0, 4.001, 0.25)
    bundle = 0.6 * np.exp(-0.5 * ((t - 0.75) / 0.7) ** 2)
    other = 1.0 * np.exp(-0.5 * ((t + 3.8) / 0.5) ** 2)  # brighter, but 3.8 mm away
    assert abs(co.bundle_centre(t, 0.2 + bundle) - 0.75) < 0.05
    assert abs(co.bundle_centre(t, 0.2 + bundle + other, near=2.0) - 0.75) < 0.15
    assert co.bundle_centre(t, 0.2 + bundle + other, near=4.0) < -3.0  # allowed to look that far, it takes the other


def test_line_profile_samples_world_lines_through_the_affine():
    data = np.zeros((20, 20, 20), np.float32)
    data[:, :, 12] = 1.0  # a bright plane at voxel z = 12
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, -20.0, -20.0]  # voxel 12 -> world z = 4 mm
    vol = Volume(data=data, affine=affine)
    offsets, values = co.line_profile(vol, np.array([0.0, 0.0, 0.0]), axis=2, reach=6.0, disk=1.0)
    assert abs(offsets[np.argmax(values)] - 4.0) < 1e-6
    assert abs(co.bundle_centre(offsets, values, near=5.0) - 4.0) < 0.3
