"""Universal perturbations for image-text retrieval: one delta for every input.

A universal attack is *fitted* once on training data against a source model
(``fit(model, data, threat, seed) -> UniversalPerturbation``); the engine then only adds the
perturbation to every test image of every target model, so white-box (source == target) and
transfer (source != target) are the same cell type. Baselines here:

- ``uniform-noise``: one draw of U(-eps, eps), the floor any attack must beat;
- ``pgd-uap``: a classic universal perturbation, signed gradient steps over the training set
  that lower each image's cosine similarity to its own captions.

C-PGC (the generator) lives in :mod:`robustbench_cl.attacks.cpgc`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from robustbench_cl.attacks.base import (
    AttackBase,
    inputs_only_gradients,
    report_step,
    require_int,
    require_number,
)
from robustbench_cl.attacks.features import encode_texts
from robustbench_cl.errors import ThreatModelViolation, UserError
from robustbench_cl.registry import register_attack
from robustbench_cl.threat import ThreatModel


@dataclass
class UniversalPerturbation:
    """One image perturbation ``delta`` (C, H, W) with ``|delta|_inf <= eps``, an optional
    adversarial ``word`` for the text side, and how it was found."""

    delta: torch.Tensor
    word: str | None = None
    history: list[float] = field(default_factory=list)
    fit_time: float = 0.0
    forward: int = 0
    backward: int = 0
    diagnostics: dict[str, list[float]] = field(default_factory=dict)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.delta.to(images.device)).clamp(0, 1)


def model_device(model: nn.Module) -> torch.device:
    """Where the model lives (its first parameter, else its first buffer, else the CPU)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def caption_features(model: nn.Module, data, per_image: int = 5) -> torch.Tensor:  # noqa: ANN001
    """(N, per_image, D) text features of each image's captions (cycled if it has fewer)."""
    features = encode_texts(model, data.captions)
    owners = data.captions_of()
    index = torch.tensor([[own[k % len(own)] for k in range(per_image)] for own in owners])
    return features[index.to(features.device)]


class UniversalAttack(AttackBase):
    """Base class of attacks that fit one perturbation for all inputs."""

    name: ClassVar[str] = "universal"
    norms: ClassVar[frozenset[str]] = frozenset({"linf"})
    spaces: ClassVar[frozenset[str]] = frozenset({"input"})
    tasks: ClassVar[frozenset[str]] = frozenset({"retrieval"})
    default_task: ClassVar[str] = "retrieval"

    def fit(
        self, model: nn.Module, data, threat: ThreatModel, seed: int = 0
    ) -> UniversalPerturbation:  # noqa: ANN001
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(seed)
        with inputs_only_gradients(model):
            result = self._fit(model, data, threat, generator)
        delta = result.delta.detach().cpu()
        largest = float(delta.abs().max()) if delta.numel() else 0.0
        if largest > threat.eps + 1e-6 or not torch.isfinite(delta).all():
            raise ThreatModelViolation(
                f"{self.name} returned a perturbation of linf norm {largest:.4g} > eps {threat.eps:g}"
            )
        result.delta = delta
        result.fit_time = time.perf_counter() - start
        return result

    def _fit(
        self, model: nn.Module, data, threat: ThreatModel, generator: torch.Generator
    ) -> UniversalPerturbation:  # noqa: ANN001
        raise NotImplementedError


@register_attack("uniform-noise")
class UniformNoise(UniversalAttack):
    """One draw of uniform noise in the eps ball: the baseline any universal attack must beat."""

    name = "uniform-noise"
    uses_gradients = False

    def _fit(self, model, data, threat, generator):  # noqa: ANN001, ANN202
        shape = data.images.shape[1:]
        delta = (torch.rand(shape, generator=generator) * 2 - 1) * threat.eps
        return UniversalPerturbation(delta)


@register_attack("pgd-uap")
class PGDUniversal(UniversalAttack):
    """Classic universal perturbation: signed gradient steps over the training set.

    Each step lowers the batch's mean cosine similarity to its own captions; projected to the
    eps ball.

    Args:
        epochs: passes over the fitting images.
        batch_size: images per signed-gradient step.
        step_size: the step, as a fraction of eps.
    """

    name = "pgd-uap"

    def __init__(self, epochs: int = 5, batch_size: int = 32, step_size: float = 0.1) -> None:
        require_int("pgd-uap.epochs", epochs)
        require_int("pgd-uap.batch_size", batch_size)
        require_number("pgd-uap.step_size", step_size)
        self.epochs = epochs
        self.batch_size = batch_size
        #: the step, as a fraction of eps
        self.step_size = step_size

    def _fit(self, model, data, threat, generator):  # noqa: ANN001, ANN202
        device = model_device(model)
        targets = caption_features(model, data).mean(1)
        delta = torch.zeros(data.images.shape[1:], device=device)
        history = []
        n = len(data)
        steps = self.epochs * (n // self.batch_size)
        forward = 0
        for epoch in range(self.epochs):
            order = torch.randperm(n, generator=generator)
            total = torch.zeros((), device=device)
            for start in range(0, n - self.batch_size + 1, self.batch_size):
                batch = order[start : start + self.batch_size]
                x = data.images[batch].to(device)
                delta.requires_grad_(True)
                features = model.encode_image((x + delta).clamp(0, 1))
                loss = (features * targets[batch.to(device)]).sum(1).mean()
                (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    delta = (delta - self.step_size * threat.eps * grad.sign()).clamp(
                        -threat.eps, threat.eps
                    )
                total += loss.detach()
                forward += len(batch)
                report_step(epoch * (n // self.batch_size) + start // self.batch_size + 1, steps)
            history.append(float(total) / max(1, n // self.batch_size))
        return UniversalPerturbation(
            delta.detach(), history=history, forward=forward, backward=forward
        )


@register_attack("random-word")
class RandomWord(UniversalAttack):
    """Baseline for C-PGC's universal word: a random vocabulary word (and uniform image noise).

    The word replaces each caption's most important word exactly as the optimised word does, so
    the difference between the two is what optimising the word buys over deleting the word.
    """

    name = "random-word"
    uses_gradients = False

    def _fit(self, model, data, threat, generator):  # noqa: ANN001, ANN202
        from robustbench_cl.attacks.text_uap import candidate_words

        encoder = getattr(model, "text_encoder", None)
        if encoder is None:
            raise UserError(
                "random-word",
                "needs a model with a word-embedding text encoder",
                "use a builtin:tinyclip model as the source",
            )
        words = candidate_words(encoder)
        word = words[int(torch.randint(0, len(words), (1,), generator=generator))]
        delta = (torch.rand(data.images.shape[1:], generator=generator) * 2 - 1) * threat.eps
        return UniversalPerturbation(delta, word=word)
