"""``builtin:digits-fm``: a small image foundation model, frozen, with a downstream linear head.

The encoder is pre-trained by SimCLR (InfoNCE on two kornia-augmented views: small affine jitter,
Gaussian noise, random erasing) on the digits training images, labels unused. It is then frozen,
and a linear head is trained on its frozen 64-d features for the downstream task. The returned
model is ``Sequential(encoder, head)``; everything is cached as safetensors on first use.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.losses import info_nce
from robustbench_cl.models.artifacts import (
    artifact_exists,
    artifact_lock,
    load_artifact_weights,
    save_artifact,
)
from robustbench_cl.models.layers import MaxPool2d
from robustbench_cl.registry import register_model
from robustbench_cl.utils import cache_file, seeded, stable_hash

logger = logging.getLogger(__name__)

DIGITS_FM_RECIPE = {
    "arch": "digits-fm-v1",
    "simclr_epochs": 60,
    "simclr_batch": 256,
    "simclr_lr": 1e-3,
    "temperature": 0.5,
    "head_epochs": 100,
    "head_lr": 1e-2,
    "seed": 0,
}


def digits_fm_encoder() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 64),
    )


def digits_fm_architecture() -> nn.Module:
    return nn.Sequential(digits_fm_encoder(), nn.Linear(64, 10))


def _augment() -> nn.Module:
    import kornia.augmentation as K

    return nn.Sequential(
        K.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), p=1.0),
        K.RandomGaussianNoise(mean=0.0, std=0.05, p=0.5),
        K.RandomErasing(scale=(0.02, 0.1), ratio=(0.5, 2.0), p=0.5),
    )


def pretrain_simclr(encoder: nn.Module, x: torch.Tensor, recipe: dict) -> nn.Module:
    with seeded(recipe["seed"]):
        projection = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        augment = _augment()
        parameters = list(encoder.parameters()) + list(projection.parameters())
        optimizer = torch.optim.Adam(parameters, lr=recipe["simclr_lr"])
        generator = torch.Generator().manual_seed(recipe["seed"])
        batch = recipe["simclr_batch"]
        encoder.train()
        for _ in range(recipe["simclr_epochs"]):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x) - batch // 2, batch):
                xb = x[order[start : start + batch]]
                v1, v2 = augment(xb).clamp(0, 1), augment(xb).clamp(0, 1)
                loss = info_nce(
                    projection(encoder(v1)), projection(encoder(v2)), recipe["temperature"]
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        return encoder.eval()


def train_linear_head(encoder: nn.Module, head: nn.Linear, x, y, recipe: dict) -> nn.Linear:  # noqa: ANN001
    """A linear probe on frozen features (computed once), full-batch Adam."""
    with torch.no_grad():
        features = encoder(x)
    optimizer = torch.optim.Adam(head.parameters(), lr=recipe["head_lr"])
    for _ in range(recipe["head_epochs"]):
        loss = F.cross_entropy(head(features), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return head


@register_model("digits-fm")
def digits_fm() -> nn.Module:
    """A SimCLR-pre-trained digits encoder (frozen) with a clean linear head."""
    from robustbench_cl.data import load_dataset
    from robustbench_cl.models.training import accuracy

    path = cache_file("models", f"digits-fm-{stable_hash(DIGITS_FM_RECIPE, 8)}")
    with artifact_lock(path):
        with seeded(DIGITS_FM_RECIPE["seed"]):
            model = digits_fm_architecture()
            if artifact_exists(path):
                return load_artifact_weights(path, model).eval()
            logger.info("pre-training builtin:digits-fm (SimCLR) on first use; cached at %s", path)
            train = load_dataset("digits", split="train")
            encoder, head = model[0], model[1]
            pretrain_simclr(encoder, train.x, DIGITS_FM_RECIPE)
            encoder.requires_grad_(False)
            train_linear_head(encoder, head, train.x, train.y, DIGITS_FM_RECIPE)
            test = load_dataset("digits", split="test")
            model.eval()
            save_artifact(
                path, model, dict(DIGITS_FM_RECIPE, test_accuracy=accuracy(model, test.x, test.y))
            )
    return model.requires_grad_(True).eval()
