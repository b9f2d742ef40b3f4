"""DP-SGD and privacy auditing: the epsilon lower bounds against the reference test vectors
(field-standards I1, I2), DP-SGD's step against Opacus's, its accountant, and the audit flags on
a model whose claim is deliberately wrong."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import robustbench_cl as rbcl
from robustbench_cl.defenses import make_defense
from robustbench_cl.defenses.dp import DPSGD, dp_sgd_train, per_sample_gradients
from robustbench_cl.errors import UserError
from robustbench_cl.privacy.epsilon import (
    UNDERPOWERED_EPSILON,
    clopper_pearson,
    epsilon_lower_bound,
    max_certifiable_epsilon,
    one_run_epsilon,
    one_run_guesses,
    rates_epsilon,
    two_world_epsilon,
    underpowered_below,
)
from robustbench_cl.privacy.membership import scaled_confidence
from robustbench_cl.registry import DEFENSES, register_defense


# ---------------------------------------------------------------------- the bounds
def test_two_world_bound_reproduces_jagielski_and_tf_privacy():
    # alpha 0.05 (two-sided Clopper-Pearson), one copy of the canary
    assert two_world_epsilon(900, 1000, 100, 1000) == pytest.approx(1.9897, abs=1e-4)
    assert two_world_epsilon(500, 500, 0, 500) == pytest.approx(4.9056, abs=1e-4)
    assert two_world_epsilon(900, 1000, 100, 1000, copies=2) == pytest.approx(1.9897 / 2, 1e-4)


def test_rates_bound_reproduces_nasr_et_al():
    assert rates_epsilon(100, 1000, 100, 1000, delta=1e-5) == pytest.approx(1.9897, abs=1e-4)
    assert rates_epsilon(0, 1000, 0, 1000, delta=1e-5) == pytest.approx(5.6006, abs=1e-4)
    assert rates_epsilon(500, 1000, 500, 1000) == 0.0  # a coin flip certifies nothing


def test_clopper_pearson_matches_scipy_binomtest():
    from scipy.stats import binomtest

    for k, n in ((0, 10), (3, 10), (10, 10), (100, 1000)):
        interval = binomtest(k, n).proportion_ci(0.95, method="exact")
        assert clopper_pearson(k, n) == pytest.approx((interval.low, interval.high), abs=1e-12)


@pytest.mark.parametrize(
    ("m", "r", "v", "delta", "expected"),
    [
        (1000, 600, 600, 1e-5, 5.2704),
        (100, 100, 100, 1e-5, 3.4902),
        (1000, 100, 100, 0, 3.4930),
        (1000, 100, 90, 0, 1.6308),
        (1000, 1000, 700, 1e-5, 0.7317),
        (1000, 200, 180, 1e-5, 1.7963),
    ],
)
def test_one_run_bound_reproduces_steinke_et_al(m, r, v, delta, expected):
    assert one_run_epsilon(m, r, v, delta, 0.05) == pytest.approx(expected, abs=1e-4)


def test_one_run_guesses_count_the_top_and_bottom_scores():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    assert one_run_guesses(scores, included, 2, 2) == (4, 4)
    assert one_run_guesses(scores, included, 3, 1) == (4, 3)  # score 3.0 guessed in: wrong
    assert one_run_guesses(scores, included, 1, 0) == (1, 1)
    assert one_run_epsilon(1000, 100, 50) == 0.0  # chance certifies nothing


def test_the_threshold_is_chosen_on_one_half_and_counted_on_the_other():
    rng = np.random.default_rng(0)
    members = np.arange(400) < 200
    perfect = members + rng.uniform(0, 0.5, 400)
    audit = epsilon_lower_bound(perfect, members, delta=1e-5)
    assert audit["n_counted"] == [100, 100]
    assert audit["false_positives"] == audit["false_negatives"] == 0
    assert audit["epsilon_lb"] == pytest.approx(audit["max_certifiable"])
    assert audit["epsilon_lb"] == pytest.approx(max_certifiable_epsilon(100, 100, 1e-5))
    # pure noise: the best threshold of the choosing half does not carry over
    noise = epsilon_lower_bound(rng.normal(size=400), members)
    assert noise["epsilon_lb"] < 0.3
    # a threshold that separates the choosing half perfectly and the counted half not at all:
    # choosing it on the counted samples would claim the maximum; the split claims nothing
    from robustbench_cl.privacy.epsilon import audit_split

    choose = audit_split(members)
    flipped = np.where(choose, members, ~members).astype(float)
    assert epsilon_lower_bound(flipped, members)["epsilon_lb"] == 0.0


def test_the_underpowered_size_is_the_one_the_docs_state():
    assert underpowered_below(0.0) == underpowered_below(1e-5) == 30
    assert max_certifiable_epsilon(29, 29) <= UNDERPOWERED_EPSILON < max_certifiable_epsilon(30, 30)


# ---------------------------------------------------------------------- DP-SGD
def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def test_per_sample_gradients_match_a_loop():
    model = _tiny()
    x, y = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 1, 0])
    grads = per_sample_gradients(model, x, y)
    for i in range(5):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(grads[name][i], parameter.grad)


def test_a_noiseless_dp_sgd_step_matches_opacus():
    """One step with the same batch (sample rate 1): clipped, summed, divided by the expected
    batch size, exactly as Opacus's DPOptimizer computes it."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    x, y = torch.randn(12, 1, 4, 4), torch.randint(0, 3, (12,))
    ours = _tiny()
    dp_sgd_train(
        ours,
        x,
        y,
        noise_multiplier=0.0,
        max_grad_norm=0.1,
        sample_rate=1.0,
        steps=1,
        lr=0.5,
        optimizer="sgd",
    )
    theirs = GradSampleModule(_tiny())
    sgd = torch.optim.SGD(theirs.parameters(), lr=0.5, momentum=0.9)
    optimizer = DPOptimizer(sgd, noise_multiplier=0.0, max_grad_norm=0.1, expected_batch_size=12)
    optimizer.zero_grad()
    nn.functional.cross_entropy(theirs(x), y).backward()
    optimizer.step()
    for (name, a), b in zip(ours.named_parameters(), theirs._module.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_the_accountant_reaches_the_target_epsilon_and_inverts():
    from opacus.accountants.utils import get_noise_multiplier

    defense = make_defense("dp-sgd", epsilon=8, delta=1e-5, epochs=30, batch_size=128)
    claim = defense.privacy_claim(1437)
    assert claim.sample_rate == pytest.approx(1 / 12) and claim.steps == 360
    assert claim.epsilon <= 8.0 and claim.epsilon == pytest.approx(8.0, abs=0.1)
    expected = get_noise_multiplier(
        target_epsilon=8,
        target_delta=1e-5,
        sample_rate=1 / 12,
        steps=360,
        accountant="prv",
        epsilon_tolerance=0.01,
    )
    assert claim.noise_multiplier == pytest.approx(expected)
    # a given noise multiplier: the epsilon it reaches, the same by either route
    given = make_defense("dp-sgd", noise_multiplier=claim.noise_multiplier, accountant="prv")
    assert given.privacy_claim(1437).epsilon == pytest.approx(claim.epsilon, rel=1e-6)
    rdp = make_defense("dp-sgd", epsilon=1, accountant="rdp").privacy_claim(1437)
    assert rdp.epsilon <= 1.0 and rdp.noise_multiplier > claim.noise_multiplier
    with pytest.raises(UserError, match="noise_multiplier"):  # no noise is no privacy
        make_defense("dp-sgd", noise_multiplier=0.0)


def test_dp_sgd_settings_are_checked():
    with pytest.raises(UserError, match="delta"):
        make_defense("dp-sgd", delta=0)
    with pytest.raises(UserError, match="accountant"):
        make_defense("dp-sgd", accountant="gdp-typo")
    with pytest.raises(UserError, match="epsilon"):
        make_defense("dp-sgd", epsilon=0)


def test_dp_sgd_replaces_batchnorm_for_the_model_and_its_references():
    from robustbench_cl.engine.config import DefenseConfig, ModelConfig
    from robustbench_cl.tasks.membership_plan import reference_recipe

    recipe = reference_recipe(
        ModelConfig(spec="builtin:digits-cnn-bn"), DefenseConfig(defense="dp-sgd")
    )
    assert recipe is not None and recipe.key["defense"] == "dp-sgd"
    modules = list(recipe.architecture().modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    assert any(isinstance(m, nn.GroupNorm) for m in modules)


# ---------------------------------------------------------------------- the audit in a run
class ForgetsTheNoise(DPSGD):
    """A broken DP-SGD: it accounts for its noise and clipping, and trains without either."""

    name = "test-forgets-the-noise"

    def _train(self, network, model_spec, data, path):  # noqa: ANN001, ANN202
        from robustbench_cl.models.artifacts import save_artifact
        from robustbench_cl.models.training import train_classifier

        train_classifier(network, data.x, data.y, epochs=self.epochs, lr=2e-3, seed=self.seed)
        save_artifact(path, network, {"defense": self.name})


@pytest.fixture
def broken_dp():
    if ForgetsTheNoise.name not in DEFENSES.names():
        register_defense(ForgetsTheNoise.name)(ForgetsTheNoise)
    return ForgetsTheNoise.name


@pytest.mark.xdist_group("digits-references")
def test_one_run_audit_catches_a_training_that_forgets_its_noise(broken_dp, tmp_path):
    from robustbench_cl.engine.results import validate_results
    from robustbench_cl.report.html import render_report

    config = {
        "suite": "dp-audit-small",
        "data": {"name": "digits", "split": "test", "n": 12},
        "models": [{"spec": "builtin:digits-cnn", "name": "cnn"}],
        "defenses": [
            {
                "defense": broken_dp,
                "name": "claims eps 0.5",
                "params": {"epsilon": 0.5, "epochs": 60},
            }
        ],
        "attacks": [{"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
        "membership": [
            {"attack": "loss", "name": "LOSS", "n": 40},
            {
                "attack": "one-run",
                "name": "canaries",
                "params": {"canaries": 400, "k_plus": 40, "k_minus": 40},
            },
        ],
        "engine": {"sanity_probe_size": 8},
    }
    run = rbcl.run(config, out=tmp_path / "run", profile=None)
    results = json.loads((run / "results.json").read_text())
    validate_results(results)
    loss, canaries = results["membership"]
    assert loss["privacy"]["epsilon"] == pytest.approx(0.5, abs=0.01)
    assert loss["epsilon_audit"]["method"] == "two-split"
    assert loss["epsilon_audit"]["n_counted"] == [20, 20]
    codes = {f["code"] for f in loss["flags"]}
    assert "audit_underpowered" in codes  # 20 of each counted: below the stated 30
    audit = canaries["epsilon_audit"]
    assert audit["method"] == "one-run" and audit["canaries"] == 400 and audit["guesses"] == 80
    assert audit["epsilon_lb"] > canaries["privacy"]["epsilon"]
    assert {f["code"] for f in canaries["flags"]} == {"audit_exceeds_accountant"}
    assert canaries["epsilon_audit"]["certified"] is True
    # the one-run model trained on another number of examples than the members: its own claim
    assert canaries["privacy"]["sample_rate"] != loss["privacy"]["sample_rate"]
    for row in (loss, canaries):
        assert row["privacy"]["steps"] == round(60 / row["privacy"]["sample_rate"])
    html = render_report(run)
    assert "claimed ε" in html and "audit_exceeds_accountant" in html


# ---------------------------------------------------------------------- stronger attacks
def test_shifted_views_are_zero_filled_translations():
    from robustbench_cl.privacy.membership import shifted_views

    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = shifted_views(x, 1)
    assert len(views) == 5 and torch.equal(views[0], x)
    down = views[1]  # rolled by +1 along H, the first row zeroed
    assert torch.equal(down[0, 0, 1:], x[0, 0, :-1]) and (down[0, 0, 0] == 0).all()
    assert len(shifted_views(x, 2)) == 9
    assert len(shifted_views(torch.randn(3, 24), 1)) == 1  # not an image: the identity only
    with pytest.raises(UserError, match="shifts"):
        from robustbench_cl.privacy.membership import make_membership_attack

        make_membership_attack("lira", shifts=-1)


def _overfit_images(tmp_path, monkeypatch):
    """A conv model memorising random labels of random 1x6x6 images, and 8 references."""
    from robustbench_cl.privacy.membership import (
        ReferenceRecipe,
        reference_models,
        reference_signals,
    )

    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path))

    def architecture() -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(288, 4)
        )

    def fit(x, y, seed):  # noqa: ANN001, ANN202
        torch.manual_seed(seed)
        model = architecture()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return model.eval()

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(160, 1, 6, 6, generator=generator)
    y = torch.randint(0, 4, (160,), generator=generator)
    members = torch.arange(160) < 80
    target = fit(x[members], y[members], 99)
    recipe = ReferenceRecipe({"test": "conv-random-labels"}, architecture, fit)
    models, inside, _ = reference_models(recipe, x, y, k=8, seed=0)
    return x, y, members, target, models, inside, reference_signals


def test_lira_with_query_shifts_scores_each_view(tmp_path, monkeypatch):
    from robustbench_cl.privacy.membership import make_membership_attack
    from robustbench_cl.privacy.metrics import membership_metrics

    x, y, members, target, models, inside, signals = _overfit_images(tmp_path, monkeypatch)
    audited = torch.arange(len(y))
    attack = make_membership_attack("lira", shifts=1)
    references = signals(models, inside, audited, x, y, views=attack.views)
    assert references.phi.shape == (8, 5, len(y))
    scores = attack.score(target, x, y, references)
    assert membership_metrics(scores, members, bootstrap=20)["auc"] > 0.8
    # one view is the plain attack
    plain = make_membership_attack("lira").score(
        target, x, y, signals(models, inside, audited, x, y)
    )
    with torch.no_grad():
        observed = scaled_confidence(target(x), y)
    single = make_membership_attack("lira")._score_view(observed, references.phi[:, 0], references)
    torch.testing.assert_close(plain, single)


def test_rmia_tunes_a_offline_on_a_reference_model(tmp_path, monkeypatch):
    from robustbench_cl.privacy.membership import make_membership_attack

    x, y, members, target, models, inside, signals = _overfit_images(tmp_path, monkeypatch)
    references = signals(models, inside, torch.arange(len(y)), x, y)
    tuned = make_membership_attack("rmia", a=None)
    tuned.score(target, x, y, references)
    # the brute-force argmax: reference model 0 as the target, the others as its references
    from sklearn.metrics import roc_auc_score

    aucs = []
    for a in [i / 10 for i in range(11)]:
        pseudo = tuned._scores(
            references.prob[0], references.prob[1:], references.inside[1:], None, None, None, a
        )
        aucs.append(roc_auc_score(references.inside[0].numpy(), pseudo.numpy()))
    assert tuned.a_tuned == pytest.approx(int(np.argmax(aucs)) / 10)
    assert "AUC" in tuned.settings()["a_tuning"]
    assert tuned.settings()["a_tuned"] == tuned.a_tuned
    fixed = make_membership_attack("rmia", a=tuned.a_tuned)
    torch.testing.assert_close(
        tuned.score(target, x, y, references), fixed.score(target, x, y, references)
    )
    with pytest.raises(UserError, match="a"):
        make_membership_attack("rmia", a=1.5)


# ---------------------------------------------------------------------- review additions
def _sgd_step_gradient(model, before, lr):  # noqa: ANN001, ANN202
    """The gradient of one SGD step (momentum's first step is the gradient itself)."""
    return [(b - a.detach()) / lr for b, a in zip(before, model.parameters())]


def test_poisson_batches_are_clipped_summed_and_divided_by_the_expected_size():
    from robustbench_cl.utils import seeded

    x, y = torch.randn(40, 1, 4, 4), torch.randint(0, 3, (40,))
    model = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    dp_sgd_train(
        model,
        x,
        y,
        noise_multiplier=0.0,
        max_grad_norm=0.05,
        sample_rate=0.5,
        steps=1,
        lr=1.0,
        optimizer="sgd",
        seed=3,
    )
    with seeded(3) as generator:  # the step's Poisson draw, replayed
        chosen = torch.nonzero(torch.rand(40, generator=generator) < 0.5)[:, 0]
    assert 0 < len(chosen) < 40
    reference = _tiny()
    expected = [torch.zeros_like(p) for p in reference.parameters()]
    for i in chosen.tolist():
        reference.zero_grad()
        nn.functional.cross_entropy(reference(x[i : i + 1]), y[i : i + 1]).backward()
        grads = [p.grad.clone() for p in reference.parameters()]
        norm = torch.cat([g.flatten() for g in grads]).norm()
        for total, g in zip(expected, grads):
            total += g * min(1.0, 0.05 / (float(norm) + 1e-6))
    for got, want in zip(_sgd_step_gradient(model, before, 1.0), expected):
        torch.testing.assert_close(got, want / (0.5 * 40), atol=1e-6, rtol=1e-4)


def test_the_noise_has_the_accounted_scale():
    """An empty batch: the step is noise alone, of std sigma * C / (q * N)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 32))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(100, 1, 4, 4), torch.randint(0, 32, (100,))
    q = 1e-9  # (no example drawn)
    dp_sgd_train(
        model,
        x,
        y,
        noise_multiplier=2.0,
        max_grad_norm=0.5,
        sample_rate=q,
        steps=1,
        lr=1.0,
        optimizer="sgd",
    )
    noise = torch.cat([g.flatten() for g in _sgd_step_gradient(model, before, 1.0)])
    assert float(noise.std()) == pytest.approx(2.0 * 0.5 / (q * 100), rel=0.05)
    assert abs(float(noise.mean())) < 0.05 * float(noise.std())


def test_the_one_run_training_set_holds_each_canary_only_when_drawn_in():
    from robustbench_cl.privacy.membership import one_run_training_set

    train_x = torch.arange(6.0)[:, None]
    train_y = torch.arange(6)
    population_x = torch.cat([train_x, torch.tensor([[10.0], [11.0]])])
    index = torch.tensor([1, 4, 7])  # two training examples and one outsider
    labels = torch.tensor([9, 8, 7])  # flipped
    included = torch.tensor([True, False, True])
    x, y = one_run_training_set(train_x, train_y, population_x, index, labels, included)
    assert x.flatten().tolist() == [0.0, 2.0, 3.0, 5.0, 1.0, 11.0]
    assert y.tolist() == [0, 2, 3, 5, 9, 7]  # example 4 is out entirely, 1 in with label 9


def test_the_one_run_bound_holds_for_an_epsilon_dp_guesser():
    """Randomized response at epsilon 1 guesses each canary right with e/(1+e): the bound must
    stay at or below 1 in at least 95% of audits (Steinke et al.'s guarantee)."""
    rng = np.random.default_rng(0)
    q = math.exp(1.0) / (1 + math.exp(1.0))
    bounds = [one_run_epsilon(1000, 100, int(rng.binomial(100, q)), 0.0) for _ in range(300)]
    assert np.mean(np.array(bounds) <= 1.0) >= 0.95


def test_dp_reference_models_have_their_own_seeds(monkeypatch):
    from robustbench_cl.engine.config import DefenseConfig, ModelConfig
    from robustbench_cl.tasks.membership_plan import SEED_OFFSET, reference_recipe

    seeds = []

    def build(self, model, spec, data):  # noqa: ANN001, ANN202
        seeds.append(self.seed)
        return model

    monkeypatch.setattr(DPSGD, "build", build)
    recipe = reference_recipe(
        ModelConfig(spec="builtin:digits-cnn"), DefenseConfig(defense="dp-sgd")
    )
    assert recipe.key["per_model_seed"] == SEED_OFFSET
    x, y = torch.rand(8, 1, 16, 16), torch.arange(8) % 2
    recipe.train(x, y, 0)
    recipe.train(x, y, 5)
    assert seeds == [SEED_OFFSET, SEED_OFFSET + 5]  # never the target's seed (0)


def test_dp_sgd_starts_from_nothing_learned():
    from robustbench_cl.models.wrappers import Frozen

    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.arange(16.0).reshape(1, 1, 4, 4))
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.head(x + self.token)

    trained = WithToken()
    trained.temperature = nn.Parameter(torch.tensor(3.7))  # a scalar no reset reaches
    trained.gain = nn.Parameter(torch.full((4,), 0.42))  # constant-valued
    fresh = make_defense("dp-sgd").fresh_copy(Frozen(trained))
    assert not torch.equal(fresh.token, trained.token)
    assert not torch.equal(fresh.head[1].weight, trained.head[1].weight)
    assert float(fresh.temperature.detach()) != 3.7
    assert not torch.equal(fresh.gain, trained.gain)


def test_a_two_split_bound_above_the_claim_is_flagged_as_an_estimate():
    from robustbench_cl.tasks.membership.results import membership_flags

    entry = {
        "auc_ci95": [0.6, 0.7],
        "privacy": {"epsilon": 0.5, "delta": 1e-5},
        "epsilon_audit": {
            "method": "two-split",
            "certified": False,
            "epsilon_lb": 1.2,
            "confidence": 0.95,
            "max_certifiable": 3.2,
            "n_counted": [90, 90],
        },
    }
    (flagged,) = membership_flags(entry)
    assert flagged["code"] == "audit_exceeds_accountant"
    assert "confirm it with a one-run audit" in flagged["message"]
    entry["epsilon_audit"].update(method="one-run", certified=True, canaries=500, guesses=100)
    (flagged,) = membership_flags(entry)
    assert "does not do what its accounting assumes" in flagged["message"]


def test_the_epsilon_interval_brackets_the_point_value():
    rng = np.random.default_rng(1)
    members = np.arange(600) < 300
    scores = members * 1.5 + rng.normal(size=600)
    audit = epsilon_lower_bound(scores, members)
    low, high = audit["epsilon_interval"]
    assert low == audit["epsilon_lb"] and high is not None
    assert low <= audit["epsilon_point"] <= high
    assert epsilon_lower_bound(members + 0.0, members)["epsilon_interval"][1] is None  # no error


def test_art_blackbox_scores_are_reproducible():
    """ART's random forest draws from NumPy's global stream: seeded for the fit, put back."""
    from robustbench_cl.privacy.membership import make_membership_attack

    model = rbcl.load_model("builtin:digits-cnn")
    x, y = rbcl.load_dataset("digits", split="test").tensors(n=80)
    members = torch.arange(80) < 40
    attack = make_membership_attack("art-blackbox")
    np.random.seed(123)
    first = attack.score(model, x, y, members=members)
    after = np.random.random()
    np.random.seed(123)
    assert torch.equal(first, attack.score(model, x, y, members=members))
    assert np.random.random() == after  # the caller's stream is untouched
