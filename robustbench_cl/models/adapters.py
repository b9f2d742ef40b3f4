"""Adapters for models users already have on disk: torchvision, timm and Python factories.

Nothing is downloaded: weights come from a local path, loaded with safetensors or
``torch.load(weights_only=True)``. ImageNet normalisation is put inside the model.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from robustbench_cl.errors import UserError
from robustbench_cl.models.artifacts import load_foreign_state_dict
from robustbench_cl.models.wrappers import Normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _maybe_normalize(model: nn.Module, options: dict[str, str], mean: Any, std: Any) -> nn.Module:
    choice = options.pop("normalize", "imagenet")
    if choice == "none":
        return model
    if choice != "imagenet":
        raise UserError("normalize", f"unknown value {choice!r}", "use 'imagenet' or 'none'")
    return Normalize(model, mean, std)


def _int_options(options: dict[str, str], *names: str) -> dict[str, int]:
    values = {}
    for name in names:
        if name in options:
            try:
                values[name] = int(options.pop(name))
            except ValueError:
                raise UserError(name, "must be an integer") from None
    return values


def torchvision_model(name: str, options: dict[str, str]) -> nn.Module:
    """``torchvision:NAME?weights=PATH[&num_classes=N][&normalize=imagenet|none]``.

    Options:
        weights: a local state-dict file; loaded with `weights_only=True` unless
            `--trust-remote-code`. Without one, random weights.
        num_classes: the classifier's outputs (default: the architecture's).
        normalize: `imagenet` (default: ImageNet's mean and std applied inside the model, so
            inputs stay in [0, 1]) or `none`.
    """
    import torchvision

    weights = options.pop("weights", None)
    kwargs = _int_options(options, "num_classes")
    try:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    except ValueError:
        available = torchvision.models.list_models()
        import difflib

        close = difflib.get_close_matches(name, available, n=3)
        hint = (
            f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
        )
        raise UserError("model", f"unknown torchvision model {name!r}", hint) from None
    if weights:
        _load_weights(model, weights, "weights")
    model = _maybe_normalize(model, options, IMAGENET_MEAN, IMAGENET_STD)
    _refuse_leftovers(options)
    return model


def timm_model(name: str, options: dict[str, str]) -> nn.Module:
    """``timm:NAME?checkpoint=PATH[&num_classes=N]``; mean/std from timm's pretrained config.

    Options:
        checkpoint: a local state-dict file; loaded with `weights_only=True` unless
            `--trust-remote-code`. Without one, random weights.
        num_classes: the classifier's outputs (default: the architecture's).
        normalize: `imagenet` (default: timm's mean and std for the architecture, applied inside
            the model, so inputs stay in [0, 1]) or `none` (the checkpoint normalises itself).
    """
    try:
        import timm
    except ImportError:
        raise UserError(
            "model", "timm is not installed", "pip install 'robustbench-cl[timm]'"
        ) from None
    checkpoint = options.pop("checkpoint", None)
    kwargs = _int_options(options, "num_classes")
    if name not in timm.list_models():
        raise UserError("model", f"unknown timm model {name!r}", "see timm.list_models()")
    model = timm.create_model(name, pretrained=False, **kwargs)
    if checkpoint:
        _load_weights(model, checkpoint, "checkpoint")
    config = getattr(model, "pretrained_cfg", {}) or {}
    mean = config.get("mean", IMAGENET_MEAN)
    std = config.get("std", IMAGENET_STD)
    model = _maybe_normalize(model, options, mean, std)
    _refuse_leftovers(options)
    return model


def python_model(target: str, options: dict[str, str]) -> nn.Module:
    """``python:package.module:factory[?key=value...]``: calls ``factory(**options)``.

    Options:
        KEY: any `?key=value` is passed to the factory as a string keyword argument.
    """
    module_name, _, factory_name = target.rpartition(":")
    if not module_name or not factory_name:
        raise UserError("model", f"bad python spec {target!r}", "use python:package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(
            "model", f"cannot import {module_name!r} ({error})", "check PYTHONPATH"
        ) from None
    factory = getattr(module, factory_name, None)
    if factory is None:
        raise UserError("model", f"{module_name} has no attribute {factory_name!r}")
    try:
        model = factory(**options)
    except TypeError as error:
        raise UserError("model", f"{target}: {error}", "check the ?key=value options") from None
    if not isinstance(model, nn.Module):
        raise UserError("model", f"{target} returned {type(model).__name__}, not an nn.Module")
    return model


def _load_weights(model: nn.Module, path: str, field: str) -> None:
    try:
        model.load_state_dict(load_foreign_state_dict(path, field))
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(
            field,
            f"{path} does not match the architecture ({first_line})",
            "check the model name and num_classes",
        ) from None


def _refuse_leftovers(options: dict[str, str]) -> None:
    if options:
        raise UserError("model", f"unknown option {sorted(options)[0]!r} in the model spec")
