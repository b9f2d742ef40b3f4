"""Model wrappers: normalisation inside the model, frozen foundation models, preprocessors.

Attacks always see a model whose inputs live in the threat model's ``bounds``; normalisation is
part of the model (as in RobustBench), never hidden state in the attack.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

GradientMode = Literal["end-to-end", "bpda", "eot"]


class Normalize(nn.Module):
    """``model((x - mean) / std)``, with mean and std per channel."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def parameter_hash(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer, in a fixed order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(
            tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


class Frozen(nn.Module):
    """A model that stays in eval mode with ``requires_grad=False`` parameters.

    ``recorded_hash`` is the parameter hash at wrap time; ``unchanged()`` proves later that
    nothing (a defense, a training loop) touched the weights.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.recorded_hash = parameter_hash(self.model)
        self.training = False

    def train(self, mode: bool = True) -> Frozen:  # noqa: ARG002 - frozen stays in eval
        self.training = False
        self.model.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def parameter_hash(self) -> str:
        return parameter_hash(self.model)

    def unchanged(self) -> bool:
        return self.parameter_hash() == self.recorded_hash


class _StraightThrough(torch.autograd.Function):
    """Forward: the preprocessor's output. Backward: the identity (BPDA, Athalye et al. 2018)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, processed: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return processed

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad, None


class Preprocessed(nn.Module):
    """``model(preprocessor(x))``, declaring how it must be attacked.

    ``gradient_mode``: ``"end-to-end"`` differentiates through the preprocessor; ``"bpda"``
    uses the identity as its backward pass; ``"eot"`` averages gradients over
    ``eot_samples`` draws of a randomized preprocessor. ``is_randomized`` tells the engine
    that a single evaluation is not enough.
    """

    def __init__(
        self,
        preprocessor: nn.Module,
        model: nn.Module,
        gradient_mode: GradientMode = "end-to-end",
        is_randomized: bool = False,
        eot_samples: int = 1,
    ) -> None:
        super().__init__()
        if gradient_mode not in ("end-to-end", "bpda", "eot"):
            raise ValueError(
                f"gradient_mode must be end-to-end, bpda or eot, not {gradient_mode!r}"
            )
        self.preprocessor = preprocessor
        self.model = model
        self.gradient_mode = gradient_mode
        self.is_randomized = is_randomized
        self.eot_samples = eot_samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_mode == "bpda" and torch.is_grad_enabled() and x.requires_grad:
            return self.bpda_forward(x)
        if self.gradient_mode == "eot" and torch.is_grad_enabled() and x.requires_grad:
            logits = [self.model(self.preprocessor(x)) for _ in range(self.eot_samples)]
            return torch.stack(logits).mean(dim=0)
        return self.model(self.preprocessor(x))

    def bpda_forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            processed = self.preprocessor(x)
        return self.model(_StraightThrough.apply(x, processed))


def is_randomized(model: nn.Module) -> bool:
    """True if any wrapped module declares itself randomized."""
    return any(getattr(m, "is_randomized", False) for m in model.modules())


def uses_eot(model: nn.Module) -> bool:
    return any(
        getattr(m, "gradient_mode", None) == "eot" and getattr(m, "eot_samples", 1) > 1
        for m in model.modules()
    )
