"""Parity of our PGD with torchattacks (PGD, PGDL2) and ART (ProjectedGradientDescentPyTorch).

Random start off, same model, same data: the same adversarial examples (max abs difference
<= 1e-5) and the same robust accuracy. Our ``keep_best`` is off here because both libraries
return the last iterate.

One documented difference: for l2, torchattacks projects onto the ball and then clips to the
bounds (as we do), while ART clips and then projects. The two orders agree whenever clipping
is inactive, so the l2 comparison with ART uses inputs in the interior of [0, 1].
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchattacks
from art.attacks.evasion import ProjectedGradientDescentPyTorch
from art.estimators.classification import PyTorchClassifier
from torch import nn

import robustbench_cl as rbcl
from robustbench_cl.threat import ThreatModel

STEPS = 10


def _ours(model, x, y, norm, eps, step_size):
    attack = rbcl.make_attack(
        "pgd", steps=STEPS, step_size=step_size, random_start=False, keep_best=False
    )
    return attack(model, x, y, ThreatModel(norm=norm, eps=eps))


def _art(model, x, y, norm, eps, step_size):
    classifier = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    attack = ProjectedGradientDescentPyTorch(
        classifier,
        norm=np.inf if norm == "linf" else 2,
        eps=eps,
        eps_step=step_size,
        max_iter=STEPS,
        num_random_init=0,
        batch_size=len(y),
        verbose=False,
    )
    return torch.from_numpy(attack.generate(x=x.numpy(), y=y.numpy()))


def _robust_accuracy(model, adv, y):
    with torch.no_grad():
        return (model(adv).argmax(1) == y).float().mean().item()


@pytest.mark.parametrize("norm, eps, step_size", [("linf", 0.1, 0.025), ("l2", 1.0, 0.25)])
def test_pgd_matches_torchattacks(digits_model, digits_batch, norm, eps, step_size):
    x, y = digits_batch
    ours = _ours(digits_model, x, y, norm, eps, step_size)
    if norm == "linf":
        reference = torchattacks.PGD(
            digits_model, eps=eps, alpha=step_size, steps=STEPS, random_start=False
        )
    else:
        # torchattacks adds its guard 1e-10 to the norm of the batch-*mean* loss gradient; we
        # use the per-sample (summed) loss, so that shards and cascades do not change results.
        # Scaling their guard by 1/B makes the two the same computation.
        reference = torchattacks.PGDL2(
            digits_model,
            eps=eps,
            alpha=step_size,
            steps=STEPS,
            random_start=False,
            eps_for_division=1e-10 / len(y),
        )
    theirs = reference(x, y)
    assert (ours.adv - theirs).abs().max().item() <= 1e-5
    assert _robust_accuracy(digits_model, ours.adv, y) == _robust_accuracy(digits_model, theirs, y)


def test_pgd_linf_matches_art(digits_model, digits_batch):
    x, y = digits_batch
    ours = _ours(digits_model, x, y, "linf", 0.1, 0.025)
    theirs = _art(digits_model, x, y, "linf", 0.1, 0.025)
    assert (ours.adv - theirs).abs().max().item() <= 1e-5
    assert _robust_accuracy(digits_model, ours.adv, y) == _robust_accuracy(digits_model, theirs, y)


def test_pgd_l2_matches_art_in_the_interior(digits_model, digits_batch):
    x, y = digits_batch
    x = 0.3 + 0.4 * x  # keep every pixel >= 0.3 from the bounds: the l2 steps never clip
    ours = _ours(digits_model, x, y, "l2", 0.25, 0.05)
    theirs = _art(digits_model, x, y, "l2", 0.25, 0.05)
    assert (ours.adv - theirs).abs().max().item() <= 1e-5
    assert _robust_accuracy(digits_model, ours.adv, y) == _robust_accuracy(digits_model, theirs, y)
