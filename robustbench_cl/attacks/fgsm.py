"""Fast gradient (sign) method (Goodfellow et al., 2015, https://arxiv.org/abs/1412.6572).

One step of size eps along the steepest-ascent direction of the threat model's norm (the sign
for linf, the unit-l2 gradient for l2), then clipped to the bounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.attacks.base import Attack, report_step
from robustbench_cl.registry import register_attack
from robustbench_cl.threat import ThreatModel


@register_attack("fgsm")
class FGSM(Attack):
    """One gradient step of size eps (FGSM for linf, fast gradient method for l2)."""

    name = "fgsm"
    norms = frozenset({"linf", "l2"})

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel
    ) -> torch.Tensor:
        sign = -1.0 if threat.targeted else 1.0
        x_adv = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(sign * loss, x_adv)
        report_step(1, 1)
        return threat.clip(x + threat.eps * threat.ascent_direction(grad), x)
