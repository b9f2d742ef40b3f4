"""Projected gradient descent (Madry et al., 2018, https://arxiv.org/abs/1706.06083).

Distance: linf, l2 or l1, taken from the threat model, which owns the projection, the random
start and the steepest-ascent direction. Inputs (N, ...) in ``threat.bounds``; labels (N,).

    attack = PGD(steps=10, step_size=0.025, random_start=False)
    result = attack(model, x, y, ThreatModel(norm="linf", eps=0.1))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.attacks.base import (
    Attack,
    Perturbation,
    budget_param,
    report_step,
    require_int,
    require_number,
)
from robustbench_cl.registry import register_attack
from robustbench_cl.threat import ThreatModel


@register_attack("pgd")
class PGD(Attack):
    """PGD on the cross-entropy loss, with random start, restarts and targeted mode.

    ``step_size=None`` uses Madry's heuristic ``2.5 * eps / steps``. With ``keep_best`` the
    attack returns, per sample, the first iterate that succeeded (a successful example is
    never thrown away by later steps); without it, the last iterate, as torchattacks and ART do.

    Args:
        steps: iterations per restart.
        step_size: the step; `None` uses Madry's `2.5 * eps / steps` (the resolved settings show
            the value).
        random_start: start from a uniform point of the eps ball (else from the input).
        restarts: independent runs; a sample counts as broken if any run breaks it.
        keep_best: return each sample's first successful iterate, not the last.
        seed: the random start's own seed; `None` draws from torch's generator, which the run seeds
            per cell.
    """

    name = "pgd"
    norms = frozenset({"linf", "l2", "l1"})

    def __init__(
        self,
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        keep_best: bool = True,
        seed: int | None = None,
    ) -> None:
        step_size = budget_param("step_size", step_size)
        require_int("steps", steps)
        require_int("restarts", restarts)
        if step_size is not None:
            require_number("step_size", step_size)
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start
        self.restarts = restarts
        self.keep_best = keep_best
        self.seed = seed

    def resolved_settings(
        self, n_classes: int, threat: ThreatModel | None = None
    ) -> dict[str, Any]:
        settings = self.settings()
        if self.step_size is None and threat is not None:
            settings["step_size"] = self._step_size(threat)
            settings["step_size_rule"] = "2.5 * eps / steps"
        return settings

    def _step_size(self, threat: ThreatModel) -> float:
        return self.step_size if self.step_size is not None else 2.5 * threat.eps / self.steps

    def stronger(self) -> PGD:
        return PGD(
            steps=2 * self.steps,
            step_size=self.step_size,
            random_start=True,
            restarts=self.restarts + 1,
            keep_best=True,
            seed=None if self.seed is None else self.seed + 1,
        )

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel
    ) -> Perturbation:
        step_size = self._step_size(threat)
        sign = -1.0 if threat.targeted else 1.0
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=x.device).manual_seed(self.seed)
        best = x.clone()
        best_found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        mask_shape = (-1,) + (1,) * (x.ndim - 1)
        total = self.steps * self.restarts
        clip = threat.clipper(x)
        for restart in range(self.restarts):
            x_adv = threat.random_init(x, generator) if self.random_start else x.clone()
            found = torch.zeros_like(best_found)
            for step in range(self.steps):
                x_adv.requires_grad_(True)
                logits = model(x_adv)
                loss = F.cross_entropy(logits, y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_adv)
                if self.keep_best:
                    found = self._keep_first_hits(logits, x_adv, y, threat, found, best_found, best)
                step_direction = threat.ascent_direction(grad)
                x_adv = clip(x_adv.detach().add_(step_direction, alpha=sign * step_size))
                report_step(restart * self.steps + step + 1, total)
            if restart < self.restarts - 1:
                # score this restart's end point, so a later restart cannot overwrite a success
                with torch.no_grad():
                    logits = model(x_adv)
                found = self._keep_first_hits(logits, x_adv, y, threat, found, best_found, best)
            else:
                # the last iterate for samples no iterate of any restart has fooled
                remaining = (~found & ~best_found).view(mask_shape)
                torch.where(remaining, x_adv.detach(), best, out=best)
            best_found |= found
        # samples whose returned iterate was already scored as a success need no rescoring
        return Perturbation(best, best_found)

    @staticmethod
    def _keep_first_hits(
        logits: torch.Tensor,
        x_adv: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        found: torch.Tensor,
        best_found: torch.Tensor,
        best: torch.Tensor,
    ) -> torch.Tensor:
        """Copy into ``best`` (in place) each sample's first successful iterate; no host sync."""
        predicted = logits.detach().argmax(1)
        hit = predicted == y if threat.targeted else predicted != y
        first = hit & ~found & ~best_found
        mask_shape = (-1,) + (1,) * (x_adv.ndim - 1)
        torch.where(first.view(mask_shape), x_adv.detach(), best, out=best)
        return found | hit
