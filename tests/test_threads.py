"""torch's CPU thread count: half the cores by default, --threads and the environment override
it, a bad value is one line, and meta.json records what a run used."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

import robustbench_cl as rbcl
from robustbench_cl.cli.main import cli
from robustbench_cl.engine import threads
from robustbench_cl.errors import UserError


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_default_is_half_the_cores_and_never_zero(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    for cores, expected in ((1, 1), (2, 1), (3, 1), (16, 8)):
        monkeypatch.setattr(threads, "available_cores", lambda cores=cores: cores)
        assert threads.resolve_threads() == expected
    assert threads.resolve_threads(3) == 3


def test_the_environment_overrides_and_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.apply_threads() == 3 and torch.get_num_threads() == 3
    monkeypatch.setenv(threads.ENV, "many")
    with pytest.raises(UserError, match="ROBUSTBENCH_CL_THREADS: must be an integer"):
        threads.resolve_threads()
    with pytest.raises(UserError, match="--threads: must be >= 1"):
        threads.resolve_threads(0)


def test_a_run_records_its_threads_and_the_cli_flag_sets_them(tmp_path, monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    config = {
        "suite": "threads",
        "data": {"name": "digits", "n": 16},
        "models": [{"spec": "builtin:digits-cnn"}],
        "attacks": [{"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
        "engine": {"sanity_probe_size": 4},
    }
    run_dir = rbcl.run(config, out=tmp_path / "a", profile=None, threads=2)
    assert json.loads((run_dir / "meta.json").read_text())["threads"] == 2
    # results.json and the report say which threads and which weights the run used
    run = json.loads((run_dir / "results.json").read_text())["run"]
    assert run["threads"] == 2
    (weights,) = [k for k in run["artifacts"] if "digits-cnn" in k]
    html = rbcl.write_report(run_dir).read_text()
    assert run["artifacts"][weights] in html and "2 CPU threads" in html
    import yaml

    path = tmp_path / "threads.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(
        cli, ["--threads", "1", "run", str(path), "--out", str(tmp_path / "b"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["threads"] == 1
    os.environ.pop(threads.ENV, None)  # the flag set it for this whole process
