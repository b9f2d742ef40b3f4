"""A task written outside the package (tests/example_task: one module plus one template) runs
through the same engine as the packaged ones: units, shards, resume, results section and schema,
report section, terminal table, sanity flags and one-line config errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import robustbench_cl as rbcl
from robustbench_cl.engine.results import load_results, validate_results
from robustbench_cl.errors import UserError
from robustbench_cl.report.html import render_report
from tests.conftest import assert_resumes_after_a_torn_line
from tests.example_task import calibration  # noqa: F401  (registers the task)


def _config(**section) -> dict:
    return {
        "suite": "calibration-example",
        "tasks": {
            "calibration": {
                "models": ["builtin:digits-cnn", "builtin:digits-judge"],
                "n": 120,
                "shard_size": 50,
                **section,
            }
        },
    }


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]


def test_an_outside_task_runs_end_to_end_with_shards_results_report_and_table(tmp_path):
    run_dir = rbcl.run(_config(), out=tmp_path / "run", profile=None)
    records = _records(run_dir)
    assert [r["type"] for r in records] == ["calibration", "calibration"]
    assert all(r["n"] == 120 and 0 <= r["ece"] <= 1 for r in records)
    # three shards (50, 50, 20 samples) merge into what one shard over all of them gives
    whole = _records(rbcl.run(_config(shard_size=1000), out=tmp_path / "whole", profile=None))
    assert [r["id"] for r in whole] == [r["id"] for r in records]
    for sharded, single in zip(records, whole):
        assert sharded["bins"] == single["bins"]
        assert sharded["ece"] == pytest.approx(single["ece"], abs=1e-6)
    results = load_results(run_dir)
    validate_results(results)  # the task's own schema joins the packaged one
    assert [row["model"] for row in results["calibration"]] == [
        "builtin:digits-cnn",
        "builtin:digits-judge",
    ]
    assert results["pairs"] == [] and results["cells"] == []
    html = render_report(run_dir)
    assert '<section id="calibration">' in html and 'href="#calibration"' in html
    from robustbench_cl.cli.main import cli

    shown = CliRunner().invoke(cli, ["show", str(run_dir)], env={"COLUMNS": "160"})
    assert shown.exit_code == 0 and "calibration: ECE" in shown.output


def test_an_outside_task_resumes_by_unit_id(tmp_path):
    run_dir = rbcl.run(_config(), out=tmp_path / "run", profile=None)
    assert_resumes_after_a_torn_line(
        run_dir, lambda: rbcl.run(_config(), out=run_dir, profile=None)
    )


def test_an_outside_task_flags_and_counts_them(tmp_path):
    run_dir = rbcl.run(_config(), out=tmp_path / "run", profile=None)
    results = load_results(run_dir)
    poorly = [r for r in results["calibration"] if r["ece"] > 0.2]
    assert results["flag_count"] == len(poorly)


def test_an_outside_task_section_is_validated_with_a_one_line_error():
    with pytest.raises(UserError, match=r"^tasks\.calibration\.bins: "):
        rbcl.run(_config(bins=1), out="unused", profile=None)
    with pytest.raises(UserError, match=r"^tasks\.calibrationn: unknown task .*calibration"):
        rbcl.run({"suite": "x", "tasks": {"calibrationn": {}}}, out="unused", profile=None)


def test_records_the_plan_no_longer_makes_are_set_aside_on_resume(tmp_path):
    """A record of an earlier invocation whose unit id this plan lacks (its data or the code
    changed) moves to cells.stale.jsonl: results list only this plan's records, none is lost."""
    run_dir = rbcl.run(_config(), out=tmp_path / "run", profile=None)
    first, second = _records(run_dir)
    old = {**first, "id": "0123456789abcdef"}  # as if made from other data
    (run_dir / "cells.jsonl").write_text(json.dumps(old) + "\n" + json.dumps(second) + "\n")
    rbcl.run(_config(), out=run_dir, profile=None)
    records = _records(run_dir)
    assert sorted(r["id"] for r in records) == sorted([first["id"], second["id"]])
    stale = (run_dir / "cells.stale.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in stale] == [old["id"]]
    assert len(load_results(run_dir)["calibration"]) == 2
