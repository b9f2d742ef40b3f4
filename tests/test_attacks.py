"""Attack invariants on tiny models (cleverhans style): ball, bounds, targets, monotonicity,
determinism, cost counting and the standard AutoAttack settings."""

from __future__ import annotations

import pytest
import torch

import robustbench_cl as rbcl
from robustbench_cl.attacks.autoattack import AutoAttack
from robustbench_cl.errors import UserError
from robustbench_cl.threat import ThreatModel


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_outputs_stay_in_ball_and_bounds(tiny_model, tiny_batch, name, norm, eps):
    x, y = tiny_batch
    threat = ThreatModel(norm=norm, eps=eps)
    result = rbcl.make_attack(name)(tiny_model, x, y, threat)
    threat.check(result.adv, x)
    assert result.adv.shape == x.shape
    assert result.success.dtype == torch.bool


def test_pgd_l1_stays_in_ball(tiny_model, tiny_batch):
    x, y = tiny_batch
    threat = ThreatModel(norm="l1", eps=1.0)
    result = rbcl.make_attack("pgd", steps=20)(tiny_model, x, y, threat)
    threat.check(result.adv, x)
    assert result.success.any()


def test_pgd_fools_the_digits_model_and_larger_eps_never_helps(digits_model, digits_batch):
    x, y = digits_batch
    accuracies = []
    for eps in (0.0, 0.05, 0.1, 0.3):
        result = rbcl.make_attack("pgd", steps=20, seed=0)(digits_model, x, y, ThreatModel(eps=eps))
        accuracies.append(1 - result.success.float().mean().item())
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[-1] == 0.0
    assert accuracies[0] > 0.9


def test_targeted_pgd_reaches_its_targets(digits_model, digits_batch):
    x, y = digits_batch
    targets = (y + 3) % 10
    threat = ThreatModel(eps=0.3, targeted=True)
    result = rbcl.make_attack("pgd", steps=40)(digits_model, x, targets, threat)
    reached = digits_model(result.adv).argmax(1) == targets
    assert torch.equal(reached, result.success)
    assert result.success.float().mean() > 0.9


def test_pgd_is_deterministic_given_a_seed(digits_model, digits_batch):
    x, y = digits_batch
    threat = ThreatModel(eps=0.1)
    first = rbcl.make_attack("pgd", seed=7)(digits_model, x, y, threat)
    second = rbcl.make_attack("pgd", seed=7)(digits_model, x, y, threat)
    assert torch.equal(first.adv, second.adv)


def test_keep_best_and_restarts_never_weaken_pgd(digits_model, digits_batch):
    x, y = digits_batch
    threat = ThreatModel(eps=0.07)
    last = rbcl.make_attack("pgd", steps=10, random_start=False, keep_best=False)(
        digits_model, x, y, threat
    )
    best = rbcl.make_attack("pgd", steps=10, random_start=False, keep_best=True)(
        digits_model, x, y, threat
    )
    assert (best.success | ~last.success).all()
    assert best.success.sum() >= last.success.sum()


def test_restarts_never_lose_a_success(digits_model, digits_batch):
    """Every sample broken by restart 1 stays broken when a second restart is added."""
    x, y = digits_batch
    threat = ThreatModel(eps=0.05)
    for keep_best in (True, False):
        one = rbcl.make_attack("pgd", steps=2, restarts=1, seed=3, keep_best=keep_best)
        two = rbcl.make_attack("pgd", steps=2, restarts=2, seed=3, keep_best=keep_best)
        first, second = one(digits_model, x, y, threat), two(digits_model, x, y, threat)
        assert (second.success | ~first.success).all()


def test_l0_projection_keeps_exactly_k_coordinates_on_ties():
    threat = ThreatModel(norm="l0", eps=2, bounds=None)
    projected = threat.project(torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5]]))
    assert int((projected != 0).sum()) == 2


def test_train_mode_models_are_attacked_in_eval_mode_and_restored(tiny_batch):
    from tests.conftest import TinyNet

    model = torch.nn.Sequential(TinyNet(), torch.nn.Dropout(0.5))
    model.train()
    x, y = tiny_batch
    first = rbcl.make_attack("pgd", steps=3, seed=0)(model, x, y, ThreatModel(eps=0.1))
    second = rbcl.make_attack("pgd", steps=3, seed=0)(model, x, y, ThreatModel(eps=0.1))
    assert torch.equal(first.adv, second.adv)  # dropout was off during the attack
    assert model.training


def test_empty_batches_are_fine(tiny_model):
    result = rbcl.make_attack("pgd")(
        tiny_model, torch.rand(0, 1, 4, 4), torch.zeros(0, dtype=torch.long), ThreatModel(eps=0.1)
    )
    assert result.adv.shape == (0, 1, 4, 4) and result.success.numel() == 0


def test_costs_are_counted_per_sample(tiny_model, tiny_batch):
    x, y = tiny_batch
    n = len(y)
    plain = rbcl.make_attack("pgd", steps=5, keep_best=False)(
        tiny_model, x, y, ThreatModel(eps=0.1)
    )
    assert plain.cost.backward == 5 * n
    assert plain.cost.forward == 5 * n + n  # the steps, then one pass to score the output
    result = rbcl.make_attack("pgd", steps=5, restarts=2)(tiny_model, x, y, ThreatModel(eps=0.1))
    assert result.cost.backward == 5 * 2 * n
    # the steps and one pass to score the first restart's end point; the final scoring pass
    # skips the samples whose returned iterate was already seen to succeed
    rescored = result.cost.forward - (5 * 2 * n + n)
    assert result.success.any() and 0 <= rescored < n
    assert result.cost.queries == result.cost.forward


def test_skipping_rescoring_never_changes_success(digits_model, digits_batch):
    """Success taken from the step loop equals success from scoring every returned input."""
    x, y = digits_batch
    result = rbcl.make_attack("pgd", steps=10, restarts=2, seed=1)(
        digits_model, x, y, ThreatModel(eps=0.08)
    )
    with torch.no_grad():
        rescored = digits_model(result.adv).argmax(1) != y
    assert torch.equal(result.success, rescored)


def test_gradients_are_taken_wrt_inputs_only(tiny_batch):
    from tests.conftest import TinyNet

    model = TinyNet()  # parameters require grad, as a user's model would
    x, y = tiny_batch
    rbcl.make_attack("pgd", steps=3)(model, x, y, ThreatModel(eps=0.1))
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_unknown_attack_and_parameter_errors_name_the_fix():
    with pytest.raises(UserError, match="did you mean 'pgd'"):
        rbcl.make_attack("pgdd")
    with pytest.raises(UserError, match="allowed: steps"):
        rbcl.make_attack("pgd", stepz=3)


def test_bad_inputs_get_one_line_errors(tiny_model, tiny_batch):
    x, y = tiny_batch
    attack = rbcl.make_attack("fgsm")
    threat = ThreatModel(eps=0.1)
    with pytest.raises(UserError, match="NaN or Inf"):
        attack(tiny_model, x * float("nan"), y, threat)
    with pytest.raises(UserError, match="does not fit the model"):
        attack(tiny_model, torch.rand(4, 1, 5, 5), y[:4], threat)
    with pytest.raises(UserError, match="does not match"):
        attack(tiny_model, x, y[:3], threat)
    with pytest.raises(UserError, match="outside bounds"):
        attack(tiny_model, x * 3, y, threat)
    with pytest.raises(UserError, match="supports norms"):
        attack(tiny_model, x, y, ThreatModel(norm="l1", eps=1.0))
    with pytest.raises(UserError, match="integer class indices"):
        attack(tiny_model, x, y.float(), threat)
    with pytest.raises(UserError, match="labels must lie in"):
        attack(tiny_model, x, y + 10, threat)
    with pytest.raises(UserError, match="larger than the bounds allow"):
        attack(tiny_model, x, y, ThreatModel(norm="l2", eps=100.0))


@pytest.mark.parametrize(
    "name, params, field",
    [
        ("pgd", {"steps": "10"}, "steps"),
        ("pgd", {"steps": 2.5}, "steps"),
        ("pgd", {"restarts": 0}, "restarts"),
        ("autoattack", {"steps": 0}, "steps"),
        ("torchattacks:PGD", {"stepz": 3}, "torchattacks:PGD.stepz"),
    ],
)
def test_bad_parameter_values_are_refused_at_construction(name, params, field):
    with pytest.raises(UserError) as error:
        rbcl.make_attack(name, **params)
    assert error.value.field == field


def test_autoattack_uses_the_standard_settings(tiny_model):
    attack = AutoAttack()
    components = dict(attack.components(tiny_model, ThreatModel(eps=0.1), n_classes=4))
    assert list(components) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert components["apgd-ce"].steps == 100 and components["apgd-ce"].n_restarts == 1
    assert components["apgd-t"].steps == 100 and components["apgd-t"].n_target_classes == 3
    assert components["fab-t"].steps == 100 and components["fab-t"].n_target_classes == 3
    assert components["fab-t"].multi_targeted
    assert components["square"].n_queries == 5000
    ten = dict(attack.components(tiny_model, ThreatModel(eps=0.1), n_classes=100))
    assert ten["apgd-t"].n_target_classes == 9
    described = attack.describe_components(10)
    assert described["apgd-t"]["target_classes"] == 9 and described["square"]["queries"] == 5000


def test_autoattack_cascade_breaks_what_pgd_breaks(digits_model, digits_batch):
    x, y = digits_batch
    x, y = x[:16], y[:16]
    threat = ThreatModel(eps=0.3)  # large: APGD-CE alone breaks everything, Square never runs
    result = AutoAttack()(digits_model, x, y, threat)
    threat.check(result.adv, x)
    assert result.success.all()
    assert result.cost.forward < 16 * 5000  # the cascade stopped before Square


def test_external_torchattacks_and_art_follow_our_protocol(digits_model, digits_batch):
    x, y = digits_batch
    threat = ThreatModel(eps=0.1)
    for spec, params in (
        ("torchattacks:PGD", {"steps": 5, "alpha": 0.025, "random_start": False}),
        ("art:ProjectedGradientDescentPyTorch", {"eps_step": 0.025, "max_iter": 5}),
    ):
        result = rbcl.make_attack(spec, **params)(digits_model, x, y, threat)
        threat.check(result.adv, x)
        assert result.cost.backward > 0
        assert result.success.float().mean() > 0.3
    with pytest.raises(UserError, match="torchattacks has no attack"):
        rbcl.make_attack("torchattacks:PGDX")


def test_query_only_external_attacks_are_marked_gradient_free():
    from robustbench_cl.attacks.external import ARTAttack, TorchattacksAttack

    assert TorchattacksAttack("Square").uses_gradients is False
    assert TorchattacksAttack("PGD").uses_gradients is True
    assert ARTAttack("HopSkipJump").uses_gradients is False


class ReductionNet(torch.nn.Module):
    """Logits from the pixel sum alone: autograd returns the input gradient as an expanded
    tensor (one memory location for every pixel of a sample), which must never be written to."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor([[-1.0, 0.0, 1.0, 2.0]]))
        self.register_buffer("shift", torch.tensor([[4.0, 2.0, 0.0, -5.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(1, keepdim=True) * self.scale + self.shift


def test_the_reduction_model_gives_an_expanded_gradient():
    x = torch.rand(3, 1, 4, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(ReductionNet()(x).sum(), x)
    assert 0 in grad.stride()  # the case the attacks below must survive
    with pytest.raises(RuntimeError, match="single memory location"):
        grad.sign_()


@pytest.mark.parametrize(
    "name, norm, eps",
    [("fgsm", "linf", 0.1), ("pgd", "linf", 0.1), ("pgd", "l2", 0.5), ("pgd", "l1", 1.0)],
)
def test_attacks_never_write_into_an_expanded_gradient(name, norm, eps):
    from robustbench_cl.models import Frozen

    model = Frozen(ReductionNet())
    x = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    threat = ThreatModel(norm=norm, eps=eps)
    result = rbcl.make_attack(name)(model, x, y, threat)
    threat.check(result.adv, x)
    assert result.success.shape == (16,)


def test_sanity_probes_survive_an_expanded_gradient():
    from robustbench_cl.models import Frozen
    from robustbench_cl.tasks.classification import sanity

    model = Frozen(ReductionNet())
    x = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    health = sanity.gradient_health(model, x, y)
    assert health["nan_fraction"] == 0.0
    assert 0.0 <= sanity.full_range_accuracy(model, x, y, (0.0, 1.0)) <= 1.0
