"""Minimum-norm attacks: FMN (Pintor et al., 2021) and DDN (Rony et al., 2019).

They do not attack at one radius: they look for each sample's *smallest* adversarial
perturbation. One run therefore gives the whole security curve (robust accuracy at every eps:
the share of samples whose smallest adversarial norm is above it). The cell's own threat model
still decides its verdict: a sample is broken when its smallest norm found is within the cell's
eps, and the returned input is then that adversarial example (else the clean input). Each call
leaves the per-sample norms in :attr:`MinimumNormAttack.last_norms` (``inf`` where no adversarial
example was found), which the classification task keeps in the cell's record.

Both follow adv-lib 0.2.8 (``fast_minimum_norm.py``, ``decoupled_direction_norm.py``; see
shared/research/field-standards.md H) step for step, so that on the same model the per-sample
norms agree (``benchmarks/minimum_norm_peer.py``):

FMN, at step i of ``steps`` (c = (1 + cos(pi i / steps)) / 2):
  alpha = alpha_final + (alpha_init - alpha_final) c, gamma = gamma_final + (gamma_init - gamma_final) c;
  the loss is the logit margin (true class minus the best other), negated when untargeted; the
  iterate is checked (adversarial and smaller than the best: kept); eps shrinks by (1 - gamma)
  when adversarial (never above the best), grows by (1 + gamma) once one was found, and before
  that jumps to the linear estimate ||delta|| + |loss| / ||grad||_dual; it is capped by the
  largest norm the box allows; delta moves by alpha along the l2-normalised gradient, is projected
  onto the eps ball (l2: rescaled onto the sphere of radius eps, inside the ball or not, with each
  coordinate capped at 1, exactly as adv-lib's ``l2_projection_`` does) and clipped to [0, 1].

DDN: delta moves by alpha (cosine from 1 to 0.01) along the l2-normalised gradient of the
cross-entropy; the radius eps shrinks by (1 - gamma) when the iterate is adversarial, else grows by
(1 + gamma), capped likewise; delta is rescaled to norm eps, clipped and quantised to 256 levels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.attacks.base import (
    Attack,
    Perturbation,
    report_step,
    require_int,
    require_number,
)
from robustbench_cl.registry import register_attack
from robustbench_cl.threat import ThreatModel, _project_l1

#: the dual of each norm: the FMN boundary estimate divides by the gradient's dual norm
_DUAL = {"linf": 1, "l2": 2, "l1": float("inf")}
_P = {"linf": float("inf"), "l2": 2, "l1": 1}


def _adversarial(logits: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    predicted = logits.argmax(1)
    return predicted == y if threat.targeted else predicted != y


def _keep_best(
    adversarial: torch.Tensor,
    norm: torch.Tensor,
    adv: torch.Tensor,
    best_norm: torch.Tensor,
    best_adv: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The iterate replaces the best where it is adversarial and strictly smaller (adv-lib's
    ``<``), on the device, without a host sync."""
    better = adversarial & (norm < best_norm)
    view = (-1,) + (1,) * (adv.ndim - 1)
    return torch.where(better, norm, best_norm), torch.where(
        better.view(view), adv.detach(), best_adv
    )


class MinimumNormAttack(Attack):
    """An attack that returns each sample's smallest adversarial perturbation it found."""

    #: of the last call: per sample, the smallest adversarial norm found (``inf``: none)
    last_norms: torch.Tensor | None = None

    def supports(self, threat: ThreatModel, task: str = "classification") -> str | None:
        reason = super().supports(threat, task)
        if reason is None and threat.bounds != (0.0, 1.0):
            reason = f"{self.name} works in the box [0, 1]: set bounds: [0, 1]"
        if reason is None and threat.space != "input":
            reason = f"{self.name} perturbs inputs, not {threat.space}"
        return reason

    def _verdict(
        self, x: torch.Tensor, best_adv: torch.Tensor, norms: torch.Tensor, threat: ThreatModel
    ) -> Perturbation:
        """Within the cell's eps: the adversarial example; else the clean input. The verdict is
        the norms' (compared in float64, as the security curve compares them), so the cell and
        its curve agree at the cell's eps."""
        self.last_norms = norms.detach()
        inside = norms.double() <= float(threat.eps)
        view = (-1,) + (1,) * (x.ndim - 1)
        adv = torch.where(inside.view(view), best_adv, x)
        return Perturbation(threat.clip(adv, x), inside, verdict=True)


@register_attack("fmn")
class FMN(MinimumNormAttack):
    """Fast Minimum-Norm attack (Pintor et al., 2021) for linf, l2 and l1: the smallest
    adversarial norm per sample, and so the security curve at every eps from one run.

    Args:
        steps: iterations (the paper and foolbox expect 100 or more).
        alpha_init: the first step size (along the l2-normalised gradient).
        alpha_final: the last step size (`None`: alpha_init / 100).
        gamma_init: the first relative change of the radius.
        gamma_final: the last relative change of the radius.
    """

    name = "fmn"
    norms = frozenset({"linf", "l2", "l1"})

    def __init__(
        self,
        steps: int = 100,
        alpha_init: float = 1.0,
        alpha_final: float | None = None,
        gamma_init: float = 0.05,
        gamma_final: float = 0.001,
    ) -> None:
        require_int("steps", steps)
        for field, value in (
            ("alpha_init", alpha_init),
            ("gamma_init", gamma_init),
            ("gamma_final", gamma_final),
        ):
            require_number(field, value)
        if alpha_final is not None:
            require_number("alpha_final", alpha_final)
        self.steps = steps
        self.alpha_init = alpha_init
        self.alpha_final = alpha_final
        self.gamma_init = gamma_init
        self.gamma_final = gamma_final

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel
    ) -> Perturbation:
        p, dual = _P[threat.norm], _DUAL[threat.norm]
        n = len(x)
        view = (-1,) + (1,) * (x.ndim - 1)
        alpha_final = self.alpha_init / 100 if self.alpha_final is None else self.alpha_final
        sign = 1.0 if threat.targeted else -1.0  # ascend the margin's negative
        delta = torch.zeros_like(x, requires_grad=True)
        eps = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
        worst = torch.maximum(x, 1 - x).flatten(1).norm(p=p, dim=1)
        best_norm = worst.clone()
        best_adv = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        other = torch.zeros(())  # the true class masked out of the max: set on the first step
        for i in range(self.steps):
            cosine = (1 + math.cos(math.pi * i / self.steps)) / 2
            alpha = alpha_final + (self.alpha_init - alpha_final) * cosine
            gamma = self.gamma_final + (self.gamma_init - self.gamma_final) * cosine
            norm = delta.detach().flatten(1).norm(p=p, dim=1)
            adv = x + delta
            logits = model(adv)
            if i == 0:
                other = torch.zeros_like(logits).scatter_(1, y[:, None], float("inf"))
            true = logits.gather(1, y[:, None]).squeeze(1)
            margin = true - (logits - other).amax(dim=1)
            loss = sign * margin
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            adversarial = _adversarial(logits, y, threat)
            found |= adversarial
            best_norm, best_adv = _keep_best(adversarial, norm, adv, best_norm, best_adv)
            boundary = loss.detach().abs() / grad.flatten(1).norm(p=dual, dim=1).clamp_min(1e-12)
            eps = torch.where(
                adversarial,
                torch.minimum(eps * (1 - gamma), best_norm),
                torch.where(found, eps * (1 + gamma), norm + boundary),
            )
            eps = torch.minimum(eps, worst)
            step = grad / grad.flatten(1).norm(p=2, dim=1).clamp_min(1e-12).view(view)
            with torch.no_grad():
                moved = (delta + alpha * step).flatten(1)
                if threat.norm == "linf":
                    moved = torch.maximum(torch.minimum(moved, eps[:, None]), -eps[:, None])
                elif threat.norm == "l2":  # onto the sphere of radius eps, as adv-lib does
                    scale = eps[:, None] / moved.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)
                    moved = (moved * scale).clamp(max=1)
                else:
                    moved = _project_l1(moved, eps[:, None])
                delta.copy_((x + moved.view_as(x)).clamp(0, 1) - x)
            report_step(i + 1, self.steps)
        norms = torch.where(found, best_norm, torch.full_like(best_norm, float("inf")))
        return self._verdict(x, best_adv, norms, threat)


@register_attack("ddn")
class DDN(MinimumNormAttack):
    """Decoupled Direction and Norm attack (Rony et al., 2019), l2: the smallest adversarial
    l2 norm per sample, and so the security curve at every eps from one run.

    Args:
        steps: iterations.
        gamma: the relative change of the radius per step.
        init_norm: the first radius.
        levels: quantise the iterate to this many levels per pixel (`None`: no quantisation).
    """

    name = "ddn"
    norms = frozenset({"l2"})

    def __init__(
        self,
        steps: int = 100,
        gamma: float = 0.05,
        init_norm: float = 1.0,
        levels: int | None = 256,
    ) -> None:
        require_int("steps", steps)
        require_number("gamma", gamma)
        require_number("init_norm", init_norm)
        if levels is not None:
            require_int("levels", levels, minimum=2)
        self.steps = steps
        self.gamma = gamma
        self.init_norm = init_norm
        self.levels = levels

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel
    ) -> Perturbation:
        n = len(x)
        view = (-1,) + (1,) * (x.ndim - 1)
        sign = -1.0 if threat.targeted else 1.0
        delta = torch.zeros_like(x, requires_grad=True)
        eps = torch.full((n,), self.init_norm, dtype=x.dtype, device=x.device)
        worst = torch.maximum(x, 1 - x).flatten(1).norm(p=2, dim=1)
        best_norm = worst.clone()
        best_adv = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for i in range(self.steps):
            norm = delta.detach().flatten(1).norm(p=2, dim=1)
            adv = x + delta
            logits = model(adv)
            loss = sign * F.cross_entropy(logits, y, reduction="none")
            adversarial = _adversarial(logits, y, threat)
            found |= adversarial
            best_norm, best_adv = _keep_best(adversarial, norm, adv, best_norm, best_adv)
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            grad_norm = grad.flatten(1).norm(p=2, dim=1)
            direction = grad / grad_norm.view(view)
            # a zero gradient gives no direction: a random one, as the reference does
            zero = (grad_norm < 1e-12).view(view)
            direction = torch.where(zero, torch.randn_like(grad), direction)
            alpha = 0.01 + (1 - 0.01) * (1 + math.cos(math.pi * i / self.steps)) / 2
            with torch.no_grad():
                moved = delta + alpha * direction
                eps = torch.where(adversarial, (1 - self.gamma) * eps, (1 + self.gamma) * eps)
                eps = torch.minimum(eps, worst)
                moved = moved * (eps / moved.flatten(1).norm(p=2, dim=1)).view(view)
                moved = (x + moved).clamp(0, 1)
                if self.levels is not None:
                    moved = (moved * (self.levels - 1)).round() / (self.levels - 1)
                delta.copy_(moved - x)
            report_step(i + 1, self.steps)
        norms = torch.where(found, best_norm, torch.full_like(best_norm, float("inf")))
        return self._verdict(x, best_adv, norms, threat)
