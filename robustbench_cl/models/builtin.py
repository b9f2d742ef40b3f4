"""The built-in model zoo, trained on first use and cached as safetensors.

``builtin:digits-cnn`` is a small CNN on scikit-learn's digits (1x16x16, 10 classes). The first
call trains it (a few seconds on a CPU) from a fixed seed and caches it under
``ROBUSTBENCH_CL_HOME``; later calls load the cache.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from robustbench_cl.models.artifacts import (
    artifact_exists,
    artifact_lock,
    load_artifact_weights,
    save_artifact,
)
from robustbench_cl.registry import register_model
from robustbench_cl.utils import cache_home, stable_hash

logger = logging.getLogger(__name__)

DIGITS_CNN_RECIPE = {"arch": "digits-cnn-v1", "epochs": 30, "lr": 2e-3, "batch_size": 64, "seed": 0}


def digits_cnn_architecture(width: int = 16) -> nn.Module:
    """Conv(16)-Pool-Conv(32)-Pool-FC(64)-FC(10) on 1x16x16 inputs in [0, 1]."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def train_digits_cnn(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
    """The digits-cnn recipe on any (x, y): also how membership reference models are trained."""
    from robustbench_cl.models.training import train_classifier

    torch.manual_seed(seed)
    model = digits_cnn_architecture()
    train_classifier(
        model,
        x,
        y,
        epochs=DIGITS_CNN_RECIPE["epochs"],
        lr=DIGITS_CNN_RECIPE["lr"],
        batch_size=DIGITS_CNN_RECIPE["batch_size"],
        seed=seed,
    )
    return model.eval()


#: builtin name -> (architecture factory, trainer on (x, y, seed), recipe) for reference models
REFERENCE_RECIPES = {
    "digits-cnn": (digits_cnn_architecture, train_digits_cnn, DIGITS_CNN_RECIPE),
}


@register_model("digits-cnn")
def digits_cnn() -> nn.Module:
    """Small CNN on scikit-learn digits, trained on first use (about 97% test accuracy)."""
    from robustbench_cl.data import load_dataset
    from robustbench_cl.models.training import accuracy

    path = cache_home() / "models" / f"digits-cnn-{stable_hash(DIGITS_CNN_RECIPE, 8)}"
    with artifact_lock(path):
        if artifact_exists(path):
            torch.manual_seed(DIGITS_CNN_RECIPE["seed"])
            return load_artifact_weights(path, digits_cnn_architecture()).eval()
        logger.info("training builtin:digits-cnn on first use (cached at %s)", path)
        train = load_dataset("digits", split="train")
        model = train_digits_cnn(train.x, train.y, DIGITS_CNN_RECIPE["seed"])
        test = load_dataset("digits", split="test")
        config = dict(DIGITS_CNN_RECIPE, test_accuracy=accuracy(model, test.x, test.y))
        save_artifact(path, model, config)
    return model.eval()
