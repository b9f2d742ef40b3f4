"""Membership inference: the metric conventions, attack power on an overfit model, chance on an
unseen one, cached reference models, and the matrix integration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import robustbench_cl as rbcl
from robustbench_cl.errors import UserError
from robustbench_cl.privacy.membership import (
    ReferenceRecipe,
    make_membership_attack,
    paired_halves,
    reference_models,
    reference_signals,
    scaled_confidence,
)
from robustbench_cl.privacy.metrics import advantage, auc, membership_metrics, roc, tpr_at_fpr

# ---------------------------------------------------------------------- metrics


def test_tpr_at_fpr_matches_a_hand_computed_roc():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    members = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    fpr, tpr = roc(scores, members)
    # thresholds 0.9 .. 0.4: (fpr, tpr) = (0,1/3) (0,2/3) (1/3,2/3) (1/3,1) (2/3,1) (1,1)
    assert tpr_at_fpr(fpr, tpr, 0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr(fpr, tpr, 0.30) == pytest.approx(2 / 3)
    assert tpr_at_fpr(fpr, tpr, 0.34) == pytest.approx(1.0)
    assert auc(fpr, tpr) == pytest.approx(8 / 9)  # 8 of 9 (member, non-member) pairs ordered
    assert advantage(fpr, tpr) == pytest.approx(2 / 3)


def test_metrics_state_the_resolution_and_bootstrap_intervals():
    rng = np.random.default_rng(0)
    members = np.arange(400) < 200
    scores = rng.normal(size=400) + members
    metrics = membership_metrics(scores, members, bootstrap=100)
    assert metrics["n_nonmembers"] == 200 and metrics["fpr_resolution"] == pytest.approx(1 / 200)
    low, high = metrics["auc_ci95"]
    assert low < metrics["auc"] < high
    assert set(metrics["tpr_at_fpr"]) == {"0.01", "0.001"}
    assert metrics["fpr"][0] == 0.0 and metrics["tpr"][-1] == 1.0


def test_paired_halves_put_every_example_in_exactly_half_the_models():
    inside = paired_halves(50, 8, seed=3)
    assert inside.shape == (8, 50) and (inside.sum(0) == 4).all()
    with pytest.raises(UserError, match="even"):
        paired_halves(10, 3, seed=0)
    matched = paired_halves(50, 10, seed=3, in_fraction=0.8)  # subsets as large as a target's
    assert (matched.sum(0) == 8).all()
    assert (paired_halves(50, 2, seed=3, in_fraction=0.8).sum(0) == 1).all()  # keeps an OUT


def test_scaled_confidence_is_the_logit_of_the_true_class_probability():
    logits = torch.randn(16, 5)
    y = torch.randint(0, 5, (16,))
    p = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    assert torch.allclose(scaled_confidence(logits, y), torch.log(p / (1 - p)), atol=1e-5)


# ---------------------------------------------------------------------- attacks on tiny models
def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 4))


def _fit(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """Memorises random labels: an overfit model by construction."""
    torch.manual_seed(seed)
    model = _mlp()
    torch.manual_seed(seed)
    for layer in model:
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def _population(seed: int, n: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 24, generator=generator), torch.randint(0, 4, (n,), generator=generator)


@pytest.fixture
def counted_recipe():
    calls = []

    def train(x, y, seed):  # noqa: ANN001, ANN202
        calls.append(seed)
        return _fit(x, y, seed)

    return ReferenceRecipe({"test": "mlp-random-labels"}, _mlp, train), calls


def test_lira_finds_members_of_an_overfit_model(counted_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path))
    recipe, _ = counted_recipe
    x, y = _population(0)
    members = torch.zeros(len(y), dtype=torch.bool)
    members[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))[:120]] = True
    target = _fit(x[members], y[members], seed=99)
    models, inside, _ = reference_models(recipe, x, y, k=8, seed=0)
    audited = torch.arange(len(y))
    references = reference_signals(models, inside, audited, x, y)
    results = {}
    for name, params in [("lira", {"online": True}), ("lira", {"online": False}), ("loss", {})]:
        scores = make_membership_attack(name, **params).score(target, x, y, references)
        results[(name, params.get("online"))] = membership_metrics(scores, members, bootstrap=50)
    online = results[("lira", True)]
    assert online["tpr_at_fpr"]["0.01"] > 0.2, online["tpr_at_fpr"]  # far above 1%
    assert online["auc"] > 0.9
    assert results[("lira", False)]["auc"] > 0.8 and results[("loss", None)]["auc"] > 0.8


def test_a_model_that_never_saw_the_data_leaks_nothing(counted_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path))
    recipe, _ = counted_recipe
    x, y = _population(1)
    other_x, other_y = _population(2)
    target = _fit(other_x, other_y, seed=5)  # trained on different data entirely
    members = torch.arange(len(y)) < len(y) // 2  # "members" it has never seen
    models, inside, _ = reference_models(recipe, x, y, k=4, seed=0)
    references = reference_signals(models, inside, torch.arange(len(y)), x, y)
    for name, params in [("loss", {}), ("lira", {"online": False})]:
        scores = make_membership_attack(name, **params).score(target, x, y, references)
        metrics = membership_metrics(scores, members, bootstrap=200)
        low, high = metrics["auc_ci95"]
        assert low <= 0.5 <= high, (name, metrics["auc"], metrics["auc_ci95"])


def test_reference_models_are_cached_and_never_retrained(counted_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path))
    recipe, calls = counted_recipe
    x, y = _population(3, n=80)
    first, _, trained = reference_models(recipe, x, y, k=4, seed=0)
    assert trained == 4 and len(calls) == 4
    second, _, trained = reference_models(recipe, x, y, k=4, seed=0)
    assert trained == 0 and len(calls) == 4  # loaded from the cache, not retrained
    for a, b in zip(first, second):
        assert all(
            torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values())
        )
    _, _, trained = reference_models(recipe, x, y, k=4, seed=1)  # another split: new models
    assert trained == 4


def test_rmia_with_population_samples_ranks_like_its_ratio(counted_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path))
    recipe, _ = counted_recipe
    x, y = _population(0)
    members = torch.arange(len(y)) < 120
    target = _fit(x[members], y[members], seed=7)
    models, inside, _ = reference_models(recipe, x, y, k=4, seed=0)
    audited, z = torch.arange(200), torch.arange(200, 240)
    references = reference_signals(models, inside, audited, x, y, z)
    rmia = make_membership_attack("rmia", reference_models=4)
    with_z = rmia.score(target, x[audited], y[audited], references, (x[z], y[z]))
    ratio = rmia.score(target, x[audited], y[audited], references, None)
    assert ((with_z >= 0) & (with_z <= 1)).all()
    # the fraction of z beaten is a non-decreasing function of the ratio
    order = ratio.argsort()
    assert (with_z[order].diff() >= 0).all()
    assert membership_metrics(with_z, members[audited], bootstrap=20)["auc"] > 0.8


# ---------------------------------------------------------------------- the matrix
def _membership_config(**overrides) -> dict:
    config = {
        "suite": "membership-small",
        "data": {"name": "digits", "split": "test"},
        "models": [{"spec": "builtin:digits-cnn", "name": "cnn"}],
        "defenses": [{"defense": "none"}],
        "attacks": [{"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
        "membership": [
            {"attack": "loss", "name": "LOSS", "n": 60},
            {"attack": "lira", "params": {"reference_models": 2}, "n": 60},
        ],
        "engine": {"sanity_probe_size": 8},
    }
    config.update(overrides)
    return config


@pytest.mark.xdist_group("digits-references")
def test_membership_columns_in_a_run_and_its_report(tmp_path):
    from robustbench_cl.engine.results import validate_results
    from robustbench_cl.report.html import render_report

    run = rbcl.run(_membership_config(), out=tmp_path / "run", profile=None)
    records = [json.loads(line) for line in (run / "cells.jsonl").read_text().splitlines()]
    audits = [r for r in records if r["type"] == "membership"]
    assert [a["attack"]["attack"] for a in audits] == ["loss", "lira"]
    assert all(a["n_members"] == a["n_nonmembers"] == 60 for a in audits)
    assert audits[1]["reference_models"] == 2 and audits[0]["reference_models"] == 0
    results = json.loads((run / "results.json").read_text())
    validate_results(results)
    assert len(results["membership"]) == 2
    html = render_report(run)
    assert 'id="privacy"' in html and "Membership inference" in html and "<svg" in html

    again = rbcl.run(_membership_config(), out=tmp_path / "again", profile=None)
    lines = (again / "cells.jsonl").read_text().splitlines()
    lira = [json.loads(line) for line in lines if '"membership"' in line][1]
    assert lira["references_trained"] == 0  # the second run reuses the cached references
    assert lira["scores"] == audits[1]["scores"]
    from tests.conftest import assert_resumes_after_a_torn_line

    # the last record is the LiRA column: torn, it is recomputed identically
    assert_resumes_after_a_torn_line(
        again, lambda: rbcl.run(_membership_config(), out=again, profile=None)
    )


def test_reference_attacks_are_refused_without_a_recipe():
    config = _membership_config(models=[{"spec": "python:tests.conftest:tiny_factory"}])
    with pytest.raises(UserError, match=r"membership\[1\].*loss or art-blackbox"):
        rbcl.run(config, out=None, profile=None)


def test_pairs_without_a_recipe_show_reference_attacks_as_not_applicable():
    from robustbench_cl.tasks.pairs import expand

    config = rbcl.load_config(
        _membership_config(
            defenses=[{"defense": "none"}, {"defense": "rae", "params": {"epochs": 1}}]
        ),
        profile=None,
    )
    undefended, rae = expand(config)
    assert [c.config.attack for c in undefended.membership] == ["loss", "lira"]
    assert [c.config.attack for c in rae.membership] == ["loss"]
    assert rae.membership_skipped[0]["attack"] == "lira"
    assert "no reference-model recipe" in rae.membership_skipped[0]["reason"]


def test_unknown_membership_attack_is_a_config_error():
    config = _membership_config(membership=[{"attack": "lirra"}])
    with pytest.raises(UserError, match=r"membership\[0\].*lira"):
        rbcl.run(config, out=None, profile=None)
