"""benchmarks/plane_real.py: plane errors against the plane fitted to Colin27's own AFIDs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from jaxmed.data import colin27
from jaxmed.data.planes import get_plane

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "plane_real.py"
_spec = importlib.util.spec_from_file_location("plane_real", _PATH)
pr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pr)


@pytest.mark.parametrize("name", ["acpc_axial", "midsagittal"])
def test_plane_metrics_of_the_true_a_shifted_and_a_tilted_plane(name):
    d = get_plane(name)
    points = colin27.landmarks().select(list(d.labels)).positions
    n, off = (np.asarray(v, np.float64) for v in d.plane(points))
    exact = pr.plane_metrics(d, points, n, float(off))
    assert exact["angle_deg"] < 0.05
    ref = points[list(d.reference_indices())]
    residual = np.mean(np.abs(ref @ n - off))  # the reference landmarks' own distance to their fitted plane
    assert exact["landmark_distance_mm"] == pytest.approx(residual, abs=1e-3)
    shifted = pr.plane_metrics(d, points, n, float(off) + 3.0)
    assert shifted["angle_deg"] < 0.05
    if name == "acpc_axial":  # AC and PC lie on their plane: a 3 mm shift is 3 mm for both
        assert residual < 1e-3 and shifted["landmark_distance_mm"] == pytest.approx(3.0, abs=1e-3)
    else:
        assert shifted["landmark_distance_mm"] >= 3.0 - residual - 1e-3
    # tilted by 5 degrees about an axis in the plane, through the reference landmarks' centroid
    c = ref.mean(0)
    axis = np.cross(n, [0.0, 0.0, 1.0] if abs(n[2]) < 0.9 else [1.0, 0.0, 0.0])
    tn = Rotation.from_rotvec(np.radians(5.0) * axis / np.linalg.norm(axis)).as_matrix() @ n
    tilted = pr.plane_metrics(d, points, tn, float(tn @ c))
    assert tilted["angle_deg"] == pytest.approx(5.0, abs=0.05)
    assert tilted["landmark_distance_mm"] > exact["landmark_distance_mm"]
