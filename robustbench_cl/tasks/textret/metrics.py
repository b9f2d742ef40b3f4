"""Ranking metrics: the rank of the relevant passage, nDCG@10, MRR and recall, the score AUC
and the attack success rate at k."""

from __future__ import annotations

from typing import Any

import torch

from robustbench_cl.engine.metrics import rate_entry
from robustbench_cl.tasks.textret.config import KS


def ranks(
    query: torch.Tensor, passages: torch.Tensor, relevant: list[torch.Tensor]
) -> torch.Tensor:
    """1-based rank of each query's best-ranked relevant passage among all passages."""
    return _ranks(query @ passages.T, relevant)


def ndcg10(
    query: torch.Tensor, passages: torch.Tensor, relevant: list[torch.Tensor]
) -> torch.Tensor:
    """nDCG@10 with binary relevance, per query."""
    return _ndcg10(query @ passages.T, relevant)


def _ranks(scores: torch.Tensor, relevant: list[torch.Tensor]) -> torch.Tensor:
    best = torch.stack([scores[i, rel].max() for i, rel in enumerate(relevant)])
    return (scores > best[:, None]).sum(1) + 1


def _ndcg10(scores: torch.Tensor, relevant: list[torch.Tensor]) -> torch.Tensor:
    top = scores.topk(min(10, scores.shape[1]), dim=1).indices
    gains = []
    for row, rel in enumerate(relevant):
        hit = torch.isin(top[row], rel.to(top.device)).float()
        discount = 1 / torch.log2(torch.arange(2, len(hit) + 2, device=hit.device).float())
        ideal = discount[: min(len(rel), len(hit))].sum()
        gains.append((hit * discount).sum() / ideal)
    return torch.stack(gains)


def replaced_scores(query, passages, attacked, positive) -> torch.Tensor:  # noqa: ANN001
    """Query-passage scores when (only) each query's own relevant passage is replaced by its
    attacked version (the passage attack: one edited passage per query)."""
    scores = query @ passages.T
    scores[torch.arange(len(query), device=query.device), positive] = (query * attacked).sum(-1)
    return scores


def score_auc(scores: torch.Tensor, relevant: list[torch.Tensor]) -> dict[str, float]:
    """ROC-AUC of the query-passage scores, relevant pairs against the rest: ``global_auc``
    pools every pair of every query (one threshold for all queries: what the MW loss targets),
    ``per_query_auc`` averages each query's own AUC (the ordering InfoNCE optimises)."""
    positive = torch.zeros_like(scores, dtype=torch.bool)
    for row, rel in enumerate(relevant):
        positive[row, rel] = True
    flat, labels = scores.flatten(), positive.flatten()
    order = flat.argsort()
    ranks_ = torch.empty_like(order, dtype=torch.float64)
    ranks_[order] = torch.arange(1, len(flat) + 1, dtype=torch.float64, device=flat.device)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    global_auc = (ranks_[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    per_query = []
    for row in range(scores.shape[0]):
        pos, neg = scores[row][positive[row]], scores[row][~positive[row]]
        per_query.append((pos[:, None] > neg[None, :]).double().mean())
    return {"global_auc": float(global_auc), "per_query_auc": float(torch.stack(per_query).mean())}


def metrics(rank: torch.Tensor, ndcg: torch.Tensor) -> dict[str, float]:
    out = {
        "mrr@10": float(((1 / rank.float()) * (rank <= 10)).mean()),
        "ndcg@10": float(ndcg.mean()),
    }
    out.update({f"r@{k}": float((rank <= k).float().mean()) for k in KS})
    return out


def _asr(before: torch.Tensor, after: torch.Tensor) -> dict[str, dict[str, Any]]:
    """ASR@k: of the queries whose relevant passage ranked within k before, those it does not
    after."""
    asr = {}
    for k in KS:
        correct = before <= k
        asr[f"@{k}"] = rate_entry(int((correct & (after > k)).sum()), int(correct.sum()))
    return asr
