"""The safety net under every refactor: each committed run's results.json rebuilds from its
cells.jsonl and meta.json byte for byte, and each committed run renders its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustbench_cl.engine.results import load_results, validate_results
from robustbench_cl.report.html import render_results

REPORTS = Path(__file__).resolve().parent.parent / "reports"
COMMITTED = sorted(p.parent for p in REPORTS.glob("*/results.json"))


def test_there_are_committed_runs_to_check():
    assert len(COMMITTED) >= 10


@pytest.mark.parametrize("run_dir", COMMITTED, ids=lambda p: p.name)
def test_committed_results_rebuild_byte_identical_and_render(run_dir):
    results = load_results(run_dir)
    validate_results(results)
    text = json.dumps(results, indent=2, sort_keys=True) + "\n"  # as write_json_atomic writes
    assert text == (run_dir / "results.json").read_text(encoding="utf-8")
    html = render_results(results, run_dir)
    assert html.startswith("<!DOCTYPE html>") and "</html>" in html
    assert results["run"]["suite"] in html
