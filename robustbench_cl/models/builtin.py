"""The built-in model zoo, trained on first use and cached as safetensors.

``builtin:digits-cnn`` is a small CNN on scikit-learn's digits (1x16x16, 10 classes). The first
call trains it (a few seconds on a CPU) from a fixed seed and caches it under
``ROBUSTBENCH_CL_HOME``; later calls load the cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

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

DIGITS_CNN_RECIPE = {"arch": "digits-cnn-v1", "epochs": 30, "lr": 2e-3, "batch_size": 64, "seed": 0}


def _recipe_trainer(
    architecture: Callable[[], nn.Module], recipe: dict[str, Any]
) -> Callable[[torch.Tensor, torch.Tensor, int], nn.Module]:
    """``train(x, y, seed)``: a fresh ``architecture()`` trained with ``recipe`` on any (x, y).

    The builtins are trained this way, and so are membership reference models.
    """

    def train(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        from robustbench_cl.models.training import train_classifier

        with seeded(seed):
            model = architecture()
            train_classifier(
                model,
                x,
                y,
                epochs=recipe["epochs"],
                lr=recipe["lr"],
                batch_size=recipe["batch_size"],
                seed=seed,
            )
            return model.eval()

    return train


def digits_cnn_architecture(width: int = 16, batchnorm: bool = False) -> nn.Module:
    """Conv(16)-Pool-Conv(32)-Pool-FC(64)-FC(10) on 1x16x16 inputs in [0, 1].

    ``batchnorm`` adds BatchNorm after each conv: the architecture DAT's two stages are about.
    """

    def block(channels_in: int, channels_out: int) -> list[nn.Module]:
        norm = [nn.BatchNorm2d(channels_out)] if batchnorm else []
        conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        return [conv, *norm, nn.ReLU(), MaxPool2d(2)]

    return nn.Sequential(
        *block(1, width),
        *block(width, 2 * width),
        nn.Flatten(),
        nn.Linear(2 * width * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


train_digits_cnn = _recipe_trainer(digits_cnn_architecture, DIGITS_CNN_RECIPE)


def digits_cnn_bn_architecture(width: int = 16) -> nn.Module:
    return digits_cnn_architecture(width, batchnorm=True)


DIGITS_CNN_BN_RECIPE = dict(DIGITS_CNN_RECIPE, arch="digits-cnn-bn-v1")


train_digits_cnn_bn = _recipe_trainer(digits_cnn_bn_architecture, DIGITS_CNN_BN_RECIPE)


def digits_judge_architecture() -> nn.Module:
    """An MLP (256-256-128-10): a different family from the CNNs it judges."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


DIGITS_JUDGE_RECIPE = {
    "arch": "digits-judge-v1",
    "epochs": 40,
    "lr": 2e-3,
    "batch_size": 64,
    "seed": 1,
}


train_digits_judge = _recipe_trainer(digits_judge_architecture, DIGITS_JUDGE_RECIPE)


#: builtin name -> (architecture factory, trainer on (x, y, seed), recipe) for reference models
REFERENCE_RECIPES = {
    "digits-judge": (digits_judge_architecture, train_digits_judge, DIGITS_JUDGE_RECIPE),
    "digits-cnn": (digits_cnn_architecture, train_digits_cnn, DIGITS_CNN_RECIPE),
    "digits-cnn-bn": (digits_cnn_bn_architecture, train_digits_cnn_bn, DIGITS_CNN_BN_RECIPE),
}


def _cached_builtin(name: str) -> nn.Module:
    """Train builtin ``name`` on the digits train split on first use; load the cache after."""
    from robustbench_cl.data import load_dataset
    from robustbench_cl.models.training import accuracy

    architecture, train, recipe = REFERENCE_RECIPES[name]
    path = cache_file("models", f"{name}-{stable_hash(recipe, 8)}")
    with artifact_lock(path):
        if artifact_exists(path):
            with seeded(recipe["seed"]):
                return load_artifact_weights(path, architecture()).eval()
        logger.info("training builtin:%s on first use (cached at %s)", name, path)
        data = load_dataset("digits", split="train")
        model = train(data.x, data.y, recipe["seed"])
        test = load_dataset("digits", split="test")
        save_artifact(path, model, dict(recipe, test_accuracy=accuracy(model, test.x, test.y)))
    return model.eval()


@register_model("digits-cnn-bn")
def digits_cnn_bn() -> nn.Module:
    """digits-cnn with BatchNorm, trained on first use; the base of the generative suite."""
    return _cached_builtin("digits-cnn-bn")


@register_model("digits-cnn")
def digits_cnn() -> nn.Module:
    """Small CNN on scikit-learn digits, trained on first use (about 97% test accuracy)."""
    return _cached_builtin("digits-cnn")


@register_model("digits-judge")
def digits_judge() -> nn.Module:
    """An independent MLP digits classifier that judges generated samples (mini-FID features
    are its 128-d penultimate layer). Trained separately, with another seed and architecture."""
    return _cached_builtin("digits-judge")
