"""How generated samples are scored: the judge's accuracy on the intended class, a mini-FID on
the judge's features, and an OOD AUROC; the seeds, the sampler and the sample grid."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from robustbench_cl.attacks.generation import SEED_KINDS, class_conditional_ascent, ood_seeds
from robustbench_cl.data import TensorData
from robustbench_cl.privacy.metrics import auc as roc_auc
from robustbench_cl.privacy.metrics import roc
from robustbench_cl.tasks.generation.config import GenerationConfig
from robustbench_cl.tasks.generation.results import _training_summary


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Inputs of the last Linear layer of a Sequential classifier."""
    model = getattr(model, "model", model)
    if not isinstance(model, nn.Sequential) or not isinstance(model[-1], nn.Linear):
        raise TypeError("the judge must be an nn.Sequential ending in an nn.Linear layer")
    body = model[:-1]
    device = next(model.parameters()).device
    return torch.cat([body(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)])


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)), in float64.

    Like FID it is biased upwards for small sample counts; compare numbers computed with the
    same counts only (the suites keep them fixed).
    """
    from scipy import linalg

    a64, b64 = a.double().cpu().numpy(), b.double().cpu().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    cov_a, cov_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    with warnings.catch_warnings():  # singular covariances (fewer samples than features)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(root):
        root = root.real
    value = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))
    return max(value, 0.0)


def _auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    scores = torch.cat([positive, negative]).double().cpu().numpy()
    labels = np.concatenate([np.ones(len(positive), bool), np.zeros(len(negative), bool)])
    fpr, tpr = roc(scores, labels)
    return roc_auc(fpr, tpr)


class GenerationAudit:
    def __init__(
        self,
        config: GenerationConfig,
        train: TensorData,
        evaluation: TensorData,
        judge: nn.Module,
        seed: int,
        device: torch.device,
    ) -> None:
        self.config, self.seed, self.device = config, seed, device
        self.judge = judge.to(device).eval()
        self.real = evaluation.x.to(device)
        self.bounds = evaluation.bounds
        self.n_classes = evaluation.n_classes
        per_class = config.n_per_class
        generator = torch.Generator().manual_seed(seed)
        self.classes = (
            list(config.classes) if config.classes is not None else list(range(self.n_classes))
        )
        self.targets = torch.tensor(self.classes).repeat_interleave(per_class).to(device)
        self.seeds = ood_seeds(len(self.targets), train.x.to(device), generator)
        # OOD detection: one batch per seed kind, shaped like the evaluation set
        self.ood = {
            kind: ood_seeds(len(self.real), train.x.to(device), generator, kinds=(kind,))
            for kind in SEED_KINDS
        }
        self.real_features = penultimate_features(self.judge, self.real)
        self.reference = {
            "fid_train_vs_eval": frechet_distance(
                penultimate_features(self.judge, train.x[: len(self.real)]), self.real_features
            ),
            "fid_seeds_vs_eval": frechet_distance(
                penultimate_features(self.judge, self.seeds), self.real_features
            ),
        }

    def sample(self, model: nn.Module) -> torch.Tensor:
        return class_conditional_ascent(
            model, self.seeds, self.targets, self.config.steps, self.config.step_size, self.bounds
        )

    def run(
        self, model: nn.Module, training_log: dict[str, Any] | None
    ) -> tuple[dict[str, Any], torch.Tensor]:
        samples = self.sample(model)
        with torch.no_grad():
            judged = self.judge(samples).argmax(1)
            s_real = torch.logsumexp(model(self.real), 1)
            ood = {kind: torch.logsumexp(model(x), 1) for kind, x in self.ood.items()}
        per_kind = {kind: _auroc(s_real, s) for kind, s in ood.items()}
        record: dict[str, Any] = {
            "n_samples": len(samples),
            "steps": self.config.steps,
            "step_size": self.config.step_size,
            "intended_class_accuracy": float((judged == self.targets).float().mean()),
            "mini_fid": frechet_distance(
                penultimate_features(self.judge, samples), self.real_features
            ),
            **self.reference,
            "ood_auroc": _auroc(s_real, torch.cat(list(ood.values()))),
            "ood_auroc_by_kind": per_kind,
            "samples_in_bounds": bool(
                ((samples >= self.bounds[0]) & (samples <= self.bounds[1])).all()
            ),
            "training": _training_summary(training_log),
        }
        return record, samples


def sample_grid(samples: torch.Tensor, per_class: int, n_classes: int, columns: int = 8):  # noqa: ANN201
    """A (classes x min(per_class, columns)) grid image tensor, one row per class."""
    shown = min(per_class, columns)
    rows = samples.view(n_classes, per_class, *samples.shape[1:])[:, :shown]
    c, h, w = samples.shape[1:]
    pad = 1
    grid = torch.ones(c, n_classes * (h + pad) + pad, shown * (w + pad) + pad)
    for i in range(n_classes):
        for j in range(shown):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, top : top + h, left : left + w] = rows[i, j].cpu()
    return grid
