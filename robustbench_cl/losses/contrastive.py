"""Contrastive losses, batched and vectorised. Each is tested against a slow loop reference.

Conventions: embeddings are L2-normalised inside each loss (cosine similarity), ``temperature``
divides similarities, and losses are means over anchors. Views are ``(batch, dim)`` pairs, or a
``(batch, views, dim)`` tensor for the multi-view losses.

- :func:`info_nce` (NT-Xent, SimCLR): each of the 2B embeddings against its positive, with the
  other 2B - 2 as negatives.
- :func:`dcl` (Yeh et al. 2022): the positive removed from the denominator; ``weighted=True`` is
  DCLW with the paper's weight ``w_i = 2 - exp(s_ii / sigma) / mean_k exp(s_kk / sigma)``.
- :func:`mv_infonce` and :func:`mv_dhel` (Koromilas et al. 2025), following their code.
- :func:`hard_negative_info_nce`: InfoNCE with MoCHi-style synthetic hard negatives, convex
  mixtures of the anchor's hardest negatives.
- :func:`cwcl` (Srinivasa et al. 2023): continuously weighted positives, the weights being
  intra-modal similarities rescaled to [0, 1].
- :func:`mw_loss` (Mann-Whitney/AUC loss): mean softplus(s_neg - s_pos) over all positive-negative
  score pairs of a query-document similarity matrix (positives on the diagonal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustbench_cl.errors import UserError


def _normalise(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(z, dim=-1)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent over 2B embeddings: -log exp(s_pos/t) / sum_{k != self} exp(s_k/t)."""
    z = _normalise(torch.cat([z1, z2]))
    n = len(z1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def _dcl_one_side(
    a: torch.Tensor, b: torch.Tensor, temperature: float, weights: torch.Tensor | None
):
    n = len(a)
    eye = torch.eye(n, dtype=torch.bool, device=a.device)
    positive = (a * b).sum(1) / temperature
    within = (a @ a.T / temperature).masked_fill(eye, float("-inf"))
    across = (a @ b.T / temperature).masked_fill(eye, float("-inf"))
    negatives = torch.logsumexp(torch.cat([within, across], dim=1), dim=1)
    if weights is not None:
        positive = positive * weights
    return (-positive + negatives).mean()


def dcl(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    weighted: bool = False,
    sigma: float = 0.5,
) -> torch.Tensor:
    """Decoupled contrastive loss, symmetrised; DCLW when ``weighted``."""
    a, b = _normalise(z1), _normalise(z2)
    weights = None
    if weighted:
        similarity = (a * b).sum(1) / sigma
        weights = 2 - len(a) * torch.softmax(similarity, dim=0)  # 2 - exp(s)/mean exp(s)
        weights = weights.detach()
    return _dcl_one_side(a, b, temperature, weights) + _dcl_one_side(b, a, temperature, weights)


def _views(u: torch.Tensor) -> torch.Tensor:
    if u.dim() != 3 or u.shape[1] < 2:
        raise UserError("views", f"expected (batch, views >= 2, dim), got {tuple(u.shape)}")
    return _normalise(u)


def mv_infonce(views: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """MV-InfoNCE: per row (i, l), log of [2 sum_{l<l'} exp(s_il,il')] over all other rows."""
    u = _views(views)
    m, n, _ = u.shape
    flat = u.reshape(m * n, -1)
    sim = flat @ flat.T / temperature
    owner = torch.arange(m, device=u.device).repeat_interleave(n)
    same = owner[:, None] == owner[None, :]
    eye = torch.eye(m * n, dtype=torch.bool, device=u.device)
    # pos_i = 2 sum_{l<l'} exp(s) = the sum over all ordered pairs (l != l') of instance i;
    # the rows of instance i are contiguous, so one logsumexp over its block of rows gives it
    pair_mask = same & ~eye
    per_instance = torch.logsumexp(
        sim.masked_fill(~pair_mask, float("-inf")).reshape(m, n * m * n), dim=1
    )
    negative = torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1)
    return (negative - per_instance[owner]).mean()


def mv_dhel(views: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """MV-DHEL: -log sum_{l<l'} exp(s_il,il') + sum_l log sum_{j != i} exp(s_il,jl)."""
    u = _views(views)
    m, n, _ = u.shape
    within = torch.einsum("ild,ikd->ilk", u, u) / temperature  # (m, n, n) same instance
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=u.device), diagonal=1)
    positive = torch.logsumexp(within[:, upper], dim=1)  # (m,)
    per_view = torch.einsum("ild,jld->lij", u, u) / temperature  # (n, m, m) same view
    eye = torch.eye(m, dtype=torch.bool, device=u.device)
    negative = torch.logsumexp(per_view.masked_fill(eye, float("-inf")), dim=2)  # (n, m)
    return (-positive + negative.sum(0)).mean()


def mochi_negatives(
    anchors: torch.Tensor,
    negatives: torch.Tensor,
    n_hardest: int,
    n_synthetic: int,
    generator: torch.Generator | None = None,
    exclude_diagonal: bool = True,
) -> torch.Tensor:
    """Per anchor, ``n_synthetic`` normalised convex mixtures of two of its ``n_hardest``
    negatives (the most similar ones), as in MoCHi. Returns (B, n_synthetic, d)."""
    a, neg = _normalise(anchors), _normalise(negatives)
    sim = a @ neg.T
    if exclude_diagonal and sim.shape[0] == sim.shape[1]:
        sim = sim.masked_fill(torch.eye(len(a), dtype=torch.bool, device=a.device), float("-inf"))
    k = min(n_hardest, neg.shape[0] - (1 if exclude_diagonal else 0))
    hardest = sim.topk(k, dim=1).indices  # (B, k)
    pick = torch.randint(0, k, (len(a), n_synthetic, 2), generator=generator).to(a.device)
    first = neg[hardest.gather(1, pick[..., 0])]
    second = neg[hardest.gather(1, pick[..., 1])]
    alpha = torch.rand(len(a), n_synthetic, 1, generator=generator).to(a.device)
    return _normalise(alpha * first + (1 - alpha) * second).detach()


def hard_negative_info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.5,
    n_hardest: int = 8,
    n_synthetic: int = 8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One-sided InfoNCE (z1 anchors, z2 positives, other z2 negatives) plus MoCHi negatives."""
    a, b = _normalise(z1), _normalise(z2)
    logits = a @ b.T / temperature  # positives on the diagonal
    synthetic = mochi_negatives(a, b, n_hardest, n_synthetic, generator)
    extra = torch.einsum("bd,bkd->bk", a, synthetic) / temperature
    full = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(full, torch.arange(len(a), device=a.device))


def cwcl(
    z1: torch.Tensor, z2: torch.Tensor, reference: torch.Tensor, temperature: float = 0.5
) -> torch.Tensor:
    """Continuously weighted contrastive loss (z1 -> z2), weights from ``reference`` similarity.

    w_ij = (1 + cos(ref_i, ref_j)) / 2 in [0, 1] (w_ii = 1); the loss is
    mean_i [ -sum_j w_ij log softmax_j(s_ij / t) / sum_j w_ij ].
    """
    a, b, r = _normalise(z1), _normalise(z2), _normalise(reference)
    weights = ((1 + r @ r.T) / 2).detach()
    log_prob = torch.log_softmax(a @ b.T / temperature, dim=1)
    return (-(weights * log_prob).sum(1) / weights.sum(1)).mean()


def mw_loss(scores: torch.Tensor) -> torch.Tensor:
    """Mann-Whitney loss on a (queries x documents) score matrix with positives on the diagonal.

    Pools every positive against every negative (global separation, not per query):
    mean over (p, n) of softplus(s_n - s_p) = BCE(sigmoid(s_p - s_n), 1); AoC <= loss / log 2.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise UserError("scores", f"expected a square matrix, got {tuple(scores.shape)}")
    eye = torch.eye(len(scores), dtype=torch.bool, device=scores.device)
    positives = scores[eye]
    negatives = scores[~eye]
    return F.softplus(negatives[None, :] - positives[:, None]).mean()


LOSSES = {"infonce": info_nce, "dcl": dcl, "dclw": lambda a, b, t: dcl(a, b, t, weighted=True)}


def pair_loss(name: str):  # noqa: ANN201
    """A two-view loss by config name: ``infonce``, ``dcl`` or ``dclw``."""
    if name not in LOSSES:
        raise UserError(
            "loss", f"unknown contrastive loss {name!r}", f"use one of {', '.join(LOSSES)}"
        )
    return LOSSES[name]
