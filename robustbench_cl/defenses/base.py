"""The defense protocol.

A *training* defense produces new weights (PGD-AT, DAT, C-AdvUL, ...); a *preprocessor*
defense learns a module placed in front of a frozen model (RAE, DualTAP). Both build a
defended model from a base model and training data, and cache what they learned as a
safetensors artifact under a key that hashes the model, the data and the defense settings,
so that a matrix never trains the same defense twice.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from robustbench_cl.data.base import TensorData
from robustbench_cl.models.artifacts import artifact_exists, artifact_lock, load_artifact_weights
from robustbench_cl.models.wrappers import Frozen
from robustbench_cl.registry import DEFENSES, register_defense
from robustbench_cl.utils import cache_file, seeded, stable_hash, tensor_digest


class Defense:
    name: ClassVar[str] = "defense"
    kind: ClassVar[str] = "training"  # "training", "preprocessor" or "none"
    #: bump when the training algorithm changes, so that stale cached artifacts are not reused
    version: ClassVar[int] = 1

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def cache_path(self, model_spec: str, data: TensorData) -> Path:
        """Keyed by the defense, its version and settings, the model and the data's contents.

        Numbers are canonical (``lam: 1`` and ``lam: 1.0`` are one setting), and the data is
        hashed by value, so two datasets that share a name and shape never share an artifact.
        """
        key = stable_hash(
            {
                "defense": self.name,
                "version": self.version,
                "settings": _canonical(self.settings()),
                "model": model_spec,
                "data": dict(data.describe(), sha256=content_digest(data)),
            }
        )
        return cache_file("defenses", f"{self.name}-{key}")

    def build(self, model: Frozen, model_spec: str, data: TensorData) -> nn.Module:
        """Return the defended model (frozen, eval mode), training it on first use."""
        raise NotImplementedError

    def cached_or_trained(self, network: nn.Module, model_spec: str, data: TensorData) -> Frozen:
        """``network`` with this defense's cached weights, or trained by ``self._train(network,
        model_spec, data, path)`` (which caches them at ``path``) on first use."""
        path = self.cache_path(model_spec, data)
        with artifact_lock(path):
            if artifact_exists(path):
                load_artifact_weights(path, network)
            else:
                self._train(network, model_spec, data, path)  # type: ignore[attr-defined]
        return Frozen(network)

    def adapt_architecture(self, network: nn.Module) -> nn.Module:
        """The architecture this defense trains, given the model's (DP-SGD swaps BatchNorm
        for GroupNorm); cached weights of models it trained load into it."""
        return network


@register_defense("none")
class NoDefense(Defense):
    """The undefended model, as it is."""

    name = "none"
    kind = "none"

    def build(self, model: Frozen, model_spec: str, data: TensorData) -> nn.Module:
        return model


def _canonical(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def content_digest(data: TensorData) -> str:
    """SHA-256 of a dataset's inputs and labels (16 hex digits)."""
    return tensor_digest(data.x, data.y)


def trainable_copy(model: Frozen, from_scratch: bool, seed: int) -> nn.Module:
    """A deep copy of the wrapped model with gradients on; re-initialised if asked."""

    inner = copy.deepcopy(model.model)
    if from_scratch:
        with seeded(seed):
            for module in inner.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    inner.requires_grad_(True)
    return inner


def make_defense(name: str, **params: Any) -> Defense:
    return DEFENSES.create(name, **params)
