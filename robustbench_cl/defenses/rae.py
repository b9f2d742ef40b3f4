"""Robust auto-encoder (RAE) preprocessor in front of a frozen foundation model.

Liu, Huang and Xing, "How to Enhance Downstream Adversarial Robustness (almost) without Touching
the Pre-Trained Foundation Model?" (2025). An auto-encoder is trained on the downstream images
alone, with *no access to the foundation model*:

    min_{enc, dec}  E_x [ ||dec(enc(x)) - x||^2 + lambda * L_con(g(enc(x_adv)), g(enc(x))) ]
    x_adv = argmax_{x' in B_eps(x)} L_con(g(enc(x')), g(enc(x)))     (PGD on the loss itself)

where g is a projection head and L_con a contrastive loss with the other samples of the batch as
negatives (``loss: infonce`` by default, ``dcl`` or ``dclw`` as variants). The trained
``dec(enc(.))`` is then placed in front of the frozen model as a data preprocessor; the model's
parameters are never touched. Evaluation attacks the whole pipeline end to end (it is
differentiable); ``gradient_mode: bpda`` declares the straight-through variant instead.

Scaled-down defaults for 16x16 digits (``methods.md`` section a; the paper's eps, lambda, tau and
architecture were not reachable): linf eps 0.1, step eps/4, 10 PGD steps, tau 0.5, a 32-d latent,
30 epochs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.attacks.base import (
    budget_param,
    inputs_only_gradients,
    require_int,
    require_number,
)
from robustbench_cl.data.base import TensorData
from robustbench_cl.defenses.base import Defense
from robustbench_cl.errors import UserError
from robustbench_cl.losses import pair_loss
from robustbench_cl.models.artifacts import (
    artifact_exists,
    artifact_lock,
    load_artifact_config,
    load_artifact_weights,
    save_artifact,
)
from robustbench_cl.models.autoencoder import AutoEncoder
from robustbench_cl.models.wrappers import Preprocessed
from robustbench_cl.registry import register_defense
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import seeded

logger = logging.getLogger(__name__)


def contrastive_pgd(
    autoencoder: AutoEncoder,
    x: torch.Tensor,
    anchor: torch.Tensor,
    loss,  # noqa: ANN001
    temperature: float,
    threat: ThreatModel,
    steps: int,
    step_size: float,
) -> torch.Tensor:
    """Maximise the contrastive loss between g(enc(x')) and the clean anchors inside the ball,
    from a uniform random start in the ball (``random_init`` returns the start point itself)."""
    x_adv = threat.random_init(x)
    with inputs_only_gradients(autoencoder):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            objective = loss(autoencoder.embed(x_adv), anchor, temperature)
            (grad,) = torch.autograd.grad(objective, x_adv)
            x_adv = threat.clip(x_adv.detach() + step_size * threat.ascent_direction(grad), x)
    return x_adv.detach()


@register_defense("rae")
class RobustAutoEncoder(Defense):
    """A robust auto-encoder preprocessor, trained without touching the model it protects.

    Args:
        lam: weight of the robustness (contrastive) term; 0 is the reconstruction-only control.
        loss: the pair loss between clean and attacked latents (e.g. `infonce`).
        temperature: the InfoNCE temperature.
        norm: the inner attack's norm.
        eps: the inner attack's radius.
        steps: the inner PGD's iterations.
        step_size: the inner PGD's step; `None` uses `eps / 4`.
        latent: the auto-encoder's latent channels.
        width: the auto-encoder's base width.
        epochs: training epochs.
        lr: Adam's learning rate.
        batch_size: samples per step.
        gradient_mode: how attacks differentiate through the preprocessor: `end-to-end` or
            `bpda` (identity backward).
        seed: the training seed.
    """

    name = "rae"
    kind = "preprocessor"
    #: 2: the inner PGD starts inside the ball (version 1 started at x + random_init(x), a
    #: point at least x, exactly x + eps wherever x >= 2 eps)
    version = 2

    def __init__(
        self,
        lam: float = 1.0,
        loss: str = "infonce",
        temperature: float = 0.5,
        norm: str = "linf",
        eps: float = 0.1,
        steps: int = 10,
        step_size: float | None = None,
        latent: int = 32,
        width: int = 16,
        epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 128,
        gradient_mode: str = "end-to-end",
        seed: int = 0,
    ) -> None:
        eps = budget_param("eps", eps)
        step_size = budget_param("step_size", step_size)
        for field, value in (
            ("steps", steps),
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("latent", latent),
        ):
            require_int(field, value)
        for field, value in (("temperature", temperature), ("lr", lr), ("eps", eps)):
            require_number(field, value)
        if isinstance(lam, bool) or not isinstance(lam, int | float) or lam < 0:
            raise UserError("lam", f"must be a number >= 0, got {lam!r}", "0 is the control")
        pair_loss(loss)  # validates the name
        if gradient_mode not in ("end-to-end", "bpda"):
            raise UserError("gradient_mode", f"unknown {gradient_mode!r}", "use end-to-end or bpda")
        self.lam = lam
        self.loss = loss
        self.temperature = temperature
        self.norm = norm
        self.eps = eps
        self.steps = steps
        self.step_size = step_size if step_size is not None else eps / 4
        self.latent = latent
        self.width = width
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.gradient_mode = gradient_mode
        self.seed = seed
        self._threat = ThreatModel(norm=norm, eps=eps)

    # the cache key ignores the protected model: the RAE never sees it
    def cache_path(self, model_spec: str, data: TensorData) -> Path:
        return super().cache_path("(any model)", data)

    def build(self, model: nn.Module, model_spec: str, data: TensorData) -> nn.Module:
        autoencoder = self.fit(data)
        return Preprocessed(autoencoder, model, gradient_mode=self.gradient_mode).eval()

    def fit(self, data: TensorData) -> AutoEncoder:
        """Train (or load) the RAE on ``data.x`` only: no labels, no model."""
        if data.x.dim() != 4 or data.x.shape[-1] != data.x.shape[-2]:
            raise UserError(
                "data",
                f"the RAE needs square images (N, C, H, H), got {tuple(data.x.shape)}",
                "resize or crop the images",
            )
        channels, size = data.x.shape[1], data.x.shape[-1]
        with seeded(self.seed):
            autoencoder = AutoEncoder(channels, size, self.latent, self.width)
            path = self.cache_path("", data)
            with artifact_lock(path):
                if artifact_exists(path):
                    load_artifact_weights(path, autoencoder)
                else:
                    logger.info(
                        "training rae (lambda %g, %s) on %s; cached at %s",
                        self.lam,
                        self.loss,
                        data.name,
                        path,
                    )
                    log = self.train(autoencoder, data.x)
                    save_artifact(
                        path,
                        autoencoder,
                        {
                            "defense": self.name,
                            "settings": self.settings(),
                            "shape": autoencoder.shape,
                            "log": log,
                        },
                    )
            return autoencoder.eval().requires_grad_(False)

    def train(self, autoencoder: AutoEncoder, x: torch.Tensor) -> dict[str, Any]:
        loss_fn = pair_loss(self.loss)
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(autoencoder.parameters(), lr=self.lr)
        history: dict[str, list[float]] = {"reconstruction": [], "adversarial_contrastive": []}
        for _ in range(self.epochs):
            order = torch.randperm(len(x), generator=generator)
            recon_sum = torch.zeros(())
            con_sum = torch.zeros(())
            batches = 0
            for start in range(0, len(x) - 1, self.batch_size):
                xb = x[order[start : start + self.batch_size]]
                if len(xb) < 2:
                    continue
                autoencoder.train()
                latent = autoencoder.encoder(xb)
                reconstruction = F.mse_loss(autoencoder.decoder(latent), xb)
                loss = reconstruction
                if self.lam > 0:
                    anchor = autoencoder.projection(latent)
                    x_adv = contrastive_pgd(
                        autoencoder,
                        xb,
                        anchor.detach(),
                        loss_fn,
                        self.temperature,
                        self._threat,
                        self.steps,
                        self.step_size,
                    )
                    contrastive = loss_fn(autoencoder.embed(x_adv), anchor, self.temperature)
                    loss = loss + self.lam * contrastive
                    con_sum += contrastive.detach()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                recon_sum += reconstruction.detach()
                batches += 1
            history["reconstruction"].append(round(float(recon_sum) / max(batches, 1), 6))
            history["adversarial_contrastive"].append(round(float(con_sum) / max(batches, 1), 6))
        return history

    def training_log(self, model_spec: str, data: TensorData) -> dict[str, Any] | None:
        path = self.cache_path(model_spec, data)
        return load_artifact_config(path).get("log") if artifact_exists(path) else None
