"""The RAE preprocessor: it never touches the foundation model, its inner attack stays in the
ball, defend/wrap/load round-trips (also for a torchvision model from a local weights file), and
the engine's adaptive evaluation of preprocessors (transfer labelled, non-adaptive flagged)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import robustbench_cl as rbcl
from robustbench_cl.cli.main import cli
from robustbench_cl.data.base import TensorData
from robustbench_cl.defenses import make_defense
from robustbench_cl.defenses.rae import contrastive_pgd
from robustbench_cl.errors import UserError
from robustbench_cl.losses import info_nce
from robustbench_cl.models import Frozen, Preprocessed
from robustbench_cl.models.autoencoder import AutoEncoder
from robustbench_cl.models.wrappers import parameter_hash
from robustbench_cl.threat import ThreatModel


class CountingModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def _images(n: int = 40, channels: int = 1, size: int = 8, seed: int = 0) -> TensorData:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=generator)
    return TensorData(
        f"random-{channels}x{size}-{seed}", "train", x, torch.zeros(n, dtype=torch.long), 3
    )


def test_rae_never_calls_or_changes_the_foundation_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path))
    inner = CountingModel()
    model = Frozen(inner)
    before = parameter_hash(model)
    defense = make_defense("rae", lam=1.0, epochs=2, steps=2, batch_size=16)
    defended = defense.build(model, "python:counting", _images())
    assert inner.calls == 0  # the RAE fit never ran the model forward
    assert parameter_hash(model) == before and model.unchanged()
    assert isinstance(defended, Preprocessed) and defended.model is model
    defended(torch.rand(2, 1, 8, 8))
    assert inner.calls == 1  # it is only used once the preprocessor sits in front of it


def test_contrastive_pgd_stays_in_the_ball_and_raises_the_loss():
    torch.manual_seed(0)
    autoencoder = AutoEncoder(1, 8, latent=8, width=4)
    x = torch.rand(12, 1, 8, 8)
    anchor = autoencoder.embed(x).detach()
    threat = ThreatModel(norm="linf", eps=0.1)
    x_adv = contrastive_pgd(
        autoencoder, x, anchor, info_nce, 0.5, threat, steps=10, step_size=0.025
    )
    threat.check(x_adv, x)  # raises outside the ball or the bounds
    with torch.no_grad():
        assert info_nce(autoencoder.embed(x_adv), anchor, 0.5) > info_nce(
            autoencoder.embed(x), anchor, 0.5
        )
    assert all(p.requires_grad for p in autoencoder.parameters())


def test_contrastive_pgd_starts_uniformly_inside_the_ball():
    """The start (zero steps) of the inner attack: interior pixels move both up and down, by at
    most eps, roughly uniformly; version 1 started at x + random_init(x) >= x, x + eps inside."""
    torch.manual_seed(0)
    autoencoder = AutoEncoder(1, 8, latent=8, width=4)
    eps = 0.1
    x = eps + (1 - 3 * eps) * torch.rand(64, 1, 8, 8)  # interior: eps < x < 1 - 2 eps
    anchor = autoencoder.embed(x).detach()
    threat = ThreatModel(norm="linf", eps=eps)
    start = contrastive_pgd(autoencoder, x, anchor, info_nce, 0.5, threat, steps=0, step_size=0)
    threat.check(start, x)
    delta = start - x
    assert (delta.abs() <= eps + 1e-6).all()
    assert (delta < -eps / 10).float().mean() > 0.4  # both signs, about half each
    assert (delta > eps / 10).float().mean() > 0.4
    assert delta.abs().mean() == pytest.approx(eps / 2, rel=0.05)  # uniform on [-eps, eps]


def test_lambda_zero_is_the_reconstruction_only_control(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path))

    def no_attack(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("lambda = 0 must not run the inner attack")

    monkeypatch.setattr("robustbench_cl.defenses.rae.contrastive_pgd", no_attack)
    autoencoder = make_defense("rae", lam=0, epochs=2).fit(_images(seed=1))
    assert autoencoder(torch.rand(3, 1, 8, 8)).shape == (3, 1, 8, 8)


def test_rae_settings_are_checked():
    with pytest.raises(UserError, match="unknown contrastive loss"):
        make_defense("rae", loss="triplet")
    with pytest.raises(UserError, match="lam"):
        make_defense("rae", lam=-1)
    assert make_defense("rae", loss="dcl").loss == "dcl"


def test_defend_wrap_and_load_round_trip(tmp_path):
    artifact, wrapped = tmp_path / "rae", tmp_path / "cnn-rae"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["defend", "rae", "--param", "epochs=1", "--param", "steps=1", "-o", str(artifact)],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        cli,
        [
            "wrap",
            "--preprocessor",
            str(artifact),
            "--model",
            "builtin:digits-cnn",
            "-o",
            str(wrapped),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(wrapped.with_suffix(".json").read_text())["model"] == "builtin:digits-cnn"
    model = rbcl.load_model(f"wrapped:{wrapped}")
    x, _ = rbcl.load_dataset("digits", split="test").tensors(8)
    from robustbench_cl.models.autoencoder import load_autoencoder

    expected = rbcl.load_model("builtin:digits-cnn")(load_autoencoder(artifact)(x))
    assert torch.allclose(model(x), expected, atol=1e-6)
    bad = runner.invoke(
        cli,
        [
            "wrap",
            "--preprocessor",
            str(tmp_path / "none"),
            "--model",
            "builtin:digits-cnn",
            "-o",
            str(wrapped),
        ],
    )
    assert bad.exit_code == 2 and "--preprocessor" in bad.output


def test_wrap_a_torchvision_model_from_a_local_weights_file(tmp_path, monkeypatch):
    import torchvision
    from safetensors.torch import save_file

    from robustbench_cl.models.artifacts import save_artifact
    from robustbench_cl.models.autoencoder import write_wrapped

    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path / "home"))
    weights = tmp_path / "resnet18.safetensors"
    torch.manual_seed(0)
    save_file(torchvision.models.resnet18(num_classes=10).state_dict(), str(weights))
    data = _images(n=16, channels=3, size=32, seed=2)
    defense = make_defense("rae", epochs=1, steps=1, batch_size=8)
    autoencoder = defense.fit(data)
    from robustbench_cl.models.artifacts import load_artifact_config

    save_artifact(tmp_path / "rae", autoencoder, load_artifact_config(defense.cache_path("", data)))
    out = write_wrapped(
        tmp_path / "rae",
        f"torchvision:resnet18?weights={weights}&num_classes=10",
        tmp_path / "wrapped",
    )
    model = rbcl.load_model(f"wrapped:{out}")
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, 10)
    (grad,) = torch.autograd.grad(logits.sum(), x)  # end to end through the preprocessor
    assert grad.abs().sum() > 0


def _rae_config(attacks: list[dict]) -> dict:
    return {
        "suite": "rae-small",
        "data": {"name": "digits", "n": 24},
        "models": [{"spec": "builtin:digits-cnn"}],
        "defenses": [{"defense": "rae", "name": "RAE", "params": {"epochs": 1, "steps": 1}}],
        "attacks": attacks,
        "engine": {"sanity_probe_size": 8},
    }


TRANSFER = {
    "attack": "pgd",
    "name": "PGD",  # the same display name as the white-box PGD: the threat label differs
    "params": {"steps": 5},
    "threat": {"norm": "linf", "eps": 0.1, "access": "transfer"},
}
END_TO_END = {
    "attack": "pgd",
    "name": "PGD",
    "params": {"steps": 5},
    "threat": {"norm": "linf", "eps": 0.1},
}


def test_transfer_only_evaluation_of_a_preprocessor_is_flagged(tmp_path):
    from robustbench_cl.engine.results import load_results

    run = rbcl.run(_rae_config([TRANSFER]), out=tmp_path / "transfer", profile=None)
    results = load_results(run)
    (cell,) = results["cells"]
    assert cell["adaptive"] is False
    assert cell["attack"]["settings"]["keep_best"] is False  # the final, highest-loss iterate
    assert "preprocessor_non_adaptive" in [f["code"] for f in cell["flags"]]
    assert "non-adaptive" in rbcl.report.html.render_report(run)

    run = rbcl.run(_rae_config([END_TO_END, TRANSFER]), out=tmp_path / "both", profile=None)
    cells = load_results(run)["cells"]
    assert [c["adaptive"] for c in cells] == [True, False]
    assert all("preprocessor_non_adaptive" not in [f["code"] for f in c["flags"]] for c in cells)


def test_wrapped_specs_store_absolute_weight_paths_and_take_no_options(tmp_path, monkeypatch):
    import torchvision
    from safetensors.torch import save_file

    from robustbench_cl.models.artifacts import load_artifact_config, save_artifact
    from robustbench_cl.models.autoencoder import write_wrapped

    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    save_file(torchvision.models.resnet18(num_classes=4).state_dict(), "r18.safetensors")
    data = _images(n=8, channels=3, size=32, seed=3)
    defense = make_defense("rae", epochs=1, steps=1, batch_size=8)
    save_artifact(
        tmp_path / "rae", defense.fit(data), load_artifact_config(defense.cache_path("", data))
    )
    out = write_wrapped("rae", "torchvision:resnet18?weights=r18.safetensors&num_classes=4", "w")
    spec = json.loads((tmp_path / "w.json").read_text())["model"]
    assert str(tmp_path / "r18.safetensors") in spec
    monkeypatch.chdir(tmp_path / "home")  # another directory: it still loads
    assert rbcl.load_model(f"wrapped:{tmp_path / out.name}")(torch.rand(1, 3, 32, 32)).shape == (
        1,
        4,
    )
    with pytest.raises(UserError, match="no options"):
        rbcl.load_model(f"wrapped:{tmp_path / out.name}?x=1")


def test_the_rae_refuses_non_square_images(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path))
    data = TensorData("wide", "train", torch.rand(4, 1, 8, 16), torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(UserError, match="square"):
        make_defense("rae", epochs=1).fit(data)
