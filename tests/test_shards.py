"""Sample shards and streamed inputs: a shard is seeded by itself, holds only its own inputs,
and a safetensors dataset on disk gives the same outcomes as the same data in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import robustbench_cl as rbcl
from robustbench_cl.data import load_dataset
from robustbench_cl.data.files import StreamedData, write_tensors
from robustbench_cl.errors import UserError


def _config(data: str = "digits", **engine) -> dict:
    return {
        "suite": "shards",
        "seed": 0,
        "data": {"name": data, "n": 40},
        "models": [{"spec": "builtin:digits-cnn", "name": "cnn"}],
        "attacks": [
            {"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.1}},
            {"attack": "pgd", "params": {"steps": 4}, "threat": {"norm": "linf", "eps": 0.1}},
        ],
        "engine": {"sanity_probe_size": 8, "batch_size": 8, **engine},
    }


def _cells(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "cells.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {r["attack"]["attack"]: r for r in records if r["type"] == "cell"}


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("digits-tensors")
    for split in ("train", "test"):
        data = load_dataset("digits", split=split)
        write_tensors(directory, split, data.x, data.y, data.n_classes)
    return directory


def test_streamed_data_reads_the_rows_asked_for(digits_dir):
    streamed = load_dataset(f"safetensors:{digits_dir}", split="test")
    memory = load_dataset("digits", split="test")
    assert isinstance(streamed, StreamedData)
    assert len(streamed) == len(memory) and streamed.sample_shape == memory.sample_shape
    assert torch.equal(streamed.rows(5, 17), memory.x[5:17])
    assert torch.equal(streamed.y, memory.y) and streamed.n_classes == 10


def test_uint8_inputs_are_scaled_to_the_unit_range(tmp_path):
    x = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)
    write_tensors(tmp_path, "test", x, torch.tensor([1]), 2)
    rows = load_dataset(f"safetensors:{tmp_path}").rows(0, 1)
    assert rows.dtype == torch.float32
    assert torch.allclose(rows, x.float() / 255)


def test_a_streamed_dataset_gives_the_outcomes_of_the_same_data_in_memory(digits_dir, tmp_path):
    memory = _cells(rbcl.run(_config(), out=tmp_path / "memory", profile=None))
    streamed = _cells(
        rbcl.run(_config(f"safetensors:{digits_dir}"), out=tmp_path / "streamed", profile=None)
    )
    # FGSM draws no random numbers (PGD's random start is seeded by the cell id, and the id
    # names the dataset), so the same inputs must give the same outcomes
    assert streamed["fgsm"]["outcomes"] == memory["fgsm"]["outcomes"]
    assert streamed["fgsm"]["clean_accuracy"] == memory["fgsm"]["clean_accuracy"]


def test_a_sharded_run_holds_one_shard_of_inputs_and_merges_every_sample(
    digits_dir, tmp_path, monkeypatch
):
    asked: list[int] = []
    rows = StreamedData.rows

    def counting(self, start, end):
        asked.append(end - start)
        return rows(self, start, end)

    monkeypatch.setattr(StreamedData, "rows", counting)
    config = _config(f"safetensors:{digits_dir}", shard_size=16)
    run_dir = rbcl.run(config, out=tmp_path / "sharded", profile=None)
    cells = _cells(run_dir)
    assert max(asked) <= 16  # never the whole evaluation set at once
    from robustbench_cl.engine.results import validate_results

    results = json.loads((run_dir / "results.json").read_text())
    validate_results(results)
    assert [len(c["outcomes"]) for c in cells.values()] == [40, 40]
    assert (run_dir / "report.html").exists() or rbcl.write_report(run_dir).exists()
    unsharded = _cells(rbcl.run(_config(), out=tmp_path / "whole", profile=None))
    # FGSM draws no random numbers: sharding changes nothing, on all 40 samples
    assert cells["fgsm"]["outcomes"] == unsharded["fgsm"]["outcomes"]
    assert len(cells["pgd"]["outcomes"]) == 40
    # the cascade holds across shards: PGD attacks exactly what FGSM left robust
    robust_after_fgsm = [o == 1 for o in cells["fgsm"]["outcomes"]]
    assert [o != -1 for o in cells["pgd"]["outcomes"]] == robust_after_fgsm
    assert cells["pgd"]["attacked"] == sum(robust_after_fgsm)


def test_sharded_runs_are_deterministic(tmp_path):
    config = _config(shard_size=16)
    first = _cells(rbcl.run(config, out=tmp_path / "a", profile=None))
    second = _cells(rbcl.run(config, out=tmp_path / "b", profile=None))
    assert {k: v["outcomes"] for k, v in first.items()} == {
        k: v["outcomes"] for k, v in second.items()
    }


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: _save(d, {"x": torch.zeros(2, 1, 2, 2)}), "store tensors x and y"),
        (
            lambda d: _save(d, {"x": torch.zeros(2, 1, 2, 2), "y": torch.zeros(3).long()}),
            "y must be N integer labels",
        ),
        (lambda d: (d / "test.safetensors").write_text("not a file"), "not a readable"),
        (lambda d: _save(d, {"x": torch.zeros(0, 1), "y": torch.zeros(0).long()}), "N >= 1"),
        (
            lambda d: _save(d, {"x": torch.zeros(2, 2).int(), "y": torch.zeros(2).long()}),
            "dtype",
        ),
        (
            lambda d: write_tensors(d, "test", torch.zeros(2, 2), torch.tensor([0, 5]), 3),
            "labels must lie in 0..2",
        ),
        (
            lambda d: _save(
                d, {"x": torch.zeros(2, 2), "y": torch.zeros(2).long()}, {"n_classes": "ten"}
            ),
            "metadata n_classes",
        ),
    ],
)
def test_bad_tensor_folders_get_one_line_errors(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(UserError, match=message) as error:
        load_dataset(f"safetensors:{tmp_path}")
    assert error.value.field == "data.name"


def _save(directory: Path, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(directory / "test.safetensors"), metadata=metadata)


def test_every_shard_probes_its_share_of_the_convergence_probe(tmp_path):
    config = _config(shard_size=10)
    config["attacks"] = [
        {"attack": "pgd", "params": {"steps": 2}, "threat": {"norm": "linf", "eps": 0.05}}
    ]
    config["engine"]["sanity_probe_size"] = 8  # 2 per shard of 10, over 4 shards
    cell = _cells(rbcl.run(config, out=tmp_path / "run", profile=None))["pgd"]
    robust = [i for i, outcome in enumerate(cell["outcomes"]) if outcome == 1]
    quotas = [
        min(2, sum(1 for i in robust if start <= i < start + 10)) for start in (0, 10, 20, 30)
    ]
    assert cell["sanity_probe"]["probed"] == sum(quotas)
    assert cell["sanity_probe"]["survivors"] == len(robust)


def test_a_relative_folder_is_recorded_as_an_absolute_path(digits_dir, monkeypatch):
    from robustbench_cl.tasks.pairs import DataConfig

    monkeypatch.chdir(digits_dir.parent)
    config = DataConfig(name=f"safetensors:{digits_dir.name}")
    assert config.name == f"safetensors:{digits_dir.resolve()}"


def test_a_run_from_before_shard_size_still_resumes(tmp_path):
    import yaml

    run_dir = rbcl.run(_config(), out=tmp_path / "run", profile=None)
    old = yaml.safe_load((run_dir / "config.yaml").read_text())
    del old["engine"]["shard_size"]  # what an older version wrote
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    before = (run_dir / "cells.jsonl").read_text()
    rbcl.run(_config(), out=run_dir, profile=None)
    assert (run_dir / "cells.jsonl").read_text() == before


def test_the_cli_run_takes_a_shard_size(tmp_path):
    import yaml
    from click.testing import CliRunner

    from robustbench_cl.cli.main import cli

    config = tmp_path / "shards.yaml"
    config.write_text(yaml.safe_dump(_config()))
    out = tmp_path / "run"
    args = ["run", str(config), "--out", str(out), "--shard-size", "16", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["engine"]["shard_size"] == 16
    bad = CliRunner().invoke(cli, ["run", str(config), "--out", str(out), "--shard-size", "0"])
    assert bad.exit_code == 2 and "--shard-size" in bad.output
