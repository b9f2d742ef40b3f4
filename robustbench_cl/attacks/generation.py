"""Class-conditional generation from a classifier: gradient ascent on a class logit.

This is how DAT makes its contrastive samples during training, and how any classifier (a DAT
model, a PGD-AT model, an undefended one) is asked to draw a digit at evaluation: start from an
out-of-distribution seed and take l2 normalised-gradient steps that raise the logit of the
intended class, with no eps limit, clamped to the input bounds.

OOD seeds stand in for the 80M TinyImages pool of the paper: uniform noise, blurred noise, and
pixel- or patch-shuffled real images (real statistics, no digit structure).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.attacks.base import inputs_only_gradients, report_step

SEED_KINDS = ("uniform", "blurred", "pixel_shuffle", "patch_shuffle")


def _blur(x: torch.Tensor, passes: int = 2) -> torch.Tensor:
    kernel = torch.tensor([1.0, 2.0, 1.0], device=x.device)
    kernel = (kernel[:, None] * kernel[None, :]) / 16
    weight = kernel.expand(x.shape[1], 1, 3, 3).contiguous()
    for _ in range(passes):
        x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), weight, groups=x.shape[1])
    return x


def ood_seeds(
    n: int,
    real: torch.Tensor,
    generator: torch.Generator,
    kinds: tuple[str, ...] = SEED_KINDS,
    patch: int = 4,
) -> torch.Tensor:
    """``n`` OOD seed images shaped like ``real`` (N, C, H, W) in [0, 1], kinds in rotation."""
    shape = real.shape[1:]
    device = real.device
    out = torch.empty((n, *shape), device=device)
    kind_of = torch.arange(n) % len(kinds)
    for index, kind in enumerate(kinds):
        rows = (kind_of == index).nonzero().flatten()
        if not len(rows):
            continue
        m = len(rows)
        if kind == "uniform":
            seeds = torch.rand((m, *shape), generator=generator).to(device)
        elif kind == "blurred":
            seeds = _blur(torch.rand((m, *shape), generator=generator).to(device))
        else:
            pick = torch.randint(0, len(real), (m,), generator=generator)
            images = real[pick.to(device)]
            if kind == "pixel_shuffle":
                order = torch.rand(m, images[0].numel(), generator=generator).argsort(1)
                seeds = images.flatten(1).gather(1, order.to(device)).view_as(images)
            else:  # patch_shuffle: permute non-overlapping patch x patch tiles
                c, h, w = shape
                tiles = images.unfold(2, patch, patch).unfold(3, patch, patch)
                tiles = tiles.reshape(m, c, -1, patch, patch)
                order = torch.rand(m, tiles.shape[2], generator=generator).argsort(1).to(device)
                tiles = tiles[torch.arange(m, device=device)[:, None], :, order].transpose(1, 2)
                grid = tiles.reshape(m, c, h // patch, w // patch, patch, patch)
                seeds = grid.permute(0, 1, 2, 4, 3, 5).reshape(m, c, h, w)
        out[rows.to(device)] = seeds
    return out.clamp_(0, 1)


def class_conditional_ascent(
    model: nn.Module,
    x0: torch.Tensor,
    target: torch.Tensor,
    steps: int,
    step_size: float,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Raise ``model(x)[target]`` by ``steps`` l2 normalised-gradient steps, clamped to bounds.

    Gradients are taken w.r.t. the input only; the model's parameters are not touched. The step
    loop makes no host synchronisation.
    """
    low, high = bounds
    x = x0.detach().clone()
    with inputs_only_gradients(model):
        for step in range(steps):
            x.requires_grad_(True)
            objective = model(x).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(objective, x)
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            x = (x.detach() + step_size * grad / norm).clamp_(low, high)
            report_step(step + 1, steps)
    return x.detach()
