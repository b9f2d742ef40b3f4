"""Privacy metrics: screen leakage (PLR, TSR, image quality) and membership inference.

Screen leakage, following DualTAP's ``eval.py``:

- a PII field is *leaked* when ``difflib.SequenceMatcher(None, true.lower(), read.lower())``
  has ratio > 0.6 (PLR = leaked fields / fields); *exactly leaked* when the normalised true value
  (lower case, only letters, digits and ``@.+-_``) appears in the normalised whole reading;
- the zero-leak rate: screens with no field leaked;
- a task succeeds when the normalised keyword (lower case, punctuation to spaces, action words
  like "tap" and suffixes like "button" removed) is in the normalised reading, with or without
  spaces, or all its content words (3+ letters, not stop words) are;
- PSNR and SSIM of the protected screen against the original.

Membership inference, with the conventions of Carlini et al. (2022), ML Privacy Meter
and ART, so that our numbers compare with theirs.

- ROC from the scores (higher = member), ``roc_curve`` thresholds, no interpolation.
- TPR at a fixed FPR alpha: ``tpr[max{i : fpr[i] <= alpha}]``.
- Membership advantage: ``max_t |TPR(t) - FPR(t)|`` (Yeom et al., Def. 4).
- 95% intervals by a stratified bootstrap over examples; thresholds are re-chosen in every
  resample. The number of non-members is reported: 1 / n_nonmembers is the FPR resolution.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Any

import numpy as np
import torch

ALPHAS = (0.01, 0.001)
LEAK_RATIO = 0.6
MASK = "*"
ACTION_WORDS = ("tap", "click", "press", "select", "choose", "open", "the")
SUFFIXES = ("button", "icon", "tab", "link", "option")
STOP_WORDS = frozenset("a an the and or of to in on for with at by from".split())


def field_ratio(true: str, read: str) -> float:
    return SequenceMatcher(None, true.lower(), read.lower()).ratio()


def field_leaked(true: str, read: str) -> bool:
    """DualTAP's rule: a field is leaked when the match ratio exceeds 0.6."""
    return field_ratio(true, read) > LEAK_RATIO


def normalise_value(text: str) -> str:
    return re.sub(r"[^a-z0-9@.+\-_]", "", text.lower())


def field_exact(true: str, reading: str) -> bool:
    """Exact leakage: the normalised true value appears in the normalised reading."""
    value = normalise_value(true)
    return bool(value) and value in normalise_value(reading)


def normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def normalise_keyword(keyword: str) -> str:
    words = normalise_text(keyword).split()
    while words and words[0] in ACTION_WORDS:
        words = words[1:]
    while len(words) > 1 and words[-1] in SUFFIXES:
        words = words[:-1]
    return " ".join(words)


def task_success(keyword: str, answer: str) -> bool:
    """DualTAP's keyword-containment rule for functional answers."""
    wanted, text = normalise_keyword(keyword), normalise_text(answer)
    if not wanted:
        return False
    if wanted in text or wanted.replace(" ", "") in text.replace(" ", ""):
        return True
    content = [w for w in wanted.split() if len(w) >= 3 and w not in STOP_WORDS]
    return bool(content) and all(w in text.split() for w in content)


def mask_pii(text: str) -> str:
    """Mask personal data for display: keep the first character of each word and the shape.

    ``"john.doe@example.com"`` -> ``"j***.d**@e******.c**"``; digits are always masked.
    """

    def word(match: re.Match[str]) -> str:
        token = match.group(0)
        if token.isdigit():
            return MASK * len(token)
        first = MASK if token[0].isdigit() else token[0]
        return first + MASK * (len(token) - 1)

    return re.sub(r"[^\W_]+", word, str(text))


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image, in dB, for images in [0, 1] (inf when identical)."""
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per image, the mean SSIM (11x11 Gaussian window, kornia)."""
    import kornia

    return kornia.metrics.ssim(x, y, 11).flatten(1).mean(1)


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
