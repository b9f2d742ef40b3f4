"""The *standard* AutoAttack ensemble (Croce & Hein, 2020, https://arxiv.org/abs/2003.01690).

APGD-CE, then APGD-T, then FAB-T, then Square, each run only on the samples that are still
robust (the cascade). The settings are the paper's standard version, not torchattacks' preset
(which runs 10 iterations): 100 iterations and 1 restart for APGD-CE, APGD-T and FAB-T,
``min(9, n_classes - 1)`` target classes for APGD-T and FAB-T, and 5,000 queries for Square.
The four component attacks are torchattacks' implementations; this class fixes their settings
and runs the cascade.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import torch
from torch import nn

from robustbench_cl.attacks.base import (
    Attack,
    Cost,
    CountingModel,
    Perturbation,
    report_step,
    require_int,
)
from robustbench_cl.attacks.journal import ComponentJournal
from robustbench_cl.errors import UserError
from robustbench_cl.registry import register_attack
from robustbench_cl.threat import ThreatModel

logger = logging.getLogger(__name__)

_TORCHATTACKS_NORM = {"linf": "Linf", "l2": "L2"}


@register_attack("autoattack")
class AutoAttack(Attack):
    """Standard AutoAttack: APGD-CE, APGD-T, FAB-T and Square (5,000 queries), cascaded.

    Args:
        version: `standard` (APGD-CE, APGD-T, FAB-T, Square, as Croce and Hein's original runs
            it); the only version so far.
        steps: iterations of each gradient component (APGD-CE, APGD-T, FAB-T): 100 in the
            original.
        square_queries: queries of the Square attack: 5,000 in the original.
        n_target_classes: target classes of APGD-T and FAB-T (at most the number of classes
            minus 1): 9 in the original.
        seed: the components' random seed.
    """

    name = "autoattack"
    supports_bf16 = False  # torchattacks' components convert losses to NumPy
    norms = frozenset({"linf", "l2"})
    #: set by the engine for one call: keeps each component's outcomes as it finishes
    journal: ComponentJournal | None = None
    #: of the last call: the seconds its journaled components took when they first ran
    journaled_seconds: float = 0.0

    def __init__(
        self,
        version: str = "standard",
        steps: int = 100,
        square_queries: int = 5000,
        n_target_classes: int = 9,
        seed: int = 0,
    ) -> None:
        for field, value in (
            ("steps", steps),
            ("square_queries", square_queries),
            ("n_target_classes", n_target_classes),
        ):
            require_int(field, value)
        require_int("seed", seed, minimum=0)
        if version != "standard":
            raise UserError("version", f"unknown AutoAttack version {version!r}", "use 'standard'")
        self.version = version
        self.steps = steps
        self.square_queries = square_queries
        self.n_target_classes = n_target_classes
        self.seed = seed

    def supports(self, threat: ThreatModel, task: str = "classification") -> str | None:
        reason = super().supports(threat, task)
        if reason is None and threat.targeted:
            reason = "standard AutoAttack is untargeted; use pgd for a targeted threat model"
        if reason is None and threat.bounds != (0.0, 1.0):
            reason = "AutoAttack's components need inputs in bounds (0, 1)"
        return reason

    def components(
        self, model: nn.Module, threat: ThreatModel, n_classes: int
    ) -> list[tuple[str, Any]]:
        import torchattacks

        norm = _TORCHATTACKS_NORM[threat.norm]
        targets = min(self.n_target_classes, n_classes - 1)
        common = {"norm": norm, "eps": threat.eps, "n_restarts": 1, "seed": self.seed}
        iterative = {**common, "steps": self.steps}
        apgd_ce = torchattacks.APGD(model, loss="ce", rho=0.75, **iterative)
        apgd_t = torchattacks.APGDT(model, rho=0.75, n_classes=n_classes, **iterative)
        apgd_t.n_target_classes = targets
        fab_t = torchattacks.FAB(model, multi_targeted=True, n_classes=n_classes, **iterative)
        fab_t.n_target_classes = targets
        square = torchattacks.Square(
            model,
            n_queries=self.square_queries,
            p_init=0.8,
            loss="margin",
            resc_schedule=False,  # the original standard version's schedule (fra31/auto-attack)
            **common,
        )
        return [("apgd-ce", apgd_ce), ("apgd-t", apgd_t), ("fab-t", fab_t), ("square", square)]

    def resolved_settings(
        self, n_classes: int, threat: ThreatModel | None = None
    ) -> dict[str, Any]:
        return {**self.settings(), "components": self.describe_components(n_classes)}

    def describe_components(self, n_classes: int) -> dict[str, dict[str, Any]]:
        targets = min(self.n_target_classes, n_classes - 1)
        return {
            "apgd-ce": {"iterations": self.steps, "restarts": 1, "loss": "ce", "rho": 0.75},
            "apgd-t": {"iterations": self.steps, "restarts": 1, "target_classes": targets},
            "fab-t": {"iterations": self.steps, "restarts": 1, "target_classes": targets},
            "square": {"queries": self.square_queries, "restarts": 1, "p_init": 0.8},
        }

    def budget_weights(self, n_classes: int) -> list[float]:
        """Each component's cost per attacked sample, in forward passes (a backward counts
        two): the progress bar's estimate of how much of a cell's time is left."""
        targets = min(self.n_target_classes, n_classes - 1)
        return [
            3.0 * self.steps,  # APGD-CE: a forward and a backward per iteration
            3.0 * self.steps * targets,  # APGD-T: that, per target class
            4.0 * self.steps * targets,  # FAB-T: two logits' gradients and a projection check
            float(self.square_queries),  # Square: one forward per query
        ]

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel
    ) -> Perturbation:
        with torch.no_grad():
            logits = model(x)
        n_classes = logits.shape[1]
        logger.info(
            "AutoAttack (standard, %s eps=%g): %s",
            threat.norm,
            threat.eps,
            self.describe_components(n_classes),
        )
        adv = x.clone()
        robust = logits.argmax(1) == y
        components = self.components(model, threat, n_classes)
        journal, self.journal = self.journal, None  # this call's only
        self.journaled_seconds = 0.0
        weights = self.budget_weights(n_classes)
        spent = 0.0
        for index, (name, component) in enumerate(components):
            todo = robust.nonzero().flatten()  # between components, not inside a step loop
            if todo.numel() == 0:
                break
            found = journal.finished(name, todo, x[todo], y[todo]) if journal else None
            if found is not None:  # finished on these samples before: no time spent here
                adv[todo[found.fooled]] = found.adv.to(adv.dtype)
                robust[todo[found.fooled]] = False
                if isinstance(model, CountingModel):
                    model.cost = model.cost + found.cost
                self.journaled_seconds += found.seconds
                logger.info("AutoAttack %s: taken from the journal", name)
            else:
                spent += weights[index] * len(todo)
                before = copy.copy(getattr(model, "cost", None))
                started = time.perf_counter()
                candidate = threat.clip(component(x[todo], y[todo]).detach(), x[todo])
                with torch.no_grad():
                    fooled = model(candidate).argmax(1) != y[todo]
                adv[todo[fooled]] = candidate[fooled]
                robust[todo[fooled]] = False
                if journal is not None:
                    cost = Cost() if before is None else _spent(model.cost, before)
                    seconds = time.perf_counter() - started
                    journal.save(
                        name, todo, x[todo], y[todo], fooled, candidate[fooled], cost, seconds
                    )
            still = int(robust.sum())  # between components, not inside a step loop
            logger.info("AutoAttack %s: %d of %d still robust", name, still, len(y))
            # the share of the budget spent: the later components run on the robust samples
            left = sum(weights[index + 1 :]) * still
            report_step(index + 1, len(components), spent / (spent + left) if spent else None)
        # misclassified clean or fooled by a component: success already seen, no rescoring
        return Perturbation(adv, ~robust)


def _spent(now: Cost, before: Cost) -> Cost:
    return Cost(
        now.forward - before.forward, now.backward - before.backward, now.queries - before.queries
    )
