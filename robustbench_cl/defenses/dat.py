"""Dual adversarial training (DAT): one classifier that is robust and also generates.

Yin et al., "Joint Discriminative-Generative Modeling via Dual Adversarial Training" (2025).
The classifier's logsumexp ``s(x) = logsumexp_c f(x)_c`` is read as an energy. Instead of JEM's
SGLD, the energy is trained adversarially: contrastive samples are made by gradient ascent on a
class logit from out-of-distribution seeds, and a BCE loss pushes ``s`` up on real data and down
on them. Alongside, the classifier is adversarially trained (PGD-l2). Two stages:

1. **Stage 1**: PGD-AT (l2) with BatchNorm in train mode. It is literally our ``pgd-at`` defense
   with the same settings, so it is cached once and shared with a PGD-AT baseline in the matrix.
2. **Stage 2**: from stage 1, BatchNorm held in eval mode (running statistics frozen, affine
   parameters still trained). Per batch::

       x_gen = ascent(f, ood_seeds, target = y_in, T steps, l2 step, no eps, clamp)
       L = BCE(s(x_in) -> 1, s(x_gen) -> 0) + CE(f(PGD_l2(x_clf)), y_clf)

   SGD with Nesterov momentum, weight decay, an EMA of the weights (the returned model), no
   gradient penalty. Curriculum: T starts at 0 and grows by 1 when the mean training AUC of
   s(x_in) vs s(x_gen) over the last ``auc_window`` batches reaches ``auc_threshold``; the window
   then restarts, so each increase is earned by ``auc_window`` batches at the current T.

Hyper-parameters follow the official configuration (``methods.md`` section b), scaled to 16x16
digits: l2 eps 1.0 (quickstart's l2 budget), PGD step eps/5 for 10 steps, generation step 0.2,
and an EMA decay of 0.99 instead of 0.999: stage 2 here is about 660 SGD steps, and with 0.999
the EMA would still hold half of the stage-1 weights at the end.
``bn_mode="train"`` is the paper's unstable ablation (BatchNorm in train mode in stage 2).
"""

from __future__ import annotations

import copy
import logging
import math
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
from robustbench_cl.attacks.generation import class_conditional_ascent, ood_seeds
from robustbench_cl.attacks.pgd import PGD
from robustbench_cl.data.base import TensorData
from robustbench_cl.defenses.at import PGDAdversarialTraining
from robustbench_cl.defenses.base import Defense
from robustbench_cl.errors import UserError
from robustbench_cl.models.artifacts import (
    artifact_exists,
    artifact_lock,
    load_artifact_config,
    load_artifact_weights,
    save_artifact,
)
from robustbench_cl.models.wrappers import Frozen
from robustbench_cl.registry import register_defense
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import seeded

logger = logging.getLogger(__name__)


def energy_logit(logits: torch.Tensor) -> torch.Tensor:
    """DAT's realness logit s(x) = logsumexp of the class logits."""
    return torch.logsumexp(logits, dim=1)


def energy_bce(s_real: torch.Tensor, s_generated: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits of s(real) -> 1 and s(generated) -> 0, averaged over both halves (2B)."""
    logits = torch.cat([s_real, s_generated])
    labels = torch.cat([torch.ones_like(s_real), torch.zeros_like(s_generated)])
    return F.binary_cross_entropy_with_logits(logits, labels)


def batch_auc(s_real: torch.Tensor, s_generated: torch.Tensor) -> torch.Tensor:
    """AUC of s(real) vs s(generated) within a batch (ties count one half), on the device."""
    diff = s_real[:, None] - s_generated[None, :]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean()


class Curriculum:
    """T += 1 when the mean AUC over the last ``window`` batches reaches ``threshold``."""

    def __init__(self, threshold: float, window: int, max_steps: int, start: int = 0) -> None:
        self.threshold, self.window, self.max_steps = threshold, window, max_steps
        self.steps = start
        self._recent: list[float] = []

    def update(self, auc: float) -> bool:
        self._recent.append(auc)
        if len(self._recent) < self.window:
            return False
        mean = sum(self._recent[-self.window :]) / self.window
        self._recent = self._recent[-self.window :]
        if mean >= self.threshold and self.steps < self.max_steps:
            self.steps += 1
            self._recent = []  # the next increase needs a full window at the new T
            return True
        return False


def freeze_batchnorm(model: nn.Module) -> None:
    """BatchNorm layers to eval mode: running statistics stay fixed, affine params still train."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class _EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema, live in zip(self.model.parameters(), model.parameters()):
            ema.lerp_(live.detach(), 1 - self.decay)
        for ema, live in zip(self.model.buffers(), model.buffers()):
            ema.copy_(live)


@register_defense("dat")
class DualAdversarialTraining(Defense):
    """Dual adversarial training: PGD-AT stage 1, then energy BCE + PGD-AT with frozen BatchNorm.

    Args:
        eps: the l2 radius of the PGD adversarial examples (both stages).
        pgd_steps: PGD iterations per adversarial example.
        pgd_step_size: the PGD step; `None` uses `eps / 5`.
        stage1_epochs: epochs of stage 1 (plain PGD-AT).
        stage1_lr: stage 1's learning rate.
        epochs: epochs of stage 2 (energy BCE + PGD-AT).
        lr: stage 2's SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: samples per step.
        gen_step_size: step of the generated (negative) samples' gradient ascent.
        max_gen_steps: the most generation steps (the schedule grows them while the energy AUC
            stays above `auc_threshold`).
        auc_threshold: the energy AUC (real vs generated) above which generation gets more
            steps.
        auc_window: batches over which that AUC is measured.
        ema_decay: decay of the weights' exponential moving average (the kept model).
        bn_mode: `eval` freezes BatchNorm in stage 2 (DAT); `train` is the ablation.
        seed: the training seed.
    """

    name = "dat"
    kind = "training"
    version = 1

    def __init__(
        self,
        eps: float = 1.0,
        pgd_steps: int = 10,
        pgd_step_size: float | None = None,
        stage1_epochs: int = 30,
        stage1_lr: float = 2e-3,
        epochs: int = 30,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        batch_size: int = 64,
        gen_step_size: float = 0.2,
        max_gen_steps: int = 40,
        auc_threshold: float = 0.8,
        auc_window: int = 8,
        ema_decay: float = 0.99,
        bn_mode: str = "eval",
        seed: int = 0,
    ) -> None:
        eps = budget_param("eps", eps)
        pgd_step_size = budget_param("pgd_step_size", pgd_step_size)
        for field, value in (
            ("pgd_steps", pgd_steps),
            ("stage1_epochs", stage1_epochs),
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("max_gen_steps", max_gen_steps),
            ("auc_window", auc_window),
        ):
            require_int(field, value)
        for field, value in (("eps", eps), ("lr", lr), ("gen_step_size", gen_step_size)):
            require_number(field, value)
        if bn_mode not in ("eval", "train"):
            raise UserError("bn_mode", f"unknown {bn_mode!r}", "use eval (DAT) or train (ablation)")
        if not 0 < auc_threshold <= 1:
            raise UserError("auc_threshold", f"must be in (0, 1], got {auc_threshold}")
        self.eps = eps
        self.pgd_steps = pgd_steps
        self.pgd_step_size = pgd_step_size if pgd_step_size is not None else eps / 5
        self.stage1_epochs = stage1_epochs
        self.stage1_lr = stage1_lr
        self.epochs = epochs
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.gen_step_size = gen_step_size
        self.max_gen_steps = max_gen_steps
        self.auc_threshold = auc_threshold
        self.auc_window = auc_window
        self.ema_decay = ema_decay
        self.bn_mode = bn_mode
        self.seed = seed
        self._threat = ThreatModel(norm="l2", eps=eps)

    def stage1(self) -> PGDAdversarialTraining:
        """The stage-1 defense: ``pgd-at`` l2 with these settings (shared cache)."""
        return PGDAdversarialTraining(
            norm="l2",
            eps=self.eps,
            steps=self.pgd_steps,
            step_size=self.pgd_step_size,
            epochs=self.stage1_epochs,
            lr=self.stage1_lr,
            batch_size=self.batch_size,
            from_scratch=True,
            seed=self.seed,
        )

    def cache_path(self, model_spec: str, data: TensorData) -> Path:
        # stage 2 starts from stage 1: a new PGD-AT version must invalidate DAT too
        return super().cache_path(f"{model_spec}#pgd-at-v{PGDAdversarialTraining.version}", data)

    def build(self, model: Frozen, model_spec: str, data: TensorData) -> nn.Module:
        path = self.cache_path(model_spec, data)
        stage1 = self.stage1().build(model, model_spec, data)
        network = copy.deepcopy(getattr(stage1, "model", stage1))
        with artifact_lock(path):
            if artifact_exists(path):
                load_artifact_weights(path, network)
                return Frozen(network)
            logger.info(
                "training dat stage 2 (bn %s) on %s; cached at %s", self.bn_mode, model_spec, path
            )
            ema, log = self.train_stage2(network.requires_grad_(True), data)
            save_artifact(
                path, ema, {"defense": self.name, "settings": self.settings(), "log": log}
            )
        return Frozen(ema)

    def training_log(self, model_spec: str, data: TensorData) -> dict[str, Any] | None:
        """The stage-2 log (AUC trace, curriculum T, NaN count) of a cached DAT model."""
        path = self.cache_path(model_spec, data)
        return load_artifact_config(path).get("log") if artifact_exists(path) else None

    def train_stage2(self, network: nn.Module, data: TensorData) -> tuple[nn.Module, dict]:
        device = next(network.parameters()).device
        generator = torch.Generator().manual_seed(self.seed)
        with seeded(self.seed):
            x, y = data.x.to(device), data.y.to(device)
            optimizer = torch.optim.SGD(
                network.parameters(),
                lr=self.lr,
                momentum=self.momentum,
                nesterov=True,
                weight_decay=self.weight_decay,
            )
            ema = _EMA(network, self.ema_decay)
            attack = PGD(
                steps=self.pgd_steps,
                step_size=self.pgd_step_size,
                random_start=False,
                keep_best=False,
            )
            curriculum = Curriculum(self.auc_threshold, self.auc_window, self.max_gen_steps)
            aucs, steps_trace, losses, nan_batches = [], [], [], 0
            for _ in range(self.epochs):
                order_in = torch.randperm(len(y), generator=generator).to(device)
                order_clf = torch.randperm(len(y), generator=generator).to(device)
                for start in range(0, len(y) - self.batch_size + 1, self.batch_size):
                    rows_in = order_in[start : start + self.batch_size]
                    rows_clf = order_clf[start : start + self.batch_size]
                    x_in, y_in = x[rows_in], y[rows_in]
                    x_clf, y_clf = x[rows_clf], y[rows_clf]
                    seeds = ood_seeds(len(rows_in), x, generator)
                    network.eval()
                    x_gen = class_conditional_ascent(
                        network, seeds, y_in, curriculum.steps, self.gen_step_size, data.bounds
                    )
                    with inputs_only_gradients(network):
                        x_adv = attack.perturb(network, x_clf, y_clf, self._threat).adv.detach()
                    network.train()
                    if self.bn_mode == "eval":
                        freeze_batchnorm(network)
                    s_real = energy_logit(network(x_in))
                    s_gen = energy_logit(network(x_gen))
                    loss = energy_bce(s_real, s_gen) + F.cross_entropy(network(x_adv), y_clf)
                    auc = float(batch_auc(s_real.detach(), s_gen.detach()))  # once per batch
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        nan_batches += 1
                        optimizer.zero_grad(set_to_none=True)
                        continue
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    ema.update(network)
                    aucs.append(round(auc, 4))
                    losses.append(round(value, 4))
                    curriculum.update(auc)
                    steps_trace.append(curriculum.steps)
            network.eval()
            log = {
                "auc": aucs,
                "gen_steps": steps_trace,
                "loss": losses,
                "nan_batches": nan_batches,
                "final_gen_steps": curriculum.steps,
                "auc_std_last_100": _std(aucs[-100:]),
            }
            return ema.model, log


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
