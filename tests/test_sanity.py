"""Each sanity flag fires on a model built to trigger it, and stays quiet on a healthy one."""

from __future__ import annotations

import torch
from torch import nn

import robustbench_cl as rbcl
from robustbench_cl.models import Frozen, Preprocessed
from robustbench_cl.tasks.classification import sanity
from robustbench_cl.threat import ThreatModel


class Quantized(nn.Module):
    """Input quantisation in front of a model: gradients are zero almost everywhere."""

    def forward(self, x):
        return torch.round(x * 2) / 2


class Noisy(nn.Module):
    is_randomized = True

    def forward(self, x):
        return (x + 0.3 * torch.randn_like(x)).clamp(0, 1)


def test_zero_gradients_and_full_range_flags_catch_gradient_masking(digits_model, digits_batch):
    x, y = digits_batch
    masked = Frozen(Preprocessed(Quantized(), digits_model, gradient_mode="end-to-end"))
    health = sanity.gradient_health(masked, x, y)
    assert health["zero_fraction"] == 1.0
    flags = sanity.pair_flags({"gradients": health}, n_classes=10)
    assert [f["code"] for f in flags] == ["zero_gradients"]
    keep = masked(x).argmax(1) == y
    accuracy = sanity.full_range_accuracy(masked, x[keep], y[keep], (0.0, 1.0))
    assert [f["code"] for f in sanity.full_range_flag(accuracy, 10)] == ["above_chance_full_range"]


def test_healthy_model_raises_no_pair_flags(digits_model, digits_batch):
    x, y = digits_batch
    probes = {
        "gradients": sanity.gradient_health(digits_model, x, y),
        "randomization": sanity.randomization(digits_model, x),
    }
    assert sanity.pair_flags(probes, 10) == []
    keep = digits_model(x).argmax(1) == y
    assert (
        sanity.full_range_flag(
            sanity.full_range_accuracy(digits_model, x[keep], y[keep], (0.0, 1.0)), 10
        )
        == []
    )


def test_randomized_model_without_eot_is_flagged(digits_model, digits_batch):
    x, _ = digits_batch
    noisy = Preprocessed(Noisy(), digits_model, is_randomized=True)
    probe = sanity.randomization(noisy, x)
    assert probe["declared"] and probe["observed"] and not probe["eot"]
    assert [f["code"] for f in sanity.pair_flags({"randomization": probe}, 10)] == [
        "randomized_without_eot"
    ]
    with_eot = Preprocessed(
        Noisy(), digits_model, gradient_mode="eot", is_randomized=True, eot_samples=4
    )
    assert sanity.pair_flags({"randomization": sanity.randomization(with_eot, x)}, 10) == []


def test_an_unconverged_attack_is_flagged(digits_model, digits_batch):
    x, y = digits_batch
    threat = ThreatModel(eps=0.12)
    torch.manual_seed(0)
    weak = rbcl.make_attack("pgd", steps=3, step_size=0.01, random_start=False)
    result = weak(digits_model, x, y, threat)
    survivors = ~result.success
    probe = sanity.convergence_probe(weak, digits_model, x[survivors], y[survivors], threat)
    flags, probe = sanity.convergence_verdict(probe, len(y), int(survivors.sum()))
    assert [f["code"] for f in flags] == ["not_converged"]
    assert probe["newly_broken"] > 0


def test_eps_curve_flags_a_rise():
    flags = sanity.eps_curve_flags([(0.1, 0.5), (0.05, 0.8), (0.2, 0.6)], n=100)
    assert list(flags) == [0.2]
    assert sanity.eps_curve_flags([(0.1, 0.5), (0.2, 0.3)], n=100) == {}


def _records(white_box_outcomes, second_outcomes, second_uses_gradients, second_access):  # noqa: ANN001, ANN202
    n = len(white_box_outcomes)
    model = {"spec": "builtin:x", "name": None}
    defense = {"defense": "none", "name": None, "params": {}}
    clean = {
        "type": "clean",
        "id": "p",
        "model": model,
        "defense": defense,
        "n": n,
        "correct": [1] * n,
        "clean_accuracy": 1.0,
        "clean_ci95": [0.9, 1.0],
        "probes": {},
        "wall_time": 0.0,
    }

    def cell(cid, group, name, outcomes, gradients, access):  # noqa: ANN001, ANN202
        threat = {
            "norm": "linf",
            "eps": 0.1,
            "space": "input",
            "bounds": [0.0, 1.0],
            "targeted": False,
            "universal": False,
            "access": access,
            "budget": {},
            "eps_relative": False,
        }
        robust = sum(1 for o in outcomes if o == 1)
        return {
            "type": "cell",
            "id": cid,
            "pair_id": "p",
            "group_id": group,
            "model": model,
            "defense": defense,
            "attack": {"attack": name, "name": name, "params": {}, "settings": {}},
            "threat": threat,
            "outcomes": outcomes,
            "attacked": sum(1 for o in outcomes if o != -1),
            "broken": sum(1 for o in outcomes if o == 0),
            "robust_count": robust,
            "clean_accuracy": 1.0,
            "robust_accuracy": robust / n,
            "robust_ci95": [0.0, 1.0],
            "attack_success_rate": 1 - robust / n,
            "cost": {},
            "n": n,
            "flags": [],
            "sanity_probe": {},
            "example_indices": [],
            "examples": None,
            "uses_gradients": gradients,
            "cascade": True,
            "wall_time": 0.0,
        }

    second_group = "g1" if second_access == "white-box" else "g2"
    return [
        clean,
        cell("c1", "g1", "pgd", white_box_outcomes, True, "white-box"),
        cell("c2", second_group, "second", second_outcomes, second_uses_gradients, second_access),
    ]


def _flag_codes(records):  # noqa: ANN001, ANN202
    from pathlib import Path

    from robustbench_cl.engine.summary import RunSummary
    from robustbench_cl.tasks.classification.summary import pair_summaries

    (pair,) = pair_summaries(RunSummary(Path("."), {}, records))
    return {cell.id: [f.code for f in cell.flags] for cell in pair.cells}


def test_a_gradient_free_attack_that_wins_in_the_cascade_is_flagged():
    white_box = [0] * 20 + [1] * 80
    # Square (gradient-free) runs on the 80 survivors and breaks 10 of them
    square = [-1] * 20 + [0] * 10 + [1] * 70
    codes = _flag_codes(_records(white_box, square, False, "white-box"))
    assert "black_box_beats_white_box" in codes["c2"]
    quiet = [-1] * 20 + [0] * 1 + [1] * 79  # within max(1, 1% of n): not flagged
    assert (
        "black_box_beats_white_box"
        not in _flag_codes(_records(white_box, quiet, False, "white-box"))["c2"]
    )


def test_a_transfer_attack_that_beats_white_box_is_flagged():
    white_box = [0] * 20 + [1] * 80
    transfer = [0] * 20 + [0] * 15 + [1] * 65  # breaks 15 samples PGD left robust
    codes = _flag_codes(_records(white_box, transfer, True, "transfer"))
    assert "transfer_beats_white_box" in codes["c2"]
    weaker = [0] * 20 + [1] * 80  # breaks only what PGD broke too
    assert (
        "transfer_beats_white_box"
        not in _flag_codes(_records(white_box, weaker, True, "transfer"))["c2"]
    )
