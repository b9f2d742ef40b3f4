"""DP-SGD (Abadi et al., 2016, https://arxiv.org/abs/1607.00133), as Opacus runs it.

Every step draws a Poisson batch (each training example independently with probability
``q = 1 / steps_per_epoch``), takes each example's gradient (``torch.func``: ``vmap`` of
``grad``), clips each to total L2 norm ``max_grad_norm``, sums them, adds Gaussian noise of
standard deviation ``noise_multiplier * max_grad_norm`` and divides by the *expected* batch
size ``q * N`` (Opacus's ``loss_reduction="mean"``). The privacy cost of that sequence of
subsampled Gaussian mechanisms is computed by Opacus's accountant: the noise multiplier for a
target ``(epsilon, delta)`` by ``get_noise_multiplier`` (as ``make_private_with_epsilon``
does), or the epsilon of a given noise multiplier by the accountant's ``get_epsilon``.

BatchNorm mixes examples within a batch and has no per-example gradient: a model with it is
rewritten as Opacus's ``ModuleValidator.fix`` does (GroupNorm), before training and before
loading a cached artifact.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.attacks.base import require_int, require_number
from robustbench_cl.data.base import TensorData
from robustbench_cl.defenses.base import Defense, trainable_copy
from robustbench_cl.errors import UserError
from robustbench_cl.models.artifacts import (
    save_artifact,
)
from robustbench_cl.models.training import accuracy
from robustbench_cl.models.wrappers import Frozen
from robustbench_cl.registry import register_defense
from robustbench_cl.utils import seeded

logger = logging.getLogger(__name__)

ACCOUNTANTS = ("prv", "rdp")


@dataclass(frozen=True)
class PrivacyClaim:
    """What a DP training run guarantees, as its accountant computed it."""

    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    accountant: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=64)
def _noise_for(epsilon: float, delta: float, q: float, steps: int, accountant: str) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():  # (RDP: "optimal order is the largest alpha")
        warnings.simplefilter("ignore", UserWarning)
        return float(
            get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=q,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=0.01,
            )
        )


@functools.lru_cache(maxsize=64)
def _epsilon_for(sigma: float, delta: float, q: float, steps: int, accountant: str) -> float:
    from opacus.accountants import create_accountant

    counter = create_accountant(accountant)
    counter.history = [(sigma, q, steps)]  # one (noise, rate, steps) phase, as Opacus records it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(counter.get_epsilon(delta))


@register_defense("dp-sgd")
class DPSGD(Defense):
    """Differentially private training by DP-SGD, from scratch, with Opacus's accountant.

    Args:
        epsilon: the target epsilon; the noise multiplier is chosen by the accountant to reach it
            after `epochs` (ignored when `noise_multiplier` is given).
        delta: the target delta (by convention below 1 / the number of training examples).
        noise_multiplier: the Gaussian noise's standard deviation over `max_grad_norm`; `None`:
            from `epsilon`. Given, the epsilon it reaches is computed instead.
        max_grad_norm: each example's gradient is clipped to this L2 norm (Opacus's flat
            clipping).
        epochs: passes over the data; each has `ceil(N / batch_size)` steps.
        batch_size: the expected Poisson batch size (the sample rate is `1 / steps per epoch`).
        lr: the optimizer's learning rate.
        optimizer: `adam` or `sgd` (momentum 0.9); the noise is added to the gradient before
            either sees it, so both keep the guarantee. (On digits-cnn, Adam at 1e-2 reached
            78% / 92% test accuracy at epsilon 1 / 8, SGD at its best rate 43% / 86%.)
        accountant: Opacus's `prv` (its default, tighter) or `rdp`.
        seed: the training seed (initialisation, batches and noise).
    """

    name = "dp-sgd"
    kind = "training"
    #: always trains a fresh copy of the architecture (never fine-tunes the given weights)
    from_scratch = True
    #: membership reference models are trained with seeds of their own (noise and batches)
    seeds_per_model = True

    def __init__(
        self,
        epsilon: float = 8.0,
        delta: float = 1e-5,
        noise_multiplier: float | None = None,
        max_grad_norm: float = 1.0,
        epochs: int = 30,
        batch_size: int = 128,
        lr: float = 1e-2,
        optimizer: str = "adam",
        accountant: str = "prv",
        seed: int = 0,
    ) -> None:
        require_int("epochs", epochs)
        require_int("batch_size", batch_size)
        require_number("lr", lr)
        require_number("max_grad_norm", max_grad_norm)
        if noise_multiplier is None:
            require_number("epsilon", epsilon)
            if not epsilon > 0:
                raise UserError("epsilon", f"must be > 0, got {epsilon}", "e.g. 1 or 8")
        else:
            require_number("noise_multiplier", noise_multiplier)
        require_number("delta", delta)
        if not delta < 1:
            raise UserError("delta", f"must be in (0, 1), got {delta}", "e.g. 1e-5")
        if optimizer not in ("sgd", "adam"):
            raise UserError("optimizer", f"unknown {optimizer!r}", "use sgd or adam")
        if accountant not in ACCOUNTANTS:
            raise UserError("accountant", f"unknown {accountant!r}", "use prv or rdp")
        self.epsilon = None if noise_multiplier is not None else float(epsilon)
        self.delta = float(delta)
        self.noise_multiplier = None if noise_multiplier is None else float(noise_multiplier)
        self.max_grad_norm = float(max_grad_norm)
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = float(lr)
        self.optimizer = optimizer
        self.accountant = accountant
        self.seed = seed

    # ------------------------------------------------------------------ accounting
    def schedule(self, n: int) -> tuple[float, int]:
        """The sample rate and the number of steps on ``n`` training examples."""
        steps_per_epoch = max(math.ceil(n / self.batch_size), 1)
        return 1.0 / steps_per_epoch, steps_per_epoch * self.epochs

    def privacy_claim(self, n: int) -> PrivacyClaim:
        """The (epsilon, delta) the accountant certifies for training on ``n`` examples."""
        if self.delta >= 1 / n:
            logger.warning(
                "dp-sgd: delta %g is not below 1/N = %g: such a delta allows leaking a whole "
                "training example; use delta < 1/N",
                self.delta,
                1 / n,
            )
        q, steps = self.schedule(n)
        if self.noise_multiplier is None:
            assert self.epsilon is not None
            sigma = _noise_for(self.epsilon, self.delta, q, steps, self.accountant)
        else:
            sigma = self.noise_multiplier
        epsilon = _epsilon_for(sigma, self.delta, q, steps, self.accountant)
        return PrivacyClaim(
            epsilon=epsilon,
            delta=self.delta,
            noise_multiplier=sigma,
            max_grad_norm=self.max_grad_norm,
            sample_rate=q,
            steps=steps,
            accountant=self.accountant,
        )

    # ------------------------------------------------------------------ training
    def adapt_architecture(self, network: nn.Module) -> nn.Module:
        """BatchNorm to GroupNorm, as Opacus's ``ModuleValidator.fix`` does."""
        from opacus.validators import ModuleValidator

        if ModuleValidator.validate(network, strict=False):
            network = ModuleValidator.fix(network)
        return network

    def settings(self) -> dict[str, Any]:
        """The parameters, and Opacus's version: its accountant chooses the noise, so a cached
        model is tied to the version that chose it."""
        import opacus

        return {**super().settings(), "opacus": opacus.__version__}

    def fresh_copy(self, model: Frozen) -> nn.Module:
        """The architecture with nothing learned: every module's ``reset_parameters``, then a
        truncated normal (std 0.02) for any parameter none of them reached (a class token, a
        position embedding), so that no weight trained without DP on the data survives."""
        network = trainable_copy(model, True, self.seed)  # every reset_parameters, seeded
        covered = {
            id(p)
            for module in network.modules()
            if callable(getattr(module, "reset_parameters", None))
            for p in module.parameters(recurse=False)
        }
        with seeded(self.seed + 1), torch.no_grad():
            for parameter in network.parameters():
                if id(parameter) not in covered:  # a token, a temperature, a gain
                    torch.nn.init.trunc_normal_(parameter, std=0.02)
        return network

    def build(self, model: Frozen, model_spec: str, data: TensorData) -> nn.Module:
        network = self.adapt_architecture(self.fresh_copy(model))
        return self.cached_or_trained(network, model_spec, data)

    def _train(self, network: nn.Module, model_spec: str, data: TensorData, path: Path) -> None:
        claim = self.privacy_claim(len(data.y))
        logger.info(
            "training dp-sgd (epsilon %.3g, delta %g, sigma %.3f) on %s; cached at %s",
            claim.epsilon,
            claim.delta,
            claim.noise_multiplier,
            model_spec,
            path,
        )
        dp_sgd_train(
            network,
            data.x,
            data.y,
            noise_multiplier=claim.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            sample_rate=claim.sample_rate,
            steps=claim.steps,
            lr=self.lr,
            optimizer=self.optimizer,
            seed=self.seed,
        )
        save_artifact(
            path,
            network,
            {
                "defense": self.name,
                "settings": self.settings(),
                "model": model_spec,
                "privacy": claim.to_dict(),
                "train_accuracy": accuracy(network, data.x, data.y),
            },
        )


def per_sample_gradients(
    network: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each example's gradient of its cross-entropy, ``{name: (B, *shape)}`` (``torch.func``)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in network.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in network.named_buffers()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(network, (p, buffers), (xi[None],))
        return F.cross_entropy(logits, yi[None])

    return vmap(grad(loss), in_dims=(None, 0, 0), randomness="different")(params, x, y)


def dp_sgd_train(
    network: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    sample_rate: float,
    steps: int,
    lr: float,
    optimizer: str = "sgd",
    seed: int = 0,
    chunk: int = 256,
) -> nn.Module:
    """``steps`` DP-SGD steps on Poisson batches of rate ``sample_rate``; returns ``network``."""
    device = next(network.parameters()).device
    named = [(k, v) for k, v in network.named_parameters() if v.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD([v for _, v in named], lr=lr, momentum=0.9)
    else:
        opt = torch.optim.Adam([v for _, v in named], lr=lr)
    expected = sample_rate * len(y)
    sigma = noise_multiplier * max_grad_norm
    with seeded(seed) as generator:
        network.train()
        for _ in range(steps):
            chosen = torch.nonzero(torch.rand(len(y), generator=generator) < sample_rate)[:, 0]
            total = {k: torch.zeros_like(v) for k, v in named}
            for start in range(0, len(chosen), chunk):  # an empty batch adds noise only
                batch = chosen[start : start + chunk]
                grads = per_sample_gradients(network, x[batch].to(device), y[batch].to(device))
                norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], 1)
                scale = (max_grad_norm / (norms.norm(dim=1) + 1e-6)).clamp(max=1.0)
                for k, g in grads.items():
                    total[k] += torch.einsum("b,b...->...", scale, g)
            for k, v in named:
                noise = torch.randn(v.shape, generator=generator).to(device) * sigma
                v.grad = (total[k] + noise) / expected
            opt.step()
            opt.zero_grad(set_to_none=True)
    return network.eval()
