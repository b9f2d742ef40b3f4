"""AutoAttack (Croce & Hein, 2020, https://arxiv.org/abs/2003.01690): its three versions.

Each component runs only on the samples that are still robust (the cascade). The versions are the
original's (``fra31/auto-attack``, ``set_version``), not torchattacks' preset (which runs 10
iterations):

- ``standard``: APGD-CE, APGD-T, FAB-T, Square; 100 iterations and 1 restart for the gradient
  components, ``min(9, n_classes - 1)`` target classes for APGD-T and FAB-T, 5,000 queries.
- ``plus``: APGD-CE, APGD-DLR, FAB, Square, APGD-T, FAB-T; APGD-CE, APGD-DLR and the
  untargeted FAB with 5 restarts, APGD-T and FAB-T with 1, 9 target classes, 5,000 queries.
- ``rand``, for randomized defenses: APGD-CE and APGD-DLR, 1 restart, each gradient the mean
  over 20 draws of the model (EOT).

The components are torchattacks' implementations; this class fixes their settings and runs the
cascade.
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
#: each version's components, in the original's order
VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
#: restarts of (APGD-CE and APGD-DLR, untargeted FAB) per version; APGD-T and FAB-T always 1
_RESTARTS = {"standard": (1, 1), "plus": (5, 5), "rand": (1, 1)}
#: gradient draws per step (EOT) of APGD per version
_EOT = {"standard": 1, "plus": 1, "rand": 20}


@register_attack("autoattack")
class AutoAttack(Attack):
    """AutoAttack, cascaded: `standard`, `plus` or `rand`, as Croce and Hein's original runs them.

    Args:
        version: `standard` (APGD-CE, APGD-T, FAB-T, Square), `plus` (APGD-CE and APGD-DLR
            with 5 restarts, FAB with 5, Square, APGD-T, FAB-T) or `rand` (APGD-CE and APGD-DLR
            with EOT over 20 draws, for randomized defenses).
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
        if version not in VERSIONS:
            raise UserError(
                "version",
                f"unknown AutoAttack version {version!r}",
                f"use one of {', '.join(VERSIONS)}",
            )
        self.version = version
        self.steps = steps
        self.square_queries = square_queries
        self.n_target_classes = n_target_classes
        self.seed = seed

    @property
    def averages_draws(self) -> bool:  # type: ignore[override]
        return _EOT[self.version] > 1

    def supports(self, threat: ThreatModel, task: str = "classification") -> str | None:
        reason = super().supports(threat, task)
        if reason is None and threat.targeted:
            reason = "AutoAttack is untargeted; use pgd for a targeted threat model"
        if reason is None and threat.bounds != (0.0, 1.0):
            reason = "AutoAttack's components need inputs in bounds (0, 1)"
        return reason

    def components(
        self, model: nn.Module, threat: ThreatModel, n_classes: int
    ) -> list[tuple[str, Any]]:
        import torchattacks

        norm = _TORCHATTACKS_NORM[threat.norm]
        targets = min(self.n_target_classes, n_classes - 1)
        restarts, fab_restarts = _RESTARTS[self.version]
        common = {"norm": norm, "eps": threat.eps, "seed": self.seed}
        iterative = {**common, "steps": self.steps}
        eot = _EOT[self.version]

        def build(name: str) -> Any:
            if name in ("apgd-ce", "apgd-dlr"):
                loss = name.removeprefix("apgd-")
                return torchattacks.APGD(
                    model, loss=loss, rho=0.75, n_restarts=restarts, eot_iter=eot, **iterative
                )
            if name == "apgd-t":
                attack = torchattacks.APGDT(
                    model, rho=0.75, n_classes=n_classes, n_restarts=1, **iterative
                )
                attack.n_target_classes = targets
                return attack
            if name == "fab":
                return torchattacks.FAB(
                    model,
                    multi_targeted=False,
                    n_classes=n_classes,
                    n_restarts=fab_restarts,
                    **iterative,
                )
            if name == "fab-t":
                attack = torchattacks.FAB(
                    model, multi_targeted=True, n_classes=n_classes, n_restarts=1, **iterative
                )
                attack.n_target_classes = targets
                return attack
            return torchattacks.Square(
                model,
                n_queries=self.square_queries,
                n_restarts=1,
                p_init=0.8,
                loss="margin",
                resc_schedule=False,  # the original's schedule (fra31/auto-attack)
                **common,
            )

        return [(name, build(name)) for name in VERSIONS[self.version]]

    def resolved_settings(
        self, n_classes: int, threat: ThreatModel | None = None
    ) -> dict[str, Any]:
        return {**self.settings(), "components": self.describe_components(n_classes)}

    def describe_components(self, n_classes: int) -> dict[str, dict[str, Any]]:
        targets = min(self.n_target_classes, n_classes - 1)
        restarts, fab_restarts = _RESTARTS[self.version]
        eot = {"eot_iter": _EOT[self.version]} if _EOT[self.version] > 1 else {}
        described = {
            "apgd-ce": {"iterations": self.steps, "restarts": restarts, "loss": "ce", "rho": 0.75},
            "apgd-dlr": {
                "iterations": self.steps,
                "restarts": restarts,
                "loss": "dlr",
                "rho": 0.75,
            },
            "fab": {"iterations": self.steps, "restarts": fab_restarts},
            "apgd-t": {"iterations": self.steps, "restarts": 1, "target_classes": targets},
            "fab-t": {"iterations": self.steps, "restarts": 1, "target_classes": targets},
            "square": {"queries": self.square_queries, "restarts": 1, "p_init": 0.8},
        }
        return {
            name: {
                **described[name],
                **(eot if name.startswith("apgd-") and name != "apgd-t" else {}),
            }
            for name in VERSIONS[self.version]
        }

    def budget_weights(self, n_classes: int) -> list[float]:
        """Each component's cost per attacked sample, in forward passes (a backward counts
        two): the progress bar's estimate of how much of a cell's time is left."""
        targets = min(self.n_target_classes, n_classes - 1)
        restarts, fab_restarts = _RESTARTS[self.version]
        apgd = 3.0 * self.steps * restarts * _EOT[self.version]
        weights = {
            "apgd-ce": apgd,  # a forward and a backward per iteration (and draw)
            "apgd-dlr": apgd,
            "apgd-t": 3.0 * self.steps * targets,  # that, per target class
            # untargeted FAB: the Jacobian of every logit (a backward each) per step
            "fab": (2.0 * n_classes + 1) * self.steps * fab_restarts,
            "fab-t": 4.0 * self.steps * targets,
            "square": float(self.square_queries),  # one forward per query
        }
        return [weights[name] for name in VERSIONS[self.version]]

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel
    ) -> Perturbation:
        with torch.no_grad():
            logits = model(x)
        n_classes = logits.shape[1]
        components = VERSIONS[self.version]
        # the original's check_n_classes: DLR needs 3 classes, its targeted form 4
        needed = 4 if "apgd-t" in components else 3 if "apgd-dlr" in components else 2
        if n_classes < needed:
            raise UserError(
                "version",
                f"AutoAttack {self.version}'s DLR losses need {needed} classes or more, the "
                f"model has {n_classes}",
                "use pgd (or autoattack version: rand, from 3 classes)",
            )
        logger.info(
            "AutoAttack (%s, %s eps=%g): %s",
            self.version,
            threat.norm,
            threat.eps,
            self.describe_components(n_classes),
        )
        adv = x.clone()
        # the call's clean verdict when it has one (the engine's clean pass): on a randomized
        # model, a second clean draw here would be one more chance to count a sample broken
        known = self.clean_correct
        robust = known.clone().bool() if known is not None else logits.argmax(1) == y
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
        # misclassified clean or fooled by a component: the verdict, as the original's (on a
        # randomized model, a sample is broken when any draw it was checked on misclassified it)
        return Perturbation(adv, ~robust, verdict=True)


def _spent(now: Cost, before: Cost) -> Cost:
    return Cost(
        now.forward - before.forward, now.backward - before.backward, now.queries - before.queries
    )
