"""benchmarks/intensity_sensitivity.py: the normalisation with another image's range, and the table
(mean over seeds with each seed's value, per factor, per pool and for the range swap)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from jaxmed.data import Volume

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "intensity_sensitivity.py"
_spec = importlib.util.spec_from_file_location("intensity_sensitivity", _PATH)
isens = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(isens)


def test_normalised_clips_and_scales_to_the_given_range():
    raw = Volume(np.array([0.0, 50.0, 118.0, 178.0, 250.0], np.float32).reshape(5, 1, 1), np.eye(4))
    np.testing.assert_allclose(isens._normalised(raw, 0.0, 118.0).data.ravel(), [0, 50 / 118, 1, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(isens._normalised(raw, 0.0, 178.0).data.ravel(), [0, 50 / 178, 118 / 178, 1, 1], rtol=1e-6)


def test_table_gives_the_mean_over_seeds_and_each_seed():
    def seed(pc):
        return {"scan": {"colin27": {"1.0": {"AC": 1.0, "PC": pc}, "0.7": {"AC": 2.0, "PC": pc + 1}}},
                "pooled": {"colin27": {"0.7 1.0": {"AC": 1.5, "PC": pc}}},
                "range_swap": {"colin27 normalised with the colin27-bet range": {"AC": 1.0, "PC": 3.0}}}

    result = {"run": "runs/x", "factors": [0.7, 1.0], "intensity_ceiling": None, "ranges": {"colin27": [0.0, 178.0]},
              "seeds": [seed(1.0), seed(2.0)], "machine": {}, "command": "python benchmarks/intensity_sensitivity.py"}
    table = isens.markdown(result)
    assert "| colin27 | × 1.0 | 1.00 (1.00, 1.00) | 1.50 (1.00, 2.00) |" in table
    assert "| colin27 | × 0.7 | 2.00 (2.00, 2.00) | 2.50 (2.00, 3.00) |" in table
    assert "| colin27 | pooled 0.7 1.0 | 1.50 (1.50, 1.50) | 1.50 (1.00, 2.00) |" in table
    assert "| colin27 | normalised with the colin27-bet range | 1.00 (1.00, 1.00) | 3.00 (3.00, 3.00) |" in table
    assert "2 seed(s)" in table
