"""PGD adversarial training (Madry et al., 2018, https://arxiv.org/abs/1706.06083).

Minimise the cross-entropy on PGD adversarial examples crafted against the current weights:
min_theta E max_{||delta|| <= eps} CE(f(x + delta), y). The inner PGD uses a random start.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from robustbench_cl.attacks.base import budget_param, require_int, require_number
from robustbench_cl.attacks.pgd import PGD
from robustbench_cl.data.base import TensorData
from robustbench_cl.defenses.base import Defense, trainable_copy
from robustbench_cl.models.artifacts import (
    save_artifact,
)
from robustbench_cl.models.training import accuracy, train_classifier
from robustbench_cl.models.wrappers import Frozen
from robustbench_cl.registry import register_defense
from robustbench_cl.threat import ThreatModel

logger = logging.getLogger(__name__)


@register_defense("pgd-at")
class PGDAdversarialTraining(Defense):
    """Madry PGD adversarial training (linf or l2), trained once and cached.

    Args:
        norm: the training threat's norm: `linf` or `l2`.
        eps: the training threat's radius.
        steps: PGD iterations per training example.
        step_size: the PGD step; `None` uses `2.5 * eps / steps`.
        epochs: training epochs.
        lr: Adam's learning rate.
        batch_size: samples per step.
        from_scratch: train a fresh copy of the architecture (else fine-tune the given weights).
        seed: the training seed.
    """

    name = "pgd-at"
    kind = "training"

    def __init__(
        self,
        norm: str = "linf",
        eps: float = 0.1,
        steps: int = 7,
        step_size: float | None = None,
        epochs: int = 30,
        lr: float = 2e-3,
        batch_size: int = 64,
        from_scratch: bool = True,
        seed: int = 0,
    ) -> None:
        eps = budget_param("eps", eps)
        step_size = budget_param("step_size", step_size)
        for field, value in (("steps", steps), ("epochs", epochs), ("batch_size", batch_size)):
            require_int(field, value)
        require_number("lr", lr)
        if step_size is not None:
            require_number("step_size", step_size)
        self.norm = norm
        self.eps = eps
        self.steps = steps
        self.step_size = step_size
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.from_scratch = from_scratch
        self.seed = seed
        self._threat = ThreatModel(norm=norm, eps=eps)  # validates norm and eps early

    def build(self, model: Frozen, model_spec: str, data: TensorData) -> nn.Module:
        network = trainable_copy(model, self.from_scratch, self.seed)
        return self.cached_or_trained(network, model_spec, data)

    def _train(self, network: nn.Module, model_spec: str, data: TensorData, path: Path) -> None:
        logger.info(
            "training pgd-at (%s eps=%g) on %s; cached at %s", self.norm, self.eps, model_spec, path
        )
        inner = PGD(steps=self.steps, step_size=self.step_size, random_start=True, keep_best=False)

        def perturb(current, xb, yb):  # noqa: ANN001, ANN202
            return inner.perturb(current, xb, yb, self._threat).adv

        train_classifier(
            network,
            data.x,
            data.y,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=self.seed,
            perturb=perturb,
        )
        save_artifact(
            path,
            network,
            {
                "defense": self.name,
                "settings": self.settings(),
                "model": model_spec,
                "train_accuracy": accuracy(network, data.x, data.y),
            },
        )
