"""Screen protectors compared in the ``screens:`` section: DualTAP and its baselines.

- ``clean``: the screenshot as it is;
- ``noise``: uniform noise in [-eps, eps] on every pixel;
- ``pgd``: a global PGD per screenshot, no generator and no attention: random start in the
  eps ball, signed steps that raise the surrogate's CTC loss on the PII text under the same EOT
  as DualTAP (the privacy loss only; nothing keeps the task readable);
- ``blackout``: the oracle: every PII box painted black (unbounded, a reference point);
- ``dualtap``: the trained generator (:mod:`robustbench_cl.defenses.dualtap`).

Every protector maps screens in [0, 1] to protected screens in [0, 1]; the engine quantises them
to 8 bits (what a screenshot is) and checks the eps bound on the quantised pixels.
"""

from __future__ import annotations

from typing import Any

import torch

from robustbench_cl.errors import UserError

PROTECTOR_SUMMARIES = {
    "clean": "the screen as it is (the reference row)",
    "noise": "uniform noise of l-inf size eps over the whole screen (the untrained baseline)",
    "pgd": "a global PGD against the EasyOCR surrogate (eps, steps, EOT)",
    "blackout": "the PII boxes painted black, knowing where they are (a privacy ceiling)",
    "dualtap": "DualTAP: a trained generator, privacy and task losses (Wang et al.)",
}
PROTECTORS = tuple(PROTECTOR_SUMMARIES)
BOUNDED = ("noise", "pgd", "dualtap")


def check_protector(name: str, params: dict[str, Any], field: str) -> None:
    if name not in PROTECTORS:
        raise UserError(field, f"unknown protector {name!r}", f"use one of {', '.join(PROTECTORS)}")
    allowed = {"pgd": {"steps", "eot_samples", "step_size", "box_jitter"}, "noise": set()}
    allowed.update(clean=set(), blackout=set())
    if name in allowed:
        unknown = set(params) - allowed[name]
        if unknown:
            raise UserError(
                f"{field}.params.{sorted(unknown)[0]}",
                f"{name} takes no parameter {sorted(unknown)[0]!r}",
                f"use {', '.join(sorted(allowed[name])) or 'none'}",
            )
    minimum = {"steps": 1, "eot_samples": 1, "step_size": 1e-9, "box_jitter": 0}
    for key, value in params.items():
        if key in minimum and (
            not isinstance(value, int | float) or isinstance(value, bool) or value < minimum[key]
        ):
            raise UserError(
                f"{field}.params.{key}",
                f"{key} {value!r} is invalid",
                f"use a number >= {minimum[key]}",
            )


def uniform_noise(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x) * eps
    return (x + noise).clamp(0, 1)


def blackout(x: torch.Tensor, screens: list) -> torch.Tensor:  # noqa: ANN001
    out = x.clone()
    for index, screen in enumerate(screens):
        for item in screen.pii:
            if item.box is not None:
                x0, y0, x1, y1 = item.box
                out[index, :, y0:y1, x0:x1] = 0
    return out


def global_pgd(
    surrogate,  # noqa: ANN001
    x: torch.Tensor,
    screens: list,
    eps: float,
    generator: torch.Generator,
    steps: int = 20,
    eot_samples: int = 2,
    step_size: float | None = None,
    box_jitter: float = 2.0,
) -> torch.Tensor:
    """Untargeted PGD on the privacy CTC loss, l-inf ball over the whole screen."""
    from robustbench_cl.defenses.dualtap import CropEOT, text_targets
    from robustbench_cl.privacy.routers import boxes_tensor

    items, texts = text_targets(screens, "privacy")
    if not items:
        return x.clone()
    boxes = boxes_tensor(items, x.device)
    eot = CropEOT(box_jitter)
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    delta = ((torch.rand(x.shape, generator=generator) * 2 - 1) * eps).to(x)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = sum(
            eot(surrogate, x + delta, boxes, texts, generator).sum() for _ in range(eot_samples)
        )
        (gradient,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + alpha * gradient.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta.detach()).clamp(0, 1)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """To 8-bit pixel values and back: what a saved screenshot holds."""
    return (x * 255).round() / 255
