"""Model wrappers, the built-in zoo and the adapters for users' own models."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import robustbench_cl as rbcl
from robustbench_cl.errors import UserError
from robustbench_cl.models import Frozen, Normalize, Preprocessed, load_model
from robustbench_cl.models.wrappers import is_randomized, parameter_hash


def test_normalize_puts_the_normalisation_inside_the_model():
    wrapped = Normalize(nn.Identity(), mean=[0.5], std=[0.25])
    x = torch.full((1, 1, 2, 2), 0.75)
    assert torch.allclose(wrapped(x), torch.full_like(x, 1.0))


def test_frozen_stays_in_eval_mode_and_records_its_hash():
    frozen = Frozen(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)))
    frozen.train()
    assert not frozen.training and not frozen.model.training
    assert not any(p.requires_grad for p in frozen.parameters())
    assert frozen.unchanged()
    with torch.no_grad():
        frozen.model[0].weight.add_(1.0)
    assert not frozen.unchanged()


def test_preprocessed_bpda_uses_the_identity_backward():
    class Quantize(nn.Module):
        def forward(self, x):
            return torch.round(x * 4) / 4  # zero gradient almost everywhere

    model = nn.Linear(4, 2)
    x = torch.rand(3, 4, requires_grad=True)
    end_to_end = Preprocessed(Quantize(), model, gradient_mode="end-to-end")
    (grad,) = torch.autograd.grad(end_to_end(x).sum(), x)
    assert torch.count_nonzero(grad) == 0
    bpda = Preprocessed(Quantize(), model, gradient_mode="bpda")
    (grad,) = torch.autograd.grad(bpda(x).sum(), x)
    assert torch.allclose(grad, model.weight.sum(0).expand_as(grad))
    with torch.no_grad():
        assert torch.equal(bpda(x), end_to_end(x))


def test_preprocessed_eot_averages_draws_and_declares_randomness():
    class Noise(nn.Module):
        is_randomized = True

        def forward(self, x):
            return x + 0.1 * torch.randn_like(x)

    wrapped = Preprocessed(
        Noise(), nn.Linear(4, 2), gradient_mode="eot", is_randomized=True, eot_samples=8
    )
    assert is_randomized(wrapped)
    x = torch.rand(2, 4, requires_grad=True)
    assert wrapped(x).shape == (2, 2)


def test_builtin_digits_cnn_is_cached_and_accurate(digits_model, digits_batch):
    again = load_model("builtin:digits-cnn")
    assert parameter_hash(again.model) == parameter_hash(digits_model.model)
    x, y = digits_batch
    with torch.no_grad():
        assert (digits_model(x).argmax(1) == y).float().mean() > 0.9
    assert not digits_model.training


def test_builtin_training_is_deterministic(tmp_path, monkeypatch):
    """Two cold trainings (shipped artifacts off) give the same weights in one environment."""
    monkeypatch.setenv("ROBUSTBENCH_CL_NO_SEEDS", "1")
    hashes = []
    for home in ("a", "b"):
        monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path / home))
        hashes.append(parameter_hash(load_model("builtin:digits-cnn").model))
        assert list((tmp_path / home).glob("models/digits-cnn-*.safetensors"))
    assert hashes[0] == hashes[1]


def test_torchvision_adapter_loads_local_weights(tmp_path):
    import torchvision

    reference = torchvision.models.get_model("resnet18", weights=None, num_classes=3)
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    model = load_model(f"torchvision:resnet18?weights={path}&num_classes=3")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.eval()(
            Normalize(nn.Identity(), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(x)
        )
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_timm_adapter_loads_a_safetensors_checkpoint(tmp_path):
    timm = pytest.importorskip("timm")
    reference = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = load_model(f"timm:resnet10t?checkpoint={path}&num_classes=5")
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 5)


def test_python_adapter_calls_the_factory():
    model = load_model("python:tests.conftest:tiny_factory?n_classes=3")
    assert model(torch.rand(2, 1, 4, 4)).shape == (2, 3)


def test_foreign_checkpoints_load_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    path = tmp_path / "evil.pt"
    torch.save({"weight": Evil()}, path)
    with pytest.raises(UserError, match="contains pickled Python objects"):
        load_model(f"torchvision:resnet18?weights={path}")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("builtin:digits-cnnn", "did you mean 'digits-cnn'"),
        ("nonsense", "bad model spec"),
        ("hub:foo", "unknown model scheme"),
        ("torchvision:resnet1800", "unknown torchvision model"),
    ],
)
def test_bad_model_specs_get_one_line_errors(spec, message):
    with pytest.raises(UserError, match=message):
        load_model(spec)


def test_public_api_as_documented():
    model = rbcl.load_model("builtin:digits-cnn")
    x, y = rbcl.load_dataset("digits", split="test").tensors(n=32)
    threat = rbcl.ThreatModel(norm="linf", eps=0.1)
    attack = rbcl.make_attack("pgd", steps=10, step_size=0.025, random_start=False)
    result = attack(model, x, y, threat)
    assert result.adv.shape == x.shape and result.success.shape == y.shape
    assert result.cost.forward > 0 and result.cost.backward > 0
    assert "pgd" in rbcl.list_attacks("pg*") and "autoattack" in rbcl.list_attacks()


def _build_once(path: str, counter: str) -> None:
    from robustbench_cl.models.artifacts import artifact_exists, artifact_lock, save_artifact

    with artifact_lock(path):
        if not artifact_exists(path):
            with open(counter, "a") as handle:
                handle.write("trained\n")
            save_artifact(path, nn.Linear(64, 64), {"ok": True})


def test_concurrent_processes_build_a_cached_artifact_once(tmp_path):
    import multiprocessing

    path, counter = str(tmp_path / "art" / "model"), str(tmp_path / "count.txt")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_build_once, args=(path, counter)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert open(counter).read().splitlines() == ["trained"]
    assert not list((tmp_path / "art").glob("*.tmp"))


def test_artifact_names_may_contain_dots(tmp_path):
    from robustbench_cl.models.artifacts import (
        artifact_exists,
        load_artifact_weights,
        save_artifact,
    )

    path = tmp_path / "rae-lam0.5"
    save_artifact(path, nn.Linear(2, 2), {"ok": True})
    assert (tmp_path / "rae-lam0.5.safetensors").exists() and artifact_exists(path)
    assert not (tmp_path / "rae-lam0.safetensors").exists()
    load_artifact_weights(path, nn.Linear(2, 2))


def test_defense_cache_keys_follow_the_data_contents_and_canonical_numbers():
    from robustbench_cl.data.base import TensorData
    from robustbench_cl.defenses import make_defense

    x = torch.rand(4, 1, 8, 8)
    y = torch.zeros(4, dtype=torch.long)
    same_name = TensorData("d", "train", x, y, 2), TensorData("d", "train", x + 0.1, y, 2)
    rae = make_defense("rae", lam=1)
    assert rae.cache_path("m", same_name[0]) != rae.cache_path("m", same_name[1])
    assert rae.cache_path("m", same_name[0]) == make_defense("rae", lam=1.0).cache_path(
        "m", same_name[0]
    )


def _weights_by_suffix(model):
    """A loaded model's weights keyed as in the bare torchvision model (wrappers add prefixes)."""
    state = model.state_dict()
    prefix = min((key[: -len("fc.weight")] for key in state if key.endswith("fc.weight")), key=len)
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _numpy_checkpoint(path, model):
    import numpy as np

    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "best_acc": np.float64(0.91)}, path)


def test_a_pickled_checkpoint_is_refused_in_one_line_and_loads_when_trusted(tmp_path, monkeypatch):
    from robustbench_cl.utils import TRUST_REMOTE_CODE_ENV

    monkeypatch.delenv(TRUST_REMOTE_CODE_ENV, raising=False)
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18(num_classes=3)
    path = tmp_path / "published.pth.tar"
    _numpy_checkpoint(path, reference)
    spec = f"torchvision:resnet18?weights={path}&num_classes=3&normalize=none"
    with pytest.raises(UserError, match="contains pickled Python objects") as caught:
        load_model(spec)
    assert "--trust-remote-code" in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    monkeypatch.setenv(TRUST_REMOTE_CODE_ENV, "1")
    loaded = _weights_by_suffix(load_model(spec))
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded[name], value)


def test_common_checkpoint_layouts_load_without_flags(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet18(num_classes=3)
    state = reference.state_dict()
    layouts = {
        "model": {"model": state, "epoch": 1},
        "net": {"net": {f"module.{k}": v for k, v in state.items()}},
        "plain": state,
    }
    for name, content in layouts.items():
        path = tmp_path / f"{name}.pt"
        torch.save(content, path)
        model = load_model(f"torchvision:resnet18?weights={path}&num_classes=3&normalize=none")
        assert torch.equal(_weights_by_suffix(model)["fc.weight"], state["fc.weight"]), name


def test_cli_refuses_a_code_running_pickle_with_exit_2_and_runs_nothing(tmp_path):
    from click.testing import CliRunner

    from robustbench_cl.cli.main import cli

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"weight": Evil()}}, path)
    result = CliRunner().invoke(
        cli, ["attack", "fgsm", "--model", f"torchvision:resnet18?weights={path}", "--eps", "0.1"]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "contains pickled Python objects" in lines[0], result.output
    assert "--trust-remote-code" in lines[0] and "Traceback" not in result.output
    assert not marker.exists()


# ---------------------------------------------------------------------- shipped artifacts
def test_seed_cache_copies_only_what_the_cache_lacks(tmp_path, monkeypatch):
    from robustbench_cl.shipped import NO_SEEDS_ENV, digest, seed_cache

    monkeypatch.delenv(NO_SEEDS_ENV, raising=False)
    root = tmp_path / "seeds"
    (root / "models" / "lm-1").mkdir(parents=True)
    (root / "models" / "lm-1" / "model.safetensors").write_bytes(b"weights")
    (root / "models" / "cnn-1.safetensors").write_bytes(b"shipped")
    (root / "models" / "cnn-1.lock").write_bytes(b"")
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "cnn-1.safetensors").write_bytes(b"mine")  # never overwritten
    assert seed_cache(home, root) == 1
    assert (home / "models" / "cnn-1.safetensors").read_bytes() == b"mine"
    assert digest(home / "models" / "lm-1") == digest(root / "models" / "lm-1")
    assert not (home / "models" / "cnn-1.lock").exists()
    assert seed_cache(home, root) == 0
    monkeypatch.setenv(NO_SEEDS_ENV, "1")
    assert seed_cache(tmp_path / "other", root) == 0


def test_shipped_artifacts_load_without_training(tmp_path, monkeypatch):
    """A fresh cache gets the shipped digits-cnn: loading it trains nothing."""
    from robustbench_cl.models import builtin
    from robustbench_cl.shipped import NO_SEEDS_ENV, shipped_entries
    from robustbench_cl.utils import cache_home

    if not any(e.name.startswith("digits-cnn-") for e in shipped_entries()):
        pytest.skip("no shipped digits-cnn")
    monkeypatch.delenv(NO_SEEDS_ENV, raising=False)
    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path / "fresh"))

    def refuse(*args, **kwargs):
        raise AssertionError("trained although an artifact is shipped")

    architecture, _, recipe = builtin.REFERENCE_RECIPES["digits-cnn"]
    monkeypatch.setitem(builtin.REFERENCE_RECIPES, "digits-cnn", (architecture, refuse, recipe))
    assert (cache_home() / "models").is_dir()
    model = load_model("builtin:digits-cnn")
    x, y = rbcl.load_dataset("digits", split="test").tensors(n=200)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.9


def test_an_artifact_digest_ignores_the_training_time(tmp_path):
    import json

    from robustbench_cl.shipped import digest

    for name, seconds in (("a", 31.1), ("b", 29.7)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "weights.safetensors").write_bytes(b"same weights")
        info = {"wall_time": seconds, "history": [{"loss": 0.5, "seconds": seconds}], "seed": 0}
        (folder / "info.json").write_text(json.dumps(info))
    assert digest(tmp_path / "a") == digest(tmp_path / "b")  # two trainings, one artifact
    (tmp_path / "b" / "weights.safetensors").write_bytes(b"other weights")
    assert digest(tmp_path / "a") != digest(tmp_path / "b")
    (tmp_path / "b" / "weights.safetensors").write_bytes(b"same weights")
    (tmp_path / "b" / "info.json").write_text(json.dumps({"wall_time": 1.0, "seed": 1}))
    assert digest(tmp_path / "a") != digest(tmp_path / "b")  # other settings: other artifact
