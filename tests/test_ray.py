"""The Ray executor (a local Ray, 2 CPUs): identical per-sample outcomes to the local executor,
and a worker that dies mid-group still yields a complete, correct run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import robustbench_cl as rbcl

ray = pytest.importorskip("ray", reason="ray is an extra: pip install 'robustbench-cl[ray]'")

pytestmark = pytest.mark.xdist_group("ray")


def _config() -> dict:
    return {
        "suite": "ray-small",
        "seed": 0,
        "data": {"name": "digits", "n": 32},
        "models": [{"spec": "builtin:digits-cnn", "name": "cnn"}],
        "defenses": [{"defense": "none"}],
        "attacks": [
            {"attack": "fgsm", "threat": {"norm": "linf", "eps": [0.05, 0.1]}},
            {
                "attack": "pgd",
                "params": {"steps": 5},
                "threat": {"norm": "linf", "eps": [0.05, 0.1]},
            },
            {
                "attack": "pgd",
                "name": "pgd-l2",
                "params": {"steps": 5},
                "threat": {"norm": "l2", "eps": 1.0},
            },
        ],
        "engine": {"sanity_probe_size": 8, "batch_size": 16},
    }


def _outcomes(run_dir: Path) -> dict[str, list[int]]:
    records = [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]
    return {r["id"]: r["outcomes"] for r in records if r["type"] == "cell"}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    return rbcl.run(_config(), out=tmp_path_factory.mktemp("local") / "run", profile=None)


def test_ray_and_local_runs_give_identical_outcomes(local_ray, local_run, tmp_path):
    run = rbcl.run(_config(), out=tmp_path / "ray", profile=None, executor="ray")
    assert _outcomes(run) == _outcomes(local_run)
    assert json.loads((run / "meta.json").read_text())["executor"] == "ray"


def test_a_worker_killed_mid_group_is_retried(local_ray, local_run, tmp_path, monkeypatch):
    from robustbench_cl.engine import executors

    marker = tmp_path / "crashed"
    monkeypatch.setenv(executors.FAULT_ONCE, str(marker))
    run = rbcl.run(_config(), out=tmp_path / "ray", profile=None, executor="ray")
    assert marker.exists()  # one worker did die
    assert _outcomes(run) == _outcomes(local_run)  # and the run is still complete and correct


def test_sample_shards_run_as_tasks_and_merge_like_a_local_sharded_run(local_ray, tmp_path):
    config = _config()
    config["engine"]["shard_size"] = 12  # 32 samples: three shards per cascade group
    local = rbcl.run(config, out=tmp_path / "local", profile=None)
    run = rbcl.run(config, out=tmp_path / "ray", profile=None, executor="ray")
    assert _outcomes(run) == _outcomes(local)

    def without_time(run_dir: Path) -> dict[str, dict]:
        lines = (run_dir / "cells.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        return {
            r["id"]: {k: v for k, v in r.items() if k != "wall_time"}
            for r in records
            if r["type"] == "cell"
        }

    assert without_time(run) == without_time(local)  # costs, probes, flags, examples too
