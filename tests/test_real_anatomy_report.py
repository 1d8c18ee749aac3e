"""benchmarks/real_anatomy.py tables: mean ± std over seeds, answers over 10 mm, and the row of the
same answers after the shape check (with how many it replaced)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "real_anatomy.py"
_spec = importlib.util.spec_from_file_location("real_anatomy", _PATH)
ra = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ra)


def _result(shape: bool) -> dict:
    seeds = []
    for errs, shaped in (([[1.0, 12.0], [3.0, 2.0]], [[1.0, 4.0], [3.0, 2.0]]), ([[2.0, 2.0], [1.0, 11.0]], [[2.0, 2.0], [1.0, 5.0]])):
        p = {"errors_mm": errs, "uncertainty_mm": [[0.5, 0.5], [1.0, 1.0]], "agent_seconds_per_subject": 0.2, "compile_seconds": 3.0}
        if shape:
            p["shape_errors_mm"] = shaped
            p["shape_outliers"] = [[False, errs[0][1] > 10], [False, errs[1][1] > 10]]
        seeds.append(p)
    return {"run": "runs/x", "seeds": 2, "aggregate": "median", "machine": {}, "command": "python benchmarks/real_anatomy.py",
            "sets": {"afids": {"subjects": ["a", "b"], "labels": ["AC", "PC"], "per_seed": seeds,
                               "baselines": {"prior": [[2.0, 3.0], [2.0, 3.0]]}}}}


def test_summary_means_over_subjects_then_seeds():
    rows = ra.summary(_result(False))
    (name, row), = rows.items()
    assert name == "afids (2 synthetic held-out)"
    assert row["AC"]["agent_mean"] == pytest.approx((2.0 + 1.5) / 2) and row["AC"]["agent_std"] == pytest.approx(0.25)
    assert row["all"]["agent_over_10mm"] == 2 and row["all"]["prior"] == pytest.approx(2.5)
    assert "outliers" not in row["all"]


def test_shape_rows_score_the_checked_answers_and_count_replacements():
    rows = ra.summary(_result(True))
    shaped = rows["afids (2 synthetic held-out) + shape check"]["all"]
    assert shaped["agent_mean"] == pytest.approx(((1 + 4 + 3 + 2) / 4 + (2 + 2 + 1 + 5) / 4) / 2)
    assert shaped["agent_over_10mm"] == 0 and shaped["outliers"] == 2
    table = ra.markdown(_result(True))
    assert "| afids (2 synthetic held-out) + shape check |" in table and "0 (2 replaced)" in table
