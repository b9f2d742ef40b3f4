"""Membership-inference metrics, with the conventions of Carlini et al. (2022), ML Privacy Meter
and ART, so that our numbers compare with theirs.

- ROC from the scores (higher = member), ``roc_curve`` thresholds, no interpolation.
- TPR at a fixed FPR alpha: ``tpr[max{i : fpr[i] <= alpha}]``.
- Membership advantage: ``max_t |TPR(t) - FPR(t)|`` (Yeom et al., Def. 4).
- 95% intervals by a stratified bootstrap over examples; thresholds are re-chosen in every
  resample. The number of non-members is reported: 1 / n_nonmembers is the FPR resolution.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

ALPHAS = (0.01, 0.001)


def roc(scores: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(members.astype(int), scores, drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, alpha: float) -> float:
    """TPR at the largest ROC index whose FPR is <= alpha (0 when none is)."""
    allowed = np.nonzero(fpr <= alpha)[0]
    return float(tpr[allowed[-1]]) if len(allowed) else 0.0


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    from sklearn.metrics import auc as area

    return float(area(fpr, tpr))


def advantage(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.max(np.abs(tpr - fpr)))


def _point(scores: np.ndarray, members: np.ndarray, alphas: tuple[float, ...]) -> dict[str, Any]:
    fpr, tpr = roc(scores, members)
    return {
        "auc": auc(fpr, tpr),
        "advantage": advantage(fpr, tpr),
        "tpr_at_fpr": {f"{a:g}": tpr_at_fpr(fpr, tpr, a) for a in alphas},
    }


def _downsample(fpr: np.ndarray, tpr: np.ndarray, points: int = 200) -> tuple[list, list]:
    """Keep the ROC's low-FPR corner exactly, and at most ``points`` points in all."""
    if len(fpr) <= points:
        return fpr.tolist(), tpr.tolist()
    grid = np.unique(np.concatenate([np.geomspace(1e-5, 1, points), [0.0]]))
    index = np.unique(np.clip(np.searchsorted(fpr, grid, side="right") - 1, 0, len(fpr) - 1))
    return fpr[index].tolist(), tpr[index].tolist()


def membership_metrics(
    scores: torch.Tensor | np.ndarray,
    members: torch.Tensor | np.ndarray,
    alphas: tuple[float, ...] = ALPHAS,
    bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC, TPR at each FPR in ``alphas`` and advantage, each with a bootstrap 95% interval."""
    scores = np.asarray(torch.as_tensor(scores).detach().cpu().double())
    members = np.asarray(torch.as_tensor(members).detach().cpu().bool())
    if not np.isfinite(scores).all():
        raise ValueError("membership scores contain NaN or Inf")
    point = _point(scores, members, alphas)
    rng = np.random.default_rng(seed)
    inside, outside = np.nonzero(members)[0], np.nonzero(~members)[0]
    draws: list[dict[str, Any]] = []
    for _ in range(bootstrap):
        sample = np.concatenate(
            [rng.choice(inside, len(inside)), rng.choice(outside, len(outside))]
        )
        draws.append(_point(scores[sample], members[sample], alphas))

    def interval(values: list[float]) -> list[float]:
        return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]

    fpr, tpr = roc(scores, members)
    curve_fpr, curve_tpr = _downsample(fpr, tpr)
    return {
        "n_members": int(members.sum()),
        "n_nonmembers": int((~members).sum()),
        "fpr_resolution": 1.0 / max(int((~members).sum()), 1),
        "auc": point["auc"],
        "auc_ci95": interval([d["auc"] for d in draws]),
        "advantage": point["advantage"],
        "advantage_ci95": interval([d["advantage"] for d in draws]),
        "tpr_at_fpr": point["tpr_at_fpr"],
        "tpr_at_fpr_ci95": {
            key: interval([d["tpr_at_fpr"][key] for d in draws]) for key in point["tpr_at_fpr"]
        },
        "bootstrap": bootstrap,
        "fpr": curve_fpr,
        "tpr": curve_tpr,
    }
