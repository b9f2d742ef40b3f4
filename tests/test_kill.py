"""A real kill -9 mid-run, then a rerun: the run resumes from its last whole record, recomputes
only what was lost, and ends with the records an uninterrupted run writes (timings aside). For
every task: a classification matrix, a retrieval section, a jailbreak section, membership and
generation columns, a screens section and a textret section."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import robustbench_cl as rbcl
from tests.conftest import ROOT, without_timings
from tests.test_retrieval import _retrieval_config

CLASSIFICATION = {
    "suite": "kill-test",
    "seed": 0,
    "data": {"name": "digits", "n": 120},
    "models": [{"spec": "builtin:digits-cnn"}],
    "attacks": [
        {
            "attack": "pgd",
            "params": {"steps": 30},
            "threat": {"norm": "linf", "eps": [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2]},
        }
    ],
    "engine": {"sanity_probe_size": 8, "examples": 0, "cascade": False},
}


JAILBREAK = {
    "suite": "kill-jailbreak",
    "jailbreak": {
        "data": {"n_harmful": 4, "n_benign": 4, "n_borderline": 4},
        "models": [{"spec": "builtin:tiny-chat-lm", "name": "tiny"}],
        "defenses": [{"defense": "none", "name": "base"}],
        "attacks": [
            {"attack": "direct"},
            {"attack": "gcg", "params": {"steps": 3, "candidates": 4, "suffix_length": 3}},
            {"attack": "gcg", "name": "gcg-6", "params": {"steps": 6, "candidates": 4}},
        ],
        "max_new_tokens": 8,
        "batch_size": 2,
    },
}

MEMBERSHIP = {
    "suite": "kill-membership",
    "data": {"name": "digits", "split": "test"},
    "models": [{"spec": "builtin:digits-cnn"}],
    "defenses": [{"defense": "none"}],
    "membership": [
        {"attack": "loss", "n": 60},
        {"attack": "lira", "params": {"reference_models": 2}, "n": 60},
        {"attack": "rmia", "params": {"reference_models": 2}, "n": 60},
    ],
    "engine": {"sanity_probe_size": 8},
}


GENERATION = {
    "suite": "kill-generation",
    "data": {"name": "digits", "split": "test", "n": 40},
    "models": [{"spec": "builtin:digits-cnn"}, {"spec": "builtin:digits-judge"}],
    "defenses": [{"defense": "none"}],
    "generation": {"n_per_class": 2, "steps": 20},
    "engine": {"sanity_probe_size": 8},
}


def _screens() -> dict:
    from tests.test_screens import _config

    config = _config()
    config["screens"]["protectors"] = config["screens"]["protectors"][:4]  # no DualTAP
    config["screens"]["routers"] = ["easyocr"]
    return config


def _textret() -> dict:
    from tests.test_textret import CONFIG

    config = json.loads(json.dumps(CONFIG))
    config["textret"]["defenses"] = config["textret"]["defenses"][:2]  # frozen, InfoNCE
    return config


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "cells.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _kill_mid_run(config: dict, out: Path, tmp_path: Path, after: int) -> int:
    """Start ``run`` in a subprocess, SIGKILL it once ``after`` records are on disk; returns how
    many whole records survived."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ROBUSTBENCH_CL_THREADS": "1"}
    command = [sys.executable, "-m", "robustbench_cl.cli.main", "run", str(path), "--out", str(out)]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            lines = (
                (out / "cells.jsonl").read_text().count("\n")
                if (out / "cells.jsonl").exists()
                else 0
            )
            if lines >= after:
                break
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return len((out / "cells.jsonl").read_text().splitlines())


@pytest.mark.parametrize(
    ("name", "config", "after"),
    [
        ("classification", CLASSIFICATION, 3),
        ("retrieval", _retrieval_config(), 3),
        ("jailbreak", JAILBREAK, 2),
        ("membership", MEMBERSHIP, 2),
        ("generation", GENERATION, 2),
        ("screens", _screens(), 2),
        ("textret", _textret(), 3),
    ],
)
def test_a_killed_run_resumes_to_the_records_of_an_uninterrupted_one(name, config, after, tmp_path):
    whole = rbcl.run(config, out=tmp_path / "whole", profile=None, device="cpu")
    expected = {r["id"]: without_timings(r) for r in _records(whole)}
    out = tmp_path / "killed"
    survived = _kill_mid_run(config, out, tmp_path, after)
    assert survived < len(expected), f"{name}: nothing was left to resume"
    before = [r["id"] for r in _records(out)[: survived - 1]]  # the last line may be torn
    rbcl.run(config, out=out, profile=None, device="cpu")
    resumed = _records(out)
    assert [r["id"] for r in resumed[: len(before)]] == before  # kept, not recomputed
    assert {r["id"]: without_timings(r) for r in resumed} == expected
