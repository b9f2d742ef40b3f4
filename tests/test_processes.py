"""The processes executor (local worker processes, no Ray): the records of a local run, a user
error from a worker as one line, and --workers refused where it means nothing."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

import robustbench_cl as rbcl
from robustbench_cl.errors import UserError
from robustbench_cl.shipped import without_timings

pytestmark = pytest.mark.xdist_group("processes")


def _config() -> dict:
    """Sharded cascade groups, a membership audit, generation, and jailbreak cells sharded over
    behaviours, in one run (retrieval and screens take the same remote path: tests/test_ray.py
    runs them, and the whole quickstart gave identical records by hand, README)."""
    return {
        "suite": "processes-small",
        "seed": 0,
        "data": {"name": "digits", "n": 32},
        "models": [{"spec": "builtin:digits-cnn", "name": "cnn"}],
        "defenses": [{"defense": "none"}],
        "attacks": [
            {"attack": "fgsm", "threat": {"norm": "linf", "eps": [0.05, 0.1]}},
            {"attack": "pgd", "params": {"steps": 5}, "threat": {"norm": "l2", "eps": 1.0}},
        ],
        "membership": [{"attack": "loss", "n": 40}],
        "generation": {"n_per_class": 2, "steps": 3},
        "engine": {"sanity_probe_size": 8, "batch_size": 16, "shard_size": 12},
        "jailbreak": {
            "data": {"n_harmful": 4, "n_benign": 4, "n_borderline": 4},
            "models": [{"spec": "builtin:tiny-chat-lm", "name": "tiny"}],
            "defenses": [{"defense": "none", "name": "base"}],
            "attacks": [
                {"attack": "direct"},
                {"attack": "gcg", "params": {"steps": 2, "candidates": 4, "suffix_length": 3}},
            ],
            "max_new_tokens": 8,
            "batch_size": 2,
            "shard_size": 2,
        },
    }


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "cells.jsonl").read_text().splitlines()
    return [without_timings(json.loads(line)) for line in lines]


def test_worker_processes_write_the_records_of_a_local_run(tmp_path):
    """The same records, in the same file order, as the local executor's."""
    config = _config()
    local = rbcl.run(config, out=tmp_path / "local", profile=None, device="cpu")
    remote = rbcl.run(
        config, out=tmp_path / "processes", profile=None, device="cpu", executor="processes"
    )
    records = _records(local)
    assert {r["type"] for r in records} >= {"cell", "membership", "generation", "jailbreak"}
    assert _records(remote) == records
    meta = json.loads((remote / "meta.json").read_text())
    assert meta["executor"] == "processes" and meta["workers"] >= 1


def _refuse(steps: int) -> None:
    raise UserError("attacks[0].steps", f"must be >= 1, got {steps}", "give 10")


def _die() -> None:
    import os

    os._exit(1)  # as an out-of-memory kill would


def test_a_user_error_raised_in_a_worker_reaches_the_driver_intact():
    from robustbench_cl.engine.executors import ProcessExecutor

    error = pickle.loads(pickle.dumps(UserError("attacks[0].steps", "must be >= 1", "give 10")))
    assert (error.field, error.problem, error.fix) == (
        "attacks[0].steps",
        "must be >= 1",
        "give 10",
    )
    executor = ProcessExecutor(1)
    try:
        executor.submit("unit", _refuse, 0)
        with pytest.raises(UserError) as raised:
            list(executor.completed())
    finally:
        executor.close(abort=True)
    assert str(raised.value) == "attacks[0].steps: must be >= 1, got 0; give 10"


def test_a_dead_worker_ends_the_run_with_one_clear_error():
    from robustbench_cl.engine.executors import ProcessExecutor

    executor = ProcessExecutor(1)
    try:
        executor.submit("unit", _die)
        with pytest.raises(RuntimeError, match="a worker process died.*a rerun resumes"):
            list(executor.completed())
    finally:
        executor.close(abort=True)


def test_workers_without_the_processes_executor_is_one_line(tmp_path):
    from tests.test_cli import invoke

    result = invoke("run", "quickstart", "--workers", "2", "--out", str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "--workers" in result.output and "--executor processes" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
