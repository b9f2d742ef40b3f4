"""Vision at the field's scale and in its formats: budgets written as fractions, RobustBench's
zoo from its local layout, leaderboard entries read back, AutoAttack's versions, and the
minimum-norm attacks (FMN, DDN) with the security curve they draw."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import robustbench_cl as rbcl
from robustbench_cl.cli.main import cli
from robustbench_cl.engine.config import ThreatConfig
from robustbench_cl.errors import UserError
from robustbench_cl.models import robustbench as zoo
from robustbench_cl.threat import ThreatModel


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


# ---------------------------------------------------------------------- 1. fractions
def test_a_fraction_is_the_float_with_its_label():
    threat = ThreatModel(norm="linf", eps="8/255")
    assert threat.eps == 8 / 255 and threat.eps_label == "8/255"
    assert threat.describe() == "linf eps=8/255"
    plain = ThreatModel(norm="linf", eps=8 / 255)
    # one threat model: equal, same ids and cache keys; only the display label differs
    assert threat == plain and hash(threat) == hash(plain)
    assert threat.key() == plain.key() and "eps_label" not in threat.key()
    assert threat.to_dict()["eps_label"] == "8/255" and "eps_label" not in plain.to_dict()
    assert ThreatModel.from_dict(threat.to_dict()).eps_label == "8/255"
    assert ThreatModel(norm="l2", eps="0.5").eps_label is None  # a number, not a fraction


@pytest.mark.parametrize("bad", ["8/", "8/0", "eight/255", "1/2/3"])
def test_a_bad_fraction_is_one_line_naming_eps(bad):
    with pytest.raises(UserError, match="eps"):
        ThreatModel(norm="linf", eps=bad)


def test_an_eps_beyond_the_bounds_stays_an_error_as_a_fraction():
    with pytest.raises(UserError, match="larger than the bounds"):
        ThreatModel(norm="linf", eps="300/255")


def test_a_sweep_of_fractions_in_a_config():
    config = ThreatConfig(norm="linf", eps=["2/255", "4/255", 0.05])
    assert config.eps_values() == ["2/255", "4/255", 0.05]
    with pytest.raises(ValueError, match="fraction"):
        ThreatConfig(norm="linf", eps=["2/255", "x/255"])
    with pytest.raises(ValueError, match="same budget"):  # one budget, two spellings
        ThreatConfig(norm="linf", eps=["8/255", 8 / 255, "16/510"])


def test_fraction_params_of_defenses_are_numbers_in_their_settings():
    defense = rbcl.make_defense("pgd-at", eps="8/255", step_size="2/255")
    assert defense.settings()["eps"] == 8 / 255 and defense.settings()["step_size"] == 2 / 255
    assert rbcl.make_attack("pgd", step_size="1/255").step_size == 1 / 255
    # in a config too, and so in the ids: both spellings are one configuration
    from robustbench_cl.engine.config import DefenseConfig

    written = DefenseConfig(defense="pgd-at", params={"eps": "8/255", "norm": "linf"})
    assert written.params == {"eps": 8 / 255, "norm": "linf"}


def test_the_cli_takes_a_fraction_and_refuses_a_bad_one():
    result = CliRunner().invoke(cli, ["attack", "pgd", "--eps", "8/2x5", "--n", "4"])
    assert result.exit_code == 2 and "--eps" in result.output
    result = invoke("attack", "pgd", "--eps", "8/255", "--n", "8", "--param", "steps=2")
    assert result.exit_code == 0, result.output
    assert "linf eps=8/255" in result.output


def test_a_config_with_a_fraction_runs_and_its_report_shows_it(tmp_path):
    config = {
        "suite": "fractions",
        "data": {"name": "digits", "n": 16},
        "models": [{"spec": "builtin:digits-cnn"}],
        "attacks": [
            {"attack": "fgsm", "threat": {"norm": "linf", "eps": ["4/255", "8/255"]}},
        ],
    }
    run_dir = rbcl.run(config, out=tmp_path / "run", profile=None)
    results = json.loads((run_dir / "results.json").read_text())
    labels = {cell["threat_label"] for cell in results["cells"]}
    assert labels == {"linf 4/255", "linf 8/255"}
    assert {t["eps_label"] for t in results["threat_models"]} == {"4/255", "8/255"}
    assert "linf 8/255" in rbcl.write_report(run_dir).read_text()
    # the same budget written as a float is the same cell: its id does not change
    floats = dict(config, attacks=[dict(config["attacks"][0], threat={"eps": [4 / 255, 8 / 255]})])
    again = rbcl.run(floats, out=tmp_path / "floats", profile=None)
    ids = {json.loads(line)["id"] for line in (again / "cells.jsonl").read_text().splitlines()}
    assert {cell["id"] for cell in results["cells"]} <= ids


# ---------------------------------------------------------------------- 2. RobustBench's zoo
def _save_zoo(model: nn.Module, root, name: str, threat: str = "Linf", wrap=None) -> None:
    folder = root / "cifar10" / threat
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    torch.save(wrap(state) if wrap else state, folder / f"{name}.pt")


def test_standard_loads_from_robustbench_layout_with_its_prefixes(tmp_path):
    torch.manual_seed(0)
    net = zoo.WideResNet(28, 10).eval()
    # RobustBench's layout: {'state_dict': {'module.<key>': ...}} at DIR/cifar10/Linf/NAME.pt
    _save_zoo(
        net,
        tmp_path,
        "Standard",
        wrap=lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
    )
    loaded = rbcl.load_model(f"robustbench:Standard?dir={tmp_path}")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x), net(x), atol=1e-5)
    # the zoo's own key names, so its published checkpoints load strictly
    keys = set(net.state_dict())
    assert {
        "conv1.weight",
        "block1.layer.0.convShortcut.weight",
        "block3.layer.3.bn2.running_var",
        "fc.bias",
    } <= keys
    assert sum(p.numel() for p in net.parameters()) == 36_479_194


def test_an_entry_with_its_own_normalisation(tmp_path):
    torch.manual_seed(1)
    net = zoo.DMPreActResNet18().eval()
    keys = set(net.state_dict())
    assert {"conv_2d.weight", "layer_1.0.shortcut.weight", "logits.weight"} <= keys
    assert not {"mean", "std"} & keys  # RobustBench's definition keeps them off the state dict
    # a checkpoint from an older definition, with the normalisation as buffers, loads too
    _save_zoo(
        net,
        tmp_path,
        "Rebuffi2021Fixing_R18_cutmix_ddpm",
        threat="L2",
        wrap=lambda state: {**state, "mean": net.mean, "std": net.std},
    )
    spec = f"robustbench:Rebuffi2021Fixing_R18_cutmix_ddpm?threat=L2&dir={tmp_path}"
    loaded = rbcl.load_model(spec)
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x), net(x), atol=1e-5)
    # the normalisation is the entry's, inside the model: inputs stay in [0, 1]
    assert torch.allclose(loaded.model.mean.flatten(), torch.tensor(zoo.CIFAR10_MEAN))
    assert torch.allclose(loaded.model.std.flatten(), torch.tensor(zoo.CIFAR10_STD))


@pytest.mark.parametrize("with_buffers", [False, True])
def test_a_normalised_trades_entry_keeps_the_zoo_keys(tmp_path, monkeypatch, with_buffers):
    entry = zoo._wrn_normalized(10, 1, zoo.RONY_MEAN, zoo.RONY_STD)
    monkeypatch.setitem(zoo.ZOO[("cifar10", "L2")], "TinyNormalised", entry)
    net = entry.build().eval()
    # the zoo's checkpoint: the network's own keys, no "net." prefix; the published ones of
    # these entries lack mu and sigma (RobustBench loads them non-strictly for that alone)
    state = {k.removeprefix("net."): v for k, v in net.state_dict().items()}
    if not with_buffers:
        del state["mu"], state["sigma"]
    (tmp_path / "cifar10" / "L2").mkdir(parents=True)
    torch.save(state, tmp_path / "cifar10" / "L2" / "TinyNormalised.pt")
    loaded = rbcl.load_model(f"robustbench:TinyNormalised?threat=l2&dir={tmp_path}")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(x), net(x), atol=1e-6)
    assert torch.allclose(loaded.model.mu.flatten(), torch.tensor(zoo.RONY_MEAN))
    # any other missing key is still refused
    del state["fc.bias"]
    torch.save(state, tmp_path / "cifar10" / "L2" / "TinyNormalised.pt")
    with pytest.raises(UserError, match="missing"):
        rbcl.load_model(f"robustbench:TinyNormalised?threat=L2&dir={tmp_path}")


def test_a_saved_download_page_is_named_as_such(tmp_path):
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    (folder / "Standard.pt").write_text("<!DOCTYPE html><html>Google Drive</html>")
    with pytest.raises(UserError, match="HTML page"):
        rbcl.load_model(f"robustbench:Standard?dir={tmp_path}")


def test_a_missing_checkpoint_says_where_to_put_it_and_nothing_is_downloaded(tmp_path):
    with pytest.raises(UserError) as error:
        rbcl.models.check_spec(f"robustbench:Carmon2019Unlabeled?dir={tmp_path}")
    text = str(error.value)
    assert str(tmp_path / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in text
    assert "nothing is downloaded" in text
    with pytest.raises(UserError, match="did you mean"):
        rbcl.models.check_spec(f"robustbench:Carmon2019Unlabelled?dir={tmp_path}")
    with pytest.raises(UserError, match="Linf or L2"):
        rbcl.models.check_spec("robustbench:Standard?threat=corruptions")


def test_a_pickled_zoo_checkpoint_needs_the_trust_flag(tmp_path):
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    with open(folder / "Standard.pt", "wb") as handle:
        pickle.dump({"state_dict": {"x": object()}}, handle)
    with pytest.raises(UserError, match="trust-remote-code"):
        rbcl.load_model(f"robustbench:Standard?dir={tmp_path}")


# ---------------------------------------------------------------------- 3. leaderboard entries
def _cifar_folder(root, model: nn.Module, n: int = 8) -> None:
    """A CIFAR-10 binary folder whose test labels are ``model``'s predictions."""
    root.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1).to(torch.uint8)
    test = torch.cat([labels[:, None], images.flatten(1)], dim=1)
    (root / "test_batch.bin").write_bytes(test.numpy().tobytes())
    for index in range(1, 6):
        (root / f"data_batch_{index}.bin").write_bytes(test.numpy().tobytes())


def test_a_zoo_checkpoint_evaluates_and_exports_a_leaderboard_entry(tmp_path, monkeypatch):
    entry = zoo._wrn(10, 1)
    monkeypatch.setitem(zoo.ZOO[("cifar10", "Linf")], "TinyWRN", entry)
    torch.manual_seed(0)
    net = entry.build().eval()
    _save_zoo(net, tmp_path / "models", "TinyWRN")
    _cifar_folder(tmp_path / "cifar", net, n=3)
    spec = f"robustbench:TinyWRN?dir={tmp_path / 'models'}"
    config = {
        "suite": "leaderboard",
        "data": {"name": f"cifar10:{tmp_path / 'cifar'}", "n": 3},
        "models": [{"spec": spec, "name": "TinyWRN"}],
        "attacks": [{"attack": "autoattack", "threat": {"norm": "linf", "eps": "8/255"}}],
    }
    run_dir = rbcl.run(config, out=tmp_path / "run", profile=None)
    args = ["export", str(run_dir), "--format", "robustbench", "-o", str(tmp_path / "info")]
    # 3 test images are not a leaderboard claim: refused unless asked for, then footnoted
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2 and "--allow-subset" in refused.output
    result = invoke(*args, "--name", "TinyWRN", "--allow-subset")
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "info" / "cifar10" / "Linf" / "TinyWRN.json").read_text())
    results = rbcl.load_results(run_dir)
    (cell,) = results["cells"]
    assert written["eps"] == "8/255" and written["threat_model"] == "Linf"
    assert written["dataset"] == "cifar10" and written["n_examples"] == 3
    assert written["clean_acc"] == f"{100 * results['pairs'][0]['clean_accuracy']:.2f}"
    assert written["autoattack_acc"] == f"{100 * cell['robust_accuracy']:.2f}"
    assert float(written["autoattack_acc"]) <= float(written["clean_acc"]) == 100.0
    assert written["name"] == "TinyWRN" and written["number_forward_passes"] == 1
    assert written["architecture"] == "WideResNet-10-1"  # the zoo's, never the local path
    assert "3 of the 10000 test images" in written["footnote"]
    flags = [f["code"] for f in results["pairs"][0]["flags"] + cell["flags"]]
    assert written["unreliable"] == bool(flags)
    assert written["additional_data"] is None  # not the run's to know: the user fills it in


@pytest.mark.parametrize(
    ("attacks", "why"),
    [
        (
            [{"attack": "autoattack", "params": {"steps": 5, "square_queries": 10}}],
            "not the standard AutoAttack at full settings",
        ),
        (
            [{"attack": "pgd", "params": {"steps": 3}}, {"attack": "autoattack"}],
            "other attacks ran before it in a cascade",
        ),
    ],
    ids=["reduced", "cascade"],
)
def test_what_is_not_autoattack_alone_is_not_exported_as_it(tmp_path, attacks, why):
    threat = {"norm": "linf", "eps": "8/255"}
    config = {
        "suite": "reduced",
        "data": {"name": "digits", "n": 8},
        "models": [{"spec": "builtin:digits-cnn"}],
        "attacks": [dict(entry, threat=threat) for entry in attacks],
    }
    run_dir = rbcl.run(config, out=tmp_path / "run", profile=None)
    args = ["export", str(run_dir), "--format", "robustbench", "-o", str(tmp_path / "x")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and "no leaderboard for 'digits'" in result.output
    result = CliRunner().invoke(cli, [*args, "--dataset", "cifar10", "--allow-subset"])
    assert result.exit_code == 2 and why in result.output
    assert not (tmp_path / "x" / "cifar10").exists()


# ---------------------------------------------------------------------- 4. AutoAttack versions
def test_autoattack_versions_are_the_originals_table():
    """field-standards G: the components, their order, restarts, targets and EOT draws."""
    expected = {
        "standard": {
            "apgd-ce": (1, 1),
            "apgd-t": (1, None),
            "fab-t": (1, None),
            "square": (1, None),
        },
        "plus": {
            "apgd-ce": (5, 1),
            "apgd-dlr": (5, 1),
            "fab": (5, None),
            "square": (1, None),
            "apgd-t": (1, None),
            "fab-t": (1, None),
        },
        "rand": {"apgd-ce": (1, 20), "apgd-dlr": (1, 20)},
    }
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    threat = ThreatModel(norm="linf", eps=0.1)
    for version, components in expected.items():
        attack = rbcl.make_attack("autoattack", version=version)
        built = attack.components(model, threat, 10)
        assert [name for name, _ in built] == list(components)
        for name, component in built:
            restarts, eot = components[name]
            assert component.n_restarts == restarts, (version, name)
            if eot is not None:
                assert component.eot_iter == eot
            if name in ("apgd-t", "fab-t"):
                assert component.n_target_classes == 9
            if name == "square":
                assert component.n_queries == 5000 and component.p_init == 0.8
            if name.startswith(("apgd", "fab")):
                assert component.steps == 100
        assert list(attack.describe_components(10)) == list(components)
    with pytest.raises(UserError, match="standard, plus, rand"):
        rbcl.make_attack("autoattack", version="custom")


class NoisyModel(nn.Module):
    """A randomized defense: fresh input noise at every forward pass."""

    is_randomized = True

    def __init__(self) -> None:
        super().__init__()
        self.net = rbcl.load_model("builtin:digits-cnn").model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + 0.05 * torch.randn_like(x))


def noisy_model() -> nn.Module:
    return NoisyModel()


def test_a_randomized_model_under_standard_autoattack_is_flagged(tmp_path):
    def config(version: str) -> dict:
        return {
            "suite": "randomized",
            "data": {"name": "digits", "n": 8},
            "models": [{"spec": "python:tests.test_zoo:noisy_model"}],
            "attacks": [
                {
                    "attack": "autoattack",
                    "params": {"version": version, "steps": 2, "square_queries": 5},
                    "threat": {"norm": "linf", "eps": 0.1},
                }
            ],
        }

    flagged = rbcl.load_results(rbcl.run(config("standard"), out=tmp_path / "s", profile=None))
    codes = {f["code"] for f in flagged["cells"][0]["flags"]}
    assert {"autoattack_not_rand", "randomized_without_eot"} <= codes
    rand = rbcl.load_results(rbcl.run(config("rand"), out=tmp_path / "r", profile=None))
    codes = {f["code"] for f in rand["cells"][0]["flags"]}
    # rand averages each gradient over 20 draws itself: neither flag applies
    assert not codes & {"autoattack_not_rand", "randomized_without_eot"}


def test_dlr_versions_refuse_too_few_classes():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(UserError, match="3 classes"):
        rbcl.make_attack("autoattack", version="rand")(model, x, y, ThreatModel(eps=0.1))
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    for version in ("standard", "plus"):  # targeted DLR (APGD-T) reads the 4th logit
        with pytest.raises(UserError, match="4 classes"):
            rbcl.make_attack("autoattack", version=version)(three, x, y, ThreatModel(eps=0.1))


# ---------------------------------------------------------------------- 5. FMN and DDN
def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double().eval()
    return model.requires_grad_(False)


def _exact_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A linear model's smallest l2 distance to another class (ignoring the box)."""
    weight = model[1].weight
    logits = model(x)
    distances = []
    for i in range(len(x)):
        others = [j for j in range(3) if j != y[i]]
        gaps = [
            (logits[i, y[i]] - logits[i, j]) / (weight[y[i]] - weight[j]).norm() for j in others
        ]
        distances.append(min(gaps))
    return torch.stack(distances)


@pytest.mark.parametrize("name", ["fmn", "ddn"])
def test_minimum_norm_attacks_find_the_linear_boundary(name):
    model = _linear()
    x = 0.4 + 0.2 * torch.rand(12, 1, 4, 4, dtype=torch.float64)  # far from the box's faces
    y = model(x).argmax(1)
    attack = rbcl.make_attack(name, steps=200, **({"levels": None} if name == "ddn" else {}))
    attack(model, x, y, ThreatModel(norm="l2", eps=4.0))
    exact = _exact_l2(model, x, y)
    found = torch.isfinite(attack.last_norms)
    inside = exact < 0.35  # the boundary is reachable inside the box
    assert found[inside].all()
    ratio = attack.last_norms[inside] / exact[inside]
    assert (ratio >= 1 - 1e-6).all() and (ratio <= 1.05).all()  # never below the true minimum


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fmn_stays_in_the_ball_and_breaks_exactly_where_its_norm_fits(norm):
    model = rbcl.load_model("builtin:digits-cnn")
    x, y = rbcl.load_dataset("digits", split="test").tensors(n=24)
    eps = {"linf": 0.1, "l2": 1.0, "l1": 6.0}[norm]
    threat = ThreatModel(norm=norm, eps=eps)
    attack = rbcl.make_attack("fmn", steps=30)
    result = attack(model, x, y, threat)
    threat.check(result.adv, x)
    norms = attack.last_norms
    assert torch.equal(result.success & result.clean_correct, (norms <= eps) & result.clean_correct)
    again = rbcl.make_attack("fmn", steps=30)
    again(model, x, y, threat)
    assert torch.equal(again.last_norms, norms)  # deterministic


def test_a_minimum_norm_cell_records_norms_and_draws_the_security_curve(tmp_path):
    config = {
        "suite": "curve",
        "data": {"name": "digits", "n": 24},
        "models": [{"spec": "builtin:digits-cnn"}],
        "attacks": [
            {"attack": "fmn", "params": {"steps": 30}, "threat": {"norm": "l2", "eps": 1.0}}
        ],
    }
    run_dir = rbcl.run(config, out=tmp_path / "run", profile=None)
    record = next(
        json.loads(line)
        for line in (run_dir / "cells.jsonl").read_text().splitlines()
        if json.loads(line).get("type") == "cell"
    )
    (cell,) = rbcl.load_results(run_dir)["cells"]
    entry = cell["min_norm"]
    assert entry["complete"] and entry["attacked"] == cell["attacked"]
    curve = entry["curve"]
    assert curve[0] == [0.0, cell["clean_accuracy"]]
    assert all(a[1] >= b[1] for a, b in zip(curve, curve[1:], strict=False))  # falls with eps
    norms = [v for v, o in zip(record["min_norms"], record["outcomes"], strict=True) if o != -1]
    # the curve at the cell's own eps is the cell's verdict
    robust_at_eps = sum(v is None or v > 1.0 for v in norms) / cell["n"]
    assert math.isclose(robust_at_eps, cell["robust_accuracy"])
    assert "minimum norm" in rbcl.write_report(run_dir).read_text()


def test_a_transfer_minimum_norm_cell_keeps_no_norms(tmp_path):
    """The norms would be the surrogate's, not the defended model's."""
    config = {
        "suite": "transfer",
        "data": {"name": "digits", "n": 8},
        "models": [{"spec": "builtin:digits-cnn"}],
        "defenses": [{"defense": "pgd-at", "params": {"eps": 0.1, "epochs": 1, "steps": 1}}],
        "attacks": [
            {
                "attack": "fmn",
                "params": {"steps": 10},
                "threat": {"norm": "l2", "eps": 1.0, "access": "transfer"},
            }
        ],
    }
    run_dir = rbcl.run(config, out=tmp_path / "run", profile=None)
    cells = [c for c in rbcl.load_results(run_dir)["cells"] if c["threat"]["access"] == "transfer"]
    assert cells and all("min_norm" not in cell for cell in cells)


def _synthetic_results(spec: str, name: str, norm: str = "linf", eps: float = 8 / 255) -> dict:
    """A results dict with one pair and one full standard AutoAttack cell, on 10,000 images."""
    from robustbench_cl.tasks.classification.export import STANDARD

    threat = {
        "norm": norm,
        "eps": eps,
        "space": "input",
        "bounds": [0.0, 1.0],
        "targeted": False,
        "universal": False,
        "access": "white-box",
        "budget": {},
        "eps_relative": False,
    }
    pair = {
        "id": "p",
        "label": f"{name} / undefended",
        "model": name,
        "model_spec": spec,
        "defense": "undefended",
        "defense_id": "none",
        "n": 10_000,
        "clean_accuracy": 0.9,
        "flags": [],
    }
    cell = {
        "pair_id": "p",
        "group_id": "g",
        "column": "AutoAttack",
        "threat": threat,
        "attack": {"attack": "autoattack", "settings": dict(STANDARD)},
        "adaptive": True,
        "n": 10_000,
        "attacked": 9_000,
        "robust_accuracy": 0.5,
        "flags": [],
    }
    data = {"name": "cifar10:/home/alice/cifar", "split": "test", "selection": "all"}
    return {"run": {"data": data}, "pairs": [pair], "cells": [cell]}


def test_a_leaderboard_entry_holds_no_local_path_and_the_boards_budget():
    from robustbench_cl.tasks.classification.export import robustbench_entries

    spec = "robustbench:Standard?dir=/home/alice/models"
    (entry,) = robustbench_entries(_synthetic_results(spec, spec), {}).values()
    assert entry["name"] == "Standard" and entry["architecture"] == "WideResNet-28-10"
    assert entry["dataset"] == "cifar10" and entry["eps"] == "8/255" and not entry["footnote"]
    assert "alice" not in json.dumps(entry)
    # a path-like spec without a name must be named; a float budget is written as 255ths
    python = "python:/home/alice/net.py:make"
    with pytest.raises(UserError, match="--name"):
        robustbench_entries(_synthetic_results(python, python), {})
    (named,) = robustbench_entries(_synthetic_results(python, "MyNet"), {}).values()
    assert named["name"] == "MyNet" and named["architecture"] == ""
    # RobustBench has no cifar100 l2 leaderboard, and 0.4 is not the l2 board's budget
    with pytest.raises(UserError, match="no cifar100 l2 leaderboard"):
        robustbench_entries(_synthetic_results(spec, spec, "l2", 0.5), {"dataset": "cifar100"})
    with pytest.raises(UserError, match="not the cifar10 l2 leaderboard"):
        robustbench_entries(_synthetic_results(spec, spec, "l2", 0.4), {})
