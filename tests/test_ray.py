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
            r["id"]: {k: v for k, v in r.items() if k not in ("wall_time", "attack_seconds")}
            for r in records
            if r["type"] == "cell"
        }

    assert without_time(run) == without_time(local)  # costs, probes, flags, examples too


# ---------------------------------------------------------------------- every task on Ray
def _without_paths(value):  # noqa: ANN001, ANN202
    from robustbench_cl.shipped import without_timings

    return without_timings(value)


def _records_by_id(run_dir: Path) -> dict[str, dict]:
    from robustbench_cl.shipped import without_timings

    lines = (run_dir / "cells.jsonl").read_text().splitlines()
    return {r["id"]: without_timings(r) for r in map(json.loads, lines)}


def _jailbreak_config() -> dict:
    return {
        "suite": "ray-jailbreak",
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
            "shard_size": 2,  # two shards of two behaviours per attack cell
        },
    }


def _retrieval() -> dict:
    from tests.test_retrieval import _retrieval_config

    return _retrieval_config(shard_size=10)  # 24 test images: evaluations in shards of 10


def _screens_config() -> dict:
    from tests.test_screens import _config as screens

    config = screens()
    config["screens"]["protectors"] = config["screens"]["protectors"][:4]  # no DualTAP training
    config["screens"]["shard_size"] = 3  # 4 test screens: shards of 3 and 1
    return config


def _pair_columns_config() -> dict:
    """Membership (its reference models a unit of their own) and generation columns."""
    return {
        "suite": "ray-pairs",
        "data": {"name": "digits", "split": "test", "n": 32},
        "models": [{"spec": "builtin:digits-cnn", "name": "cnn"}],
        "defenses": [{"defense": "none"}],
        "membership": [
            {"attack": "loss", "n": 40},
            {"attack": "lira", "params": {"reference_models": 2}, "n": 40},
        ],
        "generation": {"n_per_class": 2, "steps": 3},
        "engine": {"sanity_probe_size": 8},
    }


def _calibration_config() -> dict:
    from tests.test_task_protocol import _config as calibration

    return calibration()


@pytest.mark.parametrize(
    "make_config",
    [_retrieval, _jailbreak_config, _screens_config, _pair_columns_config, _calibration_config],
    ids=["retrieval", "jailbreak", "screens", "membership-generation", "calibration"],
)
def test_every_task_gives_identical_records_on_ray_and_locally(local_ray, tmp_path, make_config):
    """Retrieval fits and evaluations, jailbreak cells (sharded over behaviours), screens
    columns, membership reference models and audits, generation columns and a task from outside
    the package (sharded) run as Ray tasks; the driver's records equal a local run's."""
    config = make_config()
    local = rbcl.run(config, out=tmp_path / "local", profile=None, device="cpu")
    remote = rbcl.run(config, out=tmp_path / "ray", profile=None, device="cpu", executor="ray")
    assert _records_by_id(remote) == _records_by_id(local)
    assert all(
        r.get("n", 4) == 4 for r in _records_by_id(local).values() if r["type"] == "jailbreak"
    )
    local_results = json.loads((local / "results.json").read_text())
    remote_results = json.loads((remote / "results.json").read_text())
    for key in set(local_results) - {"run"}:
        assert _without_paths(remote_results[key]) == _without_paths(local_results[key]), key


def test_a_second_ray_run_of_the_same_config_writes_its_own_artifacts(local_ray, tmp_path):
    """Workers keep their tasks between shards; a run into another directory must not reuse
    the first run's task (its fitted perturbations would land in the first directory)."""
    config = _retrieval()
    for name in ("first", "second"):
        run = rbcl.run(config, out=tmp_path / name, profile=None, device="cpu", executor="ray")
        cells = json.loads((run / "results.json").read_text())["retrieval"]["cells"]
        assert cells and all((run / cell["perturbation"]).exists() for cell in cells), name
