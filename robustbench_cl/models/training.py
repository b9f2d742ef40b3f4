"""A plain, deterministic classifier training loop shared by built-in models and defenses."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.utils import seeded

logger = logging.getLogger(__name__)

Perturb = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    perturb: Perturb | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Adam + cosine schedule on (x, y); ``perturb`` turns each batch into training inputs.

    ``perturb(model, xb, yb)`` is called with the model in eval mode (Madry et al. craft
    adversarial examples against the current weights) and must return a batch like ``xb``.
    """
    generator = torch.Generator().manual_seed(seed)
    with seeded(seed):
        optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = (len(y) + batch_size - 1) // batch_size
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
        device = next(model.parameters()).device
        for epoch in range(epochs):
            order = torch.randperm(len(y), generator=generator)
            total_loss = torch.zeros((), device=device)
            for start in range(0, len(y), batch_size):
                batch = order[start : start + batch_size]
                xb, yb = x[batch].to(device), y[batch].to(device)
                if perturb is not None:
                    model.eval()
                    for parameter in model.parameters():
                        parameter.requires_grad_(False)
                    xb = perturb(model, xb, yb).detach()
                    for parameter in model.parameters():
                        parameter.requires_grad_(True)
                model.train()
                loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_loss += loss.detach() * len(batch)
            mean_loss = float(total_loss) / len(y)
            logger.debug("epoch %d loss %.4f", epoch, mean_loss)
            if on_epoch is not None:
                on_epoch(epoch, mean_loss)
        model.eval()
        return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    device = next(model.parameters()).device
    correct = torch.zeros((), device=device)
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size].to(device))
        correct += (logits.argmax(1) == y[start : start + batch_size].to(device)).sum()
    return float(correct) / len(y)
