"""benchmarks/tables.py rewrites the marked tables of reports/README.md from the JSON files."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tables(monkeypatch, bench: Path):
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "BENCH", bench)
    return module


def test_a_marked_table_is_rewritten_from_its_json_and_the_prose_kept(monkeypatch, tmp_path):
    row = {
        "peak_mib_1k": 900.0,
        "peak_mib_10k": 950.0,
        "ratio_10k_over_1k": 950 / 900,
        "seconds_1k": 1.0,
        "seconds_10k": 9.5,
    }
    (tmp_path / "streaming_memory.json").write_text(json.dumps({"rows": {"shard 1000": row}}))
    tables = _tables(monkeypatch, tmp_path)
    text = "prose before\n<!-- bench:streaming_memory -->\nold table\n<!-- /bench:streaming_memory -->\nprose after\n"
    written = tables.write(text)
    assert "old table" not in written
    assert "| 900 | 950 | **1.06** | 9.5 |" in written
    assert written.startswith("prose before\n") and written.endswith("prose after\n")
    assert tables.write(written) == written  # idempotent


def test_missing_markers_are_an_error_and_a_missing_json_keeps_the_table(monkeypatch, tmp_path):
    tables = _tables(monkeypatch, tmp_path)
    assert tables.write("no json, no change\n") == "no json, no change\n"
    (tmp_path / "streaming_memory.json").write_text(json.dumps({"rows": {}}))
    with pytest.raises(SystemExit, match="bench:streaming_memory"):
        tables.write("no markers\n")


def test_the_committed_readme_is_what_the_committed_json_gives():
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "benchmarks" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (ROOT / "reports" / "README.md").read_text()
    assert module.write(text) == text
