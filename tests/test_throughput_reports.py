"""The Markdown tables of the throughput benchmark scripts (``benchmarks/{env,train,ops}_throughput.py``),
rebuilt from their committed results: a machine line, one table row per measured point, and a
``Skipped:`` line naming the points that could not run (``benchmarks/common.rows_markdown``)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """The script ``benchmarks/<name>.py`` as module ``name`` (registered before it runs: its dataclasses
    look their module up, and the scripts import each other by these names)."""
    path = BENCH / f"{name}.py"
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "")).resolve() == path:
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_rows_markdown_lists_measured_rows_and_skipped_ones():
    common = _load("common")
    machine = {"cpu": "CPU X", "cores": 2, "device": "cpu", "jax": "0.0", "date": "2026-12-05", "git_commit": None}
    rows = [{"n": 1, "v": 2.0}, {"n": 4, "skipped": "out of memory"}, {"n": 8, "v": 3.5}]
    text = common.rows_markdown(machine, "intro text.", "| n | v |\n|---|---|", rows, lambda r: f"| {r['n']} | {r['v']} |",
                                lambda r: f"n={r['n']}")
    lines = text.splitlines()
    assert lines[0] == "Machine: CPU X, 2 cores, cpu; jax 0.0; 2026-12-05; commit n/a; intro text."
    assert lines[1] == "" and lines[4:6] == ["| 1 | 2.0 |", "| 8 | 3.5 |"]
    assert lines[-1] == "Skipped: n=4 (out of memory)"
    assert "Skipped" not in common.rows_markdown(machine, "", "| n |", rows[:1], lambda r: "| 1 |", str)


@pytest.mark.parametrize("name", ["env_throughput", "train_throughput", "ops_throughput"])
def test_saved_results_render_one_row_per_measured_point(name):
    module = _load(name)
    result = json.loads((BENCH / "results" / f"{name}.json").read_text())
    measured = [r for r in result["rows"] if "skipped" not in r]
    text = module.markdown(result)
    assert text.startswith(f"Machine: {result['machine']['cpu']}")
    table = [line for line in text.splitlines() if line.startswith("|")]
    header = [line for line in table if line.startswith("|---") or line.startswith("| ---")]
    assert len(header) == 1 and len(table) == 2 + len(measured)  # column names, separator, rows
    # a point that could not run is named on a Skipped line, not in the table
    result["rows"] = result["rows"] + [dict(measured[0], skipped="test reason")]
    again = module.markdown(result)
    assert again.splitlines()[-1].startswith("Skipped: ") and "(test reason)" in again
    assert len([line for line in again.splitlines() if line.startswith("|")]) == len(table)
