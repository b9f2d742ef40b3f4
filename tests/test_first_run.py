"""The rough edges of a researcher's first real run ([first-run]): paths read from the
config's folder and checked before any unit runs, a test-only CIFAR folder, a truncated image
in the evaluated subset, and the other checks of that issue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

import robustbench_cl as rbcl
from robustbench_cl.cli.main import cli
from robustbench_cl.paths import absolute_paths, absolute_spec
from tests.conftest import ROOT, without_timings
from tests.test_own_data import Brightness

Image = pytest.importorskip("PIL.Image")


def brightness() -> nn.Module:
    """Class k is mean brightness near (k + 0.5) / 10, for any image size and channels."""
    return Brightness()


def _tree(root, per_class=3, size=8):
    generator = torch.Generator().manual_seed(0)
    for label in range(10):
        (root / f"class{label}").mkdir(parents=True)
        for index in range(per_class):
            noise = torch.rand(size, size, 3, generator=generator) * 0.06 - 0.03
            pixels = ((label + 0.5) / 10 + noise).clamp(0, 1) * 255
            Image.fromarray(pixels.round().to(torch.uint8).numpy()).save(
                root / f"class{label}" / f"{index}.png"
            )
    return root


def _config(data: str, **extra) -> dict:
    return {
        "suite": "first-run",
        "seed": 0,
        "data": {"name": data, "n": 20},
        "models": [{"spec": "python:tests.test_first_run:brightness", "name": "mine"}],
        "attacks": [{"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.03}}],
        **extra,
    }


def _refused(tmp_path, config: dict) -> str:
    """The one line ``run`` prints for ``config``; no unit ran (no record was written)."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert not (out / "cells.jsonl").exists()
    return lines[0]


# ---------------------------------------------------------------------- config-relative paths
def test_specs_join_relative_paths_to_the_config_folder(tmp_path):
    from robustbench_cl.utils import parse_spec

    base = tmp_path / "cfg"
    assert absolute_spec("imagefolder:data/tree?size=8", base) == (
        f"imagefolder:{base}/data/tree?size=8"
    )
    assert absolute_spec("torchvision:resnet18?weights=w.pt&num_classes=10", base) == (
        f"torchvision:resnet18?weights={base}/w.pt&num_classes=10"
    )
    for unchanged in (
        "builtin:digits-cnn",
        "hf:/abs/llm",
        "digits",
        "python:pkg.mod:make",
        "python:pkg.mod:make?weights=imagenet",  # a factory's argument, not a path
        "torchvision:resnet18?weights=/abs/w.pt&pretrained",
        "timm:resnet10t?checkpoint=~/w.pt",
    ):
        assert absolute_spec(unchanged, base) == unchanged
    # a folder whose name needs escaping in a query string reads back as itself
    odd = tmp_path / "exp+1 & more"
    spec = absolute_spec("timm:resnet10t?checkpoint=w%2Bx.pt&num_classes=3", odd)
    assert parse_spec(spec)[2] == {"checkpoint": f"{odd}/w+x.pt", "num_classes": "3"}
    # the up-front check reads an option as the loader does ("+" is a space; "%2B" a plus)
    from robustbench_cl.paths import missing_spec_paths

    (tmp_path / "a+b.pt").write_bytes(b"")
    assert missing_spec_paths(f"timm:x?checkpoint={tmp_path}/a%2Bb.pt") == []
    assert missing_spec_paths(f"timm:x?checkpoint={tmp_path}/a+b.pt") == [
        (f"{tmp_path}/a b.pt", "file")
    ]
    raw = {
        "description": "see cifar10:notes",
        "jailbreak": {"data": {"behaviors": "b.csv", "benign": "benign:p.csv"}},
        "models": [{"spec": "hf:llm", "name": "hf:label"}],
        "attacks": [{"attack": "gcg", "params": {"target": "hf:x"}}],
    }
    moved = absolute_paths(raw, base)
    assert moved["description"] == "see cifar10:notes" and moved["models"][0]["name"] == "hf:label"
    assert moved["models"][0]["spec"] == f"hf:{base}/llm"
    assert moved["attacks"] == raw["attacks"]  # parameters are never paths
    assert moved["jailbreak"]["data"] == {
        "behaviors": f"{base}/b.csv",
        "benign": f"benign:{base}/p.csv",
    }


def test_wrapped_specs_name_their_files_with_or_without_a_suffix(tmp_path):
    from robustbench_cl.paths import missing_spec_paths

    (tmp_path / "out.json").write_text("{}")
    missing = missing_spec_paths(f"wrapped:{tmp_path}/out.json")
    assert missing == [(f"{tmp_path}/out.safetensors", "file")]
    (tmp_path / "out.safetensors").write_bytes(b"")
    for spec in ("out", "out.json", "out.safetensors"):
        assert missing_spec_paths(f"wrapped:{tmp_path}/{spec}") == []


def test_a_config_reads_its_paths_from_its_own_folder(tmp_path, monkeypatch):
    folder = tmp_path / "project"
    _tree(folder / "data" / "tree")
    (folder / "cfg.yaml").write_text(yaml.safe_dump(_config("imagefolder:data/tree")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_dir = rbcl.run(str(folder / "cfg.yaml"), out=tmp_path / "run", profile=None)
    assert rbcl.load_results(run_dir)["pairs"][0]["clean_accuracy"] == 1.0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["name"] == f"imagefolder:{folder}/data/tree"
    # a dict (from Python or the command line) keeps the caller's working directory
    monkeypatch.chdir(folder)
    assert rbcl.run(_config("imagefolder:data/tree"), out=tmp_path / "run2", profile=None)


# ---------------------------------------------------------------------- paths checked up front
def test_a_missing_hf_folder_is_one_line_before_any_unit(tmp_path):
    config = _config("digits")
    config["models"].append({"spec": "hf:no/such/llm", "name": "llm"})
    line = _refused(tmp_path, config)
    assert line.startswith("error: models[1].spec:") and f"{tmp_path}/no/such/llm" in line
    assert "does not exist" in line


def test_a_missing_checkpoint_option_is_one_line_before_any_unit(tmp_path):
    config = _config("digits")
    config["models"] = [{"spec": "torchvision:resnet18?weights=missing.pt&num_classes=10"}]
    line = _refused(tmp_path, config)
    assert line.startswith("error: models[0].spec:") and f"{tmp_path}/missing.pt" in line


def _cifar_records(labels):
    return b"".join(bytes([label]) + bytes([26 * label + 13]) * 3072 for label in labels)


def test_a_test_only_cifar_folder_runs_and_a_defense_that_trains_says_what_it_lacks(tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(_cifar_records(list(range(10)) * 3))
    run_dir = rbcl.run(_config(f"cifar10:{folder}"), out=tmp_path / "run", profile=None)
    assert rbcl.load_results(run_dir)["pairs"][0]["clean_accuracy"] == 1.0
    config = _config("cifar10:cifar", defenses=[{"defense": "rae"}])
    line = _refused(tmp_path, config)
    assert line.startswith("error: data.train_split: defense rae trains on the 'train' split")
    assert "data_batch_1.bin does not exist" in line and "beside test_batch.bin" in line
    config = _config("cifar10:cifar", membership=[{"attack": "loss"}])
    line = _refused(tmp_path, config)
    assert line.startswith("error: data.train_split: the membership audit draws its members")


def test_a_truncated_image_in_the_subset_is_one_line_before_any_unit(tmp_path):
    tree = _tree(tmp_path / "tree")
    broken = tree / "class4" / "1.png"
    noise = torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8, generator=torch.Generator())
    Image.fromarray(noise.numpy()).save(broken)
    broken.write_bytes(broken.read_bytes()[:100])  # the header reads, the pixels are cut short
    config = _config("imagefolder:tree")
    config["data"]["n"] = None  # every image is evaluated
    line = _refused(tmp_path, config)
    assert line.startswith("error: data.name:") and "1.png is not a readable image" in line


# ---------------------------------------------------------------------- a defense that ruins clean
def test_a_defense_that_ruins_clean_accuracy_is_flagged_with_its_settings():
    from robustbench_cl.tasks.classification import sanity

    assert sanity.defense_degrades_clean_flag(0.86, 0.96, "rae", {"lam": 1}) == []
    (flag,) = sanity.defense_degrades_clean_flag(0.36, 0.96, "rae", {"lam": 1, "hidden": 64})
    assert flag["code"] == "defense_degrades_clean"
    assert "96.0% undefended to 36.0%" in flag["message"]
    assert "hidden=64, lam=1" in flag["message"]


def test_a_run_flags_the_defended_pair_and_records_the_undefended_accuracy(tmp_path):
    # an auto-encoder squeezed through 2 latent units for one epoch: it ruins clean accuracy
    ruinous = {"latent": 2, "epochs": 1, "steps": 1, "lam": 0}
    config = _config(
        "digits", defenses=[{"defense": "none"}, {"defense": "rae", "params": ruinous}]
    )
    config["data"]["n"] = 40
    config["models"] = [{"spec": "builtin:digits-cnn", "name": "cnn"}]
    run_dir = rbcl.run(config, out=tmp_path / "run", profile=None)
    records = [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]
    clean = {r["defense"]["defense"]: r for r in records if r["type"] == "clean"}
    assert "undefended_accuracy" not in clean["none"]["probes"]
    assert not clean["none"]["flags"]
    rae = clean["rae"]
    assert rae["probes"]["undefended_accuracy"] == clean["none"]["clean_accuracy"] > 0.9
    assert rae["clean_accuracy"] < 0.5
    (flag,) = [f for f in rae["flags"] if f["code"] == "defense_degrades_clean"]
    assert "epochs=1" in flag["message"] and "latent=2" in flag["message"]
    results = rbcl.load_results(run_dir)
    assert "defense_degrades_clean" in json.dumps(results["pairs"])


# ---------------------------------------------------------------------- AutoAttack and Ctrl-C
class Slow(nn.Module):
    """digits-cnn, slowed down so that a run is still inside AutoAttack when it is signalled."""

    def __init__(self) -> None:
        super().__init__()
        from robustbench_cl.models import load_model

        self.model = load_model("builtin:digits-cnn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in the signalled run, once APGD-CE is journaled, slow enough to be caught in APGD-T
        partial = os.environ.get("SLOW_AFTER_JOURNAL")
        if partial and any(Path(partial).glob("*/apgd-ce-*.safetensors")):
            time.sleep(0.2)
        return self.model(x)


def slow_digits() -> nn.Module:
    return Slow()


AUTOATTACK = {
    "suite": "autoattack-sigint",
    "seed": 0,
    "data": {"name": "digits", "n": 24},
    "models": [{"spec": "python:tests.test_first_run:slow_digits", "name": "slow cnn"}],
    "attacks": [
        {
            "attack": "autoattack",
            "params": {"steps": 5, "square_queries": 300},
            "threat": {"norm": "linf", "eps": 0.03},
        }
    ],
    "engine": {"sanity_probe_size": 4, "examples": 0},
}


def test_ctrl_c_after_autoattacks_first_component_exits_130_and_the_rerun_skips_it(tmp_path):
    import torchattacks

    whole = rbcl.run(AUTOATTACK, out=tmp_path / "whole", profile=None, device="cpu")
    expected = [without_timings(r) for r in _records(whole)]
    assert expected[1]["outcomes"].count(1) > 0  # robust samples remain after apgd-ce
    assert not (whole / "partial").exists()  # a finished run keeps no journal

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(AUTOATTACK))
    out = tmp_path / "interrupted"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ROBUSTBENCH_CL_THREADS": "1",
        "SLOW_AFTER_JOURNAL": str(out / "partial"),
    }
    command = [sys.executable, "-m", "robustbench_cl.cli.main", "run", str(path)]
    command += ["--out", str(out), "--device", "cpu"]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # an xdist worker ignores SIGINT and a child inherits that: Ctrl-C as a terminal sends it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if list((out / "partial").glob("*/apgd-ce-*.safetensors")):
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr.decode()
    lines = [line for line in stderr.decode().splitlines() if line.startswith("interrupted")]
    assert len(lines) == 1 and "Traceback" not in stderr.decode()
    assert f"1 of 2 units are kept in {out} and the finished components" in lines[0]
    assert lines[0].endswith(f"resume with: robustbench-cl run {path} --device cpu --out {out}")
    (journal,) = (out / "partial").iterdir()
    assert sorted(p.name.split("-")[:2] for p in journal.glob("*.safetensors")) == [["apgd", "ce"]]

    calls = {"apgd-ce": 0, "apgd-t": 0}
    originals = {"apgd-ce": torchattacks.APGD.forward, "apgd-t": torchattacks.APGDT.forward}

    def spy(name):
        def forward(self, *args, **kwargs):
            calls[name] += 1
            return originals[name](self, *args, **kwargs)

        return forward

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchattacks.APGD, "forward", spy("apgd-ce"))
        patch.setattr(torchattacks.APGDT, "forward", spy("apgd-t"))
        rbcl.run(str(path), out=out, profile=None, device="cpu")
    assert calls == {"apgd-ce": 0, "apgd-t": 1}  # the finished component is not repeated
    assert [without_timings(r) for r in _records(out)] == expected  # nor are its outcomes lost
    assert not (out / "partial").exists()


def test_the_resume_command_names_the_run_directory_and_never_starts_fresh():
    from pathlib import Path as P

    from robustbench_cl.engine.runner import _resume_command

    run_dir = P("runs/quickstart-20261205-101010")
    assert _resume_command("robustbench-cl run quickstart", run_dir) == (
        f"robustbench-cl run quickstart --out {run_dir}"
    )
    assert _resume_command("robustbench-cl run cfg.yaml --fresh --out old -v", run_dir) == (
        f"robustbench-cl run cfg.yaml -v --out {run_dir}"
    )
    assert _resume_command("robustbench-cl run 'my suite.yaml' --out=old", run_dir) == (
        f"robustbench-cl run 'my suite.yaml' --out {run_dir}"
    )
    assert "out='runs/quickstart-20261205-101010'" in _resume_command(None, run_dir)
    assert _resume_command("robustbench-cl attack pgd --eps 0.1", run_dir) is None  # a tmp dir
    assert "--out runs" in _resume_command("robustbench-cl run bob's.yaml", run_dir)


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]


def test_autoattack_reports_the_share_of_its_query_budget_spent():
    from robustbench_cl.attacks import make_attack
    from robustbench_cl.attacks.base import step_hook
    from robustbench_cl.models import load_model
    from robustbench_cl.threat import ThreatModel

    x, y = rbcl.load_dataset("digits", split="test").sample(16, seed=0)
    attack = make_attack("autoattack", steps=3, square_queries=60)
    seen = []
    with step_hook(lambda *event: seen.append(event)):
        attack(load_model("builtin:digits-cnn"), x, y, ThreatModel(norm="linf", eps=0.02))
    assert [event[:2] for event in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    fractions = [event[2] for event in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # APGD-CE is 9 of the 9 + 81 + 108 + 60 forward-equivalents per sample of this budget
    assert fractions[0] == pytest.approx(9 / (9 + 81 + 108 + 60), rel=0.5)


# ---------------------------------------------------------------------- reports
def test_a_membership_only_report_shows_only_sections_with_data_and_a_measured_roc(tmp_path):
    config = {
        "suite": "membership-only",
        "data": {"name": "digits", "split": "test"},
        "models": [{"spec": "builtin:digits-cnn"}],
        "membership": [{"attack": "loss", "n": 60}],
        "engine": {"sanity_probe_size": 8},
    }
    run_dir = rbcl.run(config, out=tmp_path / "run", profile=None)
    html = rbcl.write_report(run_dir).read_text()
    assert "Robustness matrix" in html and "Membership" in html
    for empty in ("Worst case over attacks", "Attack success and cost", 'href="#worst"'):
        assert empty not in html
    (audit,) = rbcl.load_results(run_dir)["membership"]
    resolution = 1 / audit["n_nonmembers"]
    assert f"false positive rate (resolution {resolution:.2g})" in html

    from robustbench_cl.tasks.membership import report

    figures = []
    curve = {
        "label": "loss",
        "auc": 0.6,
        "n_nonmembers": 225,
        "fpr": [0, 0.5, 1],
        "tpr": [0, 0.7, 1],
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "to_svg", figures.append)
        report.membership_roc([curve])
    (ax,) = figures[0].axes
    assert ax.get_xlim() == pytest.approx((1 / 225, 1.0)) and ax.get_ylim()[0] == ax.get_xlim()[0]


# ---------------------------------------------------------------------- LiRA on a user's model
class TinyDigits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1))


def tiny_digits() -> nn.Module:
    """A user's model: a linear classifier of 16x16 digits, trained here on the train split."""
    from robustbench_cl.models.training import train_classifier

    data = rbcl.load_dataset("digits", split="train")
    return train_classifier(TinyDigits(), data.x, data.y, epochs=3, lr=0.01, seed=0)


TRAINED: list[tuple[str, int, int, torch.Tensor]] = []


def train_like_mine(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """The user's recipe: called once per reference model with a fresh architecture."""
    from robustbench_cl.models.training import train_classifier

    assert isinstance(model, TinyDigits) and model.training
    TRAINED.append(("mine", len(y), seed, model.layer.weight.detach().clone()))
    return train_classifier(model, x, y, epochs=3, lr=0.01, seed=seed)


def train_slowly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """Another recipe with the same number of reference models: its own references."""
    from robustbench_cl.models.training import train_classifier

    TRAINED.append(("slowly", len(y), seed, model.layer.weight.detach().clone()))
    return train_classifier(model, x, y, epochs=1, lr=0.001, seed=seed)


def test_lira_and_rmia_run_on_a_users_model_with_its_recipe(tmp_path, monkeypatch):
    import importlib

    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path / "cache"))  # no cached references
    mine = {"train": "python:tests.test_first_run:train_like_mine"}
    slowly = {"train": "python:tests.test_first_run:train_slowly"}
    config = {
        "suite": "own-membership",
        "data": {"name": "digits", "split": "test"},
        "models": [{"spec": "python:tests.test_first_run:tiny_digits", "name": "mine"}],
        "membership": [
            {"attack": "lira", "params": {"reference_models": 4}, "n": 100, "recipe": mine},
            {"attack": "rmia", "params": {"reference_models": 4}, "n": 100, "recipe": mine},
            {
                "attack": "lira",
                "name": "lira-slowly",
                "params": {"reference_models": 4},
                "n": 60,
                "recipe": slowly,
            },
            {
                "attack": "lira",
                "name": "lira-adam",
                "params": {"reference_models": 2},
                "n": 60,
                "recipe": {"epochs": 2, "lr": 0.01},
            },
        ],
        "engine": {"sanity_probe_size": 8},
    }
    # the module the python: spec imports (pytest may import this file under another name)
    module = importlib.import_module("tests.test_first_run")
    module.TRAINED.clear()
    run_dir = rbcl.run(config, out=tmp_path / "run", profile=None)
    calls = [(name, seed) for name, _, seed, _ in module.TRAINED]
    # once per reference model: LiRA and RMIA share "mine"'s four, "slowly" trains its own
    assert [name for name, _ in calls].count("mine") == 4
    assert [name for name, _ in calls].count("slowly") == 4
    assert len({seed for name, seed in calls if name == "mine"}) == 4
    # every reference model started from fresh weights, not the audited model's
    target = module.tiny_digits().layer.weight
    assert all(not torch.equal(start, target) for *_, start in module.TRAINED)
    audits = {a["attack"]["label"]: a for a in rbcl.load_results(run_dir)["membership"]}
    members = [audits[k]["n_members"] for k in ("lira", "rmia", "lira-slowly", "lira-adam")]
    assert members == [100, 100, 60, 60]
    assert audits["lira"]["n_nonmembers"] == 100 and audits["lira"]["reference_models"] == 4
    assert audits["lira"]["auc"] != audits["lira-slowly"]["auc"]  # not one shared set
    rbcl.run(config, out=tmp_path / "again", profile=None)
    assert len(module.TRAINED) == 8  # the references are cached, not trained again


def test_every_parameter_of_a_reference_model_is_drawn_afresh():
    import warnings

    from robustbench_cl.tasks.membership_plan import _reinitialised

    class Normed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the old-style weight norm, still common
                self.layer = nn.utils.weight_norm(nn.Linear(8, 4))

    for target in (WithToken(), Normed()):
        with torch.no_grad():  # "trained": values no initialiser would draw
            for parameter in target.parameters():
                parameter.copy_(torch.linspace(-3, 3, parameter.numel()).view_as(parameter))
        fresh = _reinitialised(target, seed=0, build=type(target))
        for (name, new), old in zip(fresh.named_parameters(), target.parameters()):
            assert not torch.equal(new, old), name
        assert fresh is not target and fresh.training
    torchvision = pytest.importorskip("torchvision")
    # a (tiny) torchvision ViT: a class token and position embeddings no reset method owns
    vit = torchvision.models.VisionTransformer(32, 16, 1, 2, 16, 32, num_classes=10)
    fresh = _reinitialised(vit, seed=0)
    assert not torch.equal(fresh.class_token, vit.class_token)
    assert not torch.equal(fresh.encoder.pos_embedding, vit.encoder.pos_embedding)


class WithToken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.ones(4))
        self.layer = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.flatten(1)) + self.token.sum()


def with_a_token() -> nn.Module:
    return WithToken()


def test_a_reference_attack_on_a_users_model_without_a_recipe_says_how_to_give_one(tmp_path):
    config = {
        "suite": "own-membership",
        "data": {"name": "digits", "split": "test"},
        "models": [{"spec": "python:tests.test_first_run:brightness", "name": "mine"}],
        "membership": [{"attack": "lira"}],
    }
    line = _refused(tmp_path, config)
    assert line.startswith("error: membership[0]:") and "give the column a recipe" in line


def test_a_missing_hf_folder_of_a_jailbreak_model_is_one_line_before_any_unit(tmp_path):
    config = {
        "suite": "own-llm",
        "jailbreak": {
            "models": [{"spec": "hf:models/my-llm", "name": "mine"}],
            "attacks": [{"attack": "direct"}],
        },
    }
    line = _refused(tmp_path, config)
    assert line.startswith("error: jailbreak.models[0].spec:")
    assert f"{tmp_path}/models/my-llm does not exist" in line


def test_the_journal_answers_only_for_the_same_samples_on_the_same_inputs(tmp_path):
    from robustbench_cl.attacks.base import Cost
    from robustbench_cl.attacks.journal import ComponentJournal

    x, y = torch.rand(8, 1, 4, 4), torch.arange(8) % 3
    journal = ComponentJournal(tmp_path, torch.arange(100, 108))
    rows = torch.arange(8)
    fooled = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1], dtype=torch.bool)
    journal.save("apgd-ce", rows, x, y, fooled, x[fooled] + 0.01, Cost(80, 160, 80), 2.5)
    found = journal.finished("apgd-ce", rows, x, y)
    assert torch.equal(found.fooled, fooled) and torch.equal(found.adv, x[fooled] + 0.01)
    assert found.cost == Cost(80, 160, 80) and found.seconds == 2.5
    # half the batch (an out-of-memory split), other inputs, another component: attack again
    assert journal.finished("apgd-ce", rows[:4], x[:4], y[:4]) is None
    assert journal.finished("apgd-ce", rows, x + 0.5, y) is None
    assert journal.finished("apgd-t", rows, x, y) is None


def test_a_progress_written_for_the_old_events_keeps_working(tmp_path):
    from robustbench_cl.engine import Progress

    class Old(Progress):
        def __init__(self) -> None:
            self.events = []

        def run_started(self, n_cells, n_todo):  # noqa: ANN001, ANN202
            self.events.append(("run", n_cells))

        def cell_started(self, label, n_batches):  # noqa: ANN001, ANN202
            self.events.append(("cell", label))

        def step(self, step, total):  # noqa: ANN001, ANN202
            self.events.append(("step", total))

        def cell_done(self, record, skipped, label=None):  # noqa: ANN001, ANN202
            self.events.append(("done", skipped))

    config = dict(AUTOATTACK, models=[{"spec": "builtin:digits-cnn"}])
    config["data"] = {"name": "digits", "n": 8}
    config["attacks"] = [dict(AUTOATTACK["attacks"][0], params={"steps": 2, "square_queries": 5})]
    progress = Old()
    rbcl.run(config, out=tmp_path / "run", profile=None, progress=progress)
    assert progress.events[0] == ("run", 2) and ("step", 4) in progress.events
    assert [e for e in progress.events if e[0] == "done"] == [("done", False)] * 2
