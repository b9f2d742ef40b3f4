"""Attacks on dense text retrievers (a :class:`~robustbench_cl.models.biencoder.BiEncoder`).

Every attack is white-box on the retriever it is given (a defended retriever's head included:
adaptive) and returns, per query, the perturbed text's features, so the task ranks the whole
corpus with them.

- ``hotflip`` (token space, l0: ``eps`` = k tokens): HotFlip-style greedy substitutions in the
  *query* (``side: query``) or in its relevant *passage* (``side: passage``). Each of k steps
  ranks every (position, token) swap by the first-order change of the margin ``s(q, d+) -
  max_{d != d+} s(q, d)`` (the gradient w.r.t. the one-hot tokens, through the input
  embeddings), evaluates the ``candidates`` best swaps exactly, and keeps the best one. [CLS],
  [SEP] and padding are never swapped, and a position is swapped at most once.
- ``embedding-query`` (embedding space, per-token l2, ``eps_relative``: eps times the mean
  token-embedding norm): PGD on the query's input embeddings, the same margin; an upper bound
  on what token swaps can do (no real text has these embeddings).
- ``corpus-poison`` (Zhong et al., EMNLP 2023): inject ``passages`` adversarial passages of
  ``length`` tokens, each optimised by HotFlip to be close to a k-means cluster of the
  attacker's training queries; success is a poison passage in the top k of an unseen query.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from robustbench_cl.attacks.base import AttackBase, Cost, report_step
from robustbench_cl.registry import register_attack
from robustbench_cl.threat import ThreatModel


@dataclass
class TextAttackResult:
    """Per query: the attacked query features (or, for a passage attack, the attacked relevant
    passage features and which passage they replace), the texts and the cost."""

    query_features: torch.Tensor  # (Q, d)
    passage_features: torch.Tensor | None = None  # (Q, d): the attacked relevant passage
    texts: list[str] = field(default_factory=list)
    poison_features: torch.Tensor | None = None  # (m, d): injected passages
    cost: Cost = field(default_factory=Cost)
    wall_time: float = 0.0
    history: list[float] = field(default_factory=list)  # mean margin per step
    #: against a re-ranking pipeline: the attacked queries' re-ranked scores (Q, N)
    reranked: torch.Tensor | None = None
    #: per text: its decoded text encodes back to the ids the attack chose (token attacks)
    retokenizes: list[bool] | None = None


class TextRetrievalAttack(AttackBase):
    tasks: ClassVar[frozenset[str]] = frozenset({"textret"})
    default_task: ClassVar[str] = "textret"


def _special_mask(retriever: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """True where a token may be swapped (not [CLS], [SEP], padding)."""
    tokenizer = retriever.encoder.tokenizer
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=ids.device)
    return mask.bool() & ~torch.isin(ids, special)


def _allowed_vocabulary(retriever: Any) -> torch.Tensor:
    """Token ids a swap may insert: not special, not [unused], not subword-only junk."""
    tokenizer = retriever.encoder.tokenizer
    vocabulary = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    keep = [
        i
        for token, i in vocabulary.items()
        if i not in special and not token.startswith("[") and token.isascii()
    ]
    return torch.tensor(sorted(keep), device=retriever.word_embeddings.device)


class RerankPipeline:
    """A retriever's top ``k`` passages re-ordered by a cross-encoder ranker, as one model.

    ``margin(embeds, mask, positive)``: differentiable w.r.t. the query's input embeddings, it
    is below 0 exactly when the relevant passage is not first after re-ranking: the smaller of
    (a) the ranker's logit for d+ minus the best logit of the other ``k - 1`` passages of the
    retriever's top k, and (b) the retriever's margin of d+ over the k-th best other passage
    (below 0: d+ is not among the candidates at all), in logit units (times the ranker's
    prior scale). ``scores`` gives the re-ranked scores over the whole corpus, as the textret
    task ranks them: the top k in the ranker's order, the rest in the retriever's.
    """

    def __init__(self, retriever: Any, ranker: Any, corpus: torch.Tensor, states: Any, k: int):
        self.retriever, self.ranker, self.corpus = retriever, ranker, corpus
        # the passages' token states on the corpus's device once, not per attack step
        self.states = states.states.to(corpus.device)
        self.states_mask = states.mask.to(corpus.device)
        self.k = min(k, corpus.shape[0])
        self.scale = ranker.prior_scale.detach()

    def _retrieve(self, embeds: torch.Tensor, mask: torch.Tensor):  # noqa: ANN202
        """The query's token states and its retriever scores over the corpus."""
        features, hidden = self.retriever.encode_embeds_with_states(embeds, mask)
        return hidden, features @ self.corpus.T

    def _rank(self, hidden: torch.Tensor, mask: torch.Tensor, index: torch.Tensor):  # noqa: ANN202
        """The ranker's logits of the passages ``index`` (Q, n) for each query."""
        passages = (self.states[index], self.states_mask[index])
        return self.ranker((hidden, mask.bool()), passages)

    def margin(self, embeds: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor):  # noqa: ANN201
        hidden, scores = self._retrieve(embeds, mask)
        rows = torch.arange(len(scores), device=scores.device)
        relevant = scores[rows, positive]
        excluded = torch.full((), -float("inf"), dtype=scores.dtype, device=scores.device)
        others = scores.index_put((rows, positive), excluded)
        top = others.topk(self.k, dim=1)
        retrieved = relevant - top.values[:, -1]  # > 0: d+ is in the retriever's top k
        if self.k == 1:  # the ranker sees d+ alone: only the retriever can be fooled
            return self.scale * retrieved
        candidates = torch.cat([positive[:, None], top.indices[:, : self.k - 1]], dim=1)
        logits = self._rank(hidden, mask, candidates)
        ranked = logits[:, 0] - logits[:, 1:].max(1).values
        return torch.minimum(ranked, self.scale * retrieved)

    def scores(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The re-ranked scores (Q, N): the retriever's top k above the rest, in the ranker's
        order (positions, so that tied logits cannot tie the ranking)."""
        hidden, scores = self._retrieve(embeds, mask)
        top = scores.topk(self.k, dim=1).indices
        return rerank_scores(scores, top, self._rank(hidden, mask, top))


def rerank_scores(scores: torch.Tensor, top: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``scores`` with each query's candidates ``top`` (N, K) moved above every other passage,
    in the order of the ranker's ``logits`` (N, K); ties, if any, keep the retriever's order.
    Positions, not the logits themselves: squashed or large logits would tie, and a tie counts
    in the relevant passage's favour."""
    reranked = scores.clone()
    order = logits.argsort(dim=1, descending=True, stable=True)
    rows = torch.arange(len(top), device=top.device)[:, None]
    above = reranked.max() + 1 + torch.arange(top.shape[1], 0, -1, dtype=reranked.dtype)
    reranked[rows, top[rows, order]] = above.to(reranked.device)
    return reranked


def _round_trips(retriever: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) bool: each row's text (decoded without special tokens) encodes back to its ids
    (the row's real tokens, ``mask``)."""
    rows, masks = ids.shape[0], mask
    tokenizer = retriever.encoder.tokenizer
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    again = tokenizer(texts, truncation=True, max_length=ids.shape[1])["input_ids"]
    out = [again[i] == ids[i][masks[i].bool()].tolist() for i in range(rows)]
    return torch.tensor(out, device=ids.device)


@register_attack("hotflip")
class HotFlip(TextRetrievalAttack):
    """HotFlip token swaps (k = eps tokens) in the query or its relevant passage. Distance: l0.

    Text-faithful: a swap whose decoded text does not encode back to the same ids (a word piece
    that joins its neighbour, say) is not taken, and the outcome is measured on the decoded text
    encoded again, as a user's query would be.

    Args:
        side: `query` swaps tokens of the query; `passage` of its relevant passage.
        candidates: best first-order swaps evaluated exactly per step.
        negatives: hardest negative passages per query in the loss.
        filter_retokenization: drop swaps whose text does not encode back to their ids.
    """

    name = "hotflip"
    norms = frozenset({"l0"})
    spaces = frozenset({"token"})

    def __init__(
        self,
        side: str = "query",
        candidates: int = 32,
        negatives: int = 64,
        filter_retokenization: bool = True,
    ) -> None:
        from robustbench_cl.errors import UserError

        if not isinstance(filter_retokenization, bool):
            raise UserError(
                "filter_retokenization", f"must be true or false, got {filter_retokenization!r}"
            )
        if side not in ("query", "passage"):
            raise UserError("side", f"must be query or passage, got {side!r}", "side: query")
        if candidates < 1 or negatives < 1:
            raise UserError("candidates", "candidates and negatives must be >= 1")
        self.side = side
        self.candidates = candidates
        self.negatives = negatives
        self.filter_retokenization = filter_retokenization

    def run(
        self,
        retriever: Any,
        queries: list[str],
        positives: list[str],
        corpus: torch.Tensor,
        positive_index: torch.Tensor,
        threat: ThreatModel,
        generator: torch.Generator | None = None,
        pipeline: RerankPipeline | None = None,
    ) -> TextAttackResult:
        """``corpus``: the retriever's passage features; ``positive_index``: each query's
        relevant passage row in it. With ``pipeline`` (query side only), the margin is that of
        the whole retrieve-then-re-rank pipeline (see :class:`RerankPipeline`): adaptive to the
        re-ranker."""
        start = time.perf_counter()
        k = int(threat.eps)
        cost = Cost()
        query_features = retriever.encode(queries)
        positive_features = corpus[positive_index]
        attacked_texts = queries if self.side == "query" else positives
        tokens = retriever.tokenize(attacked_texts)
        ids, mask = tokens["input_ids"].clone(), tokens["attention_mask"]
        allowed = _allowed_vocabulary(retriever)
        table = retriever.word_embeddings
        if pipeline is not None:
            if self.side != "query":
                raise ValueError("the re-ranking pipeline is attacked through the query only")

            def margin_of(embeds: torch.Tensor) -> torch.Tensor:
                return pipeline.margin(embeds, mask, positive_index)

            def margins_of(trial: torch.Tensor) -> torch.Tensor:  # (Q, C, L) -> (Q, C)
                return torch.stack(
                    [
                        pipeline.margin(table[trial[:, c]], mask, positive_index)
                        for c in range(trial.shape[1])
                    ],
                    dim=1,
                )
        else:
            # the hardest negatives of each query (excluding its relevant passage), fixed
            scores = query_features @ corpus.T
            scores[torch.arange(len(queries)), positive_index] = -float("inf")
            hard = scores.topk(min(self.negatives, corpus.shape[0] - 1), dim=1).indices

            def margin_of(embeds: torch.Tensor) -> torch.Tensor:
                features = retriever.encode_embeds(embeds, mask)
                return self._margins(features, query_features, positive_features, corpus, hard)

            def margins_of(trial: torch.Tensor) -> torch.Tensor:  # (Q, C, L) -> (Q, C)
                flat_ids = trial.flatten(0, 1)
                flat_mask = mask.repeat_interleave(trial.shape[1], 0)
                tried = retriever.encode_ids(flat_ids, flat_mask).view(*trial.shape[:2], -1)
                return torch.stack(
                    [
                        self._margins(tried[:, c], query_features, positive_features, corpus, hard)
                        for c in range(trial.shape[1])
                    ],
                    dim=1,
                )

        swappable = _special_mask(retriever, ids, mask)
        history = []
        for step in range(k):
            embeds = table[ids].detach().requires_grad_(True)
            margin = margin_of(embeds)
            (grad,) = torch.autograd.grad(margin.sum(), embeds)
            cost.forward += len(ids)
            cost.backward += len(ids)
            # first-order change of the margin for every (position, token) swap
            change = grad @ table[allowed].T - (grad * embeds.detach()).sum(-1, keepdim=True)
            change = change.masked_fill(~swappable.unsqueeze(-1), float("inf"))
            flat = change.flatten(1)
            best = flat.topk(min(self.candidates, flat.shape[1]), dim=1, largest=False).indices
            position = best // len(allowed)
            token = allowed[best % len(allowed)]
            trial = ids.unsqueeze(1).repeat(1, best.shape[1], 1)  # (Q, C, L)
            trial.scatter_(2, position.unsqueeze(-1), token.unsqueeze(-1))
            with torch.no_grad():
                margins = margins_of(trial)
                cost.forward += trial.shape[0] * trial.shape[1]
                if self.filter_retokenization:
                    faithful = _round_trips(
                        retriever, trial.flatten(0, 1), mask.repeat_interleave(trial.shape[1], 0)
                    )
                    margins = margins.masked_fill(~faithful.view(margins.shape), float("inf"))
            chosen = margins.argmin(1)
            improve = margins.gather(1, chosen[:, None]).squeeze(1) < margin.detach()
            rows = torch.arange(len(ids), device=ids.device)
            new_ids = trial[rows, chosen]
            ids = torch.where(improve[:, None], new_ids, ids)
            swapped = position[rows, chosen]
            swappable[rows[improve], swapped[improve]] = False  # each position at most once
            taken = margins.gather(1, chosen[:, None]).squeeze(1)
            history.append(torch.where(improve, taken, margin.detach()).mean().detach())
            report_step(step + 1, k)
        texts = retriever.encoder.tokenizer.batch_decode(ids, skip_special_tokens=True)
        retokenizes = _round_trips(retriever, ids, mask).tolist()
        sent = retriever.tokenize(texts)  # the outcome is on the text, encoded again
        sent_ids = sent["input_ids"].to(ids.device)
        sent_mask = sent["attention_mask"].to(ids.device)
        with torch.no_grad():
            final = retriever.encode_ids(sent_ids, sent_mask)
        result = TextAttackResult(
            query_features=final if self.side == "query" else query_features,
            passage_features=final if self.side == "passage" else None,
            texts=texts,
            cost=cost,
            history=[float(h) for h in history],
            retokenizes=retokenizes,
        )
        if pipeline is not None:
            with torch.no_grad():
                result.reranked = pipeline.scores(table[sent_ids], sent_mask)
        result.wall_time = time.perf_counter() - start
        return result

    def _margins(self, features, queries, positives, corpus, hard):  # noqa: ANN001, ANN202
        """The margin to lower: for a query swap, of the attacked query; for a passage swap,
        of the original query against the attacked passage."""
        negatives = corpus[hard]  # (Q, n, d)
        if self.side == "query":
            positive = (features * positives).sum(-1)
            negative = torch.einsum("qd,qnd->qn", features, negatives).max(-1).values
        else:
            positive = (queries * features).sum(-1)
            negative = torch.einsum("qd,qnd->qn", queries, negatives).max(-1).values
        return positive - negative


@register_attack("embedding-query")
class EmbeddingQuery(TextRetrievalAttack):
    """PGD on the query's token embeddings (per-token l2, relative eps): a continuous bound.

    Args:
        steps: PGD iterations.
        step_size: the step, as a fraction of the per-token radius.
        negatives: hardest negative passages per query that the loss pushes the query towards.
    """

    name = "embedding-query"
    norms = frozenset({"l2"})
    spaces = frozenset({"embedding"})

    def __init__(self, steps: int = 20, step_size: float = 0.25, negatives: int = 64) -> None:
        self.steps = steps
        self.step_size = step_size
        self.negatives = negatives

    def run(self, retriever, queries, positives, corpus, positive_index, threat, generator=None):  # noqa: ANN001, ANN201, ARG002
        start = time.perf_counter()
        cost = Cost()
        query_features = retriever.encode(queries)
        tokens = retriever.tokenize(queries)
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        table = retriever.word_embeddings
        radius = (
            float(threat.eps) * float(table.norm(dim=-1).mean())
            if threat.eps_relative
            else float(threat.eps)
        )
        clean = table[ids].detach()
        swappable = _special_mask(retriever, ids, mask).unsqueeze(-1)
        scores = query_features @ corpus.T
        scores[torch.arange(len(queries)), positive_index] = -float("inf")
        hard = corpus[scores.topk(min(self.negatives, corpus.shape[0] - 1), dim=1).indices]
        positive = corpus[positive_index]
        delta = torch.zeros_like(clean)
        history = []
        for step in range(self.steps):
            delta.requires_grad_(True)
            features = retriever.encode_embeds(clean + delta * swappable, mask)
            margin = (features * positive).sum(-1) - torch.einsum("qd,qnd->qn", features, hard).max(
                -1
            ).values
            (grad,) = torch.autograd.grad(margin.sum(), delta)
            cost.forward += len(ids)
            cost.backward += len(ids)
            with torch.no_grad():
                direction = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                delta = delta - self.step_size * radius * direction
                norms = delta.norm(dim=-1, keepdim=True)
                delta = delta * (radius / norms.clamp_min(1e-12)).clamp(max=1.0)  # per token
            history.append(margin.detach().mean())
            report_step(step + 1, self.steps)
        with torch.no_grad():
            final = retriever.encode_embeds(clean + delta * swappable, mask)
            assert bool((delta.norm(dim=-1) <= radius * (1 + 1e-4)).all()), "left the l2 ball"
        return TextAttackResult(
            query_features=final,
            texts=list(queries),
            cost=cost,
            wall_time=time.perf_counter() - start,
            history=[float(h) for h in history],
        )


@register_attack("corpus-poison")
class CorpusPoison(TextRetrievalAttack):
    """Inject adversarial passages near clusters of the attacker's queries (HotFlip).

    Args:
        passages: adversarial passages injected into the corpus.
        length: tokens per injected passage.
        steps: HotFlip iterations per passage.
        candidates: token swaps evaluated exactly per iteration.
    """

    name = "corpus-poison"
    norms = frozenset({"none"})
    spaces = frozenset({"token"})

    def __init__(
        self, passages: int = 5, length: int = 24, steps: int = 40, candidates: int = 32
    ) -> None:
        self.passages = passages
        self.length = length
        self.steps = steps
        self.candidates = candidates

    def fit(self, retriever, train_queries: list[str], generator: torch.Generator):  # noqa: ANN001, ANN201
        """The poison passages' token ids (m, L+2) and mask, and the fit's cost and history."""
        start = time.perf_counter()
        cost = Cost()
        with torch.no_grad():
            targets = retriever.encode(train_queries)
        centroids = _kmeans(targets, self.passages, generator)  # (m, d), normalised
        allowed = _allowed_vocabulary(retriever)
        table = retriever.word_embeddings
        tokenizer = retriever.encoder.tokenizer
        device = table.device
        picks = torch.randint(len(allowed), (self.passages, self.length), generator=generator)
        body = allowed[picks.to(device)]
        cls = torch.full((self.passages, 1), tokenizer.cls_token_id, device=device)
        sep = torch.full((self.passages, 1), tokenizer.sep_token_id, device=device)
        ids = torch.cat([cls, body, sep], dim=1)
        mask = torch.ones_like(ids)
        history = []
        for step in range(self.steps):
            embeds = table[ids].detach().requires_grad_(True)
            features = retriever.encode_embeds(embeds, mask)
            similarity = (features * centroids).sum(-1)
            (grad,) = torch.autograd.grad(similarity.sum(), embeds)
            cost.forward += len(ids)
            cost.backward += len(ids)
            change = grad @ table[allowed].T  # raise the similarity: the largest gains
            change[:, 0] = change[:, -1] = -float("inf")  # keep [CLS] and [SEP]
            best = change.flatten(1).topk(self.candidates, dim=1).indices
            position, token = best // len(allowed), allowed[best % len(allowed)]
            trial = ids.unsqueeze(1).repeat(1, self.candidates, 1)
            trial.scatter_(2, position.unsqueeze(-1), token.unsqueeze(-1))
            with torch.no_grad():
                tried = retriever.encode_ids(
                    trial.flatten(0, 1), mask.repeat_interleave(self.candidates, 0)
                ).view(self.passages, self.candidates, -1)
                cost.forward += self.passages * self.candidates
                gains = (tried * centroids[:, None]).sum(-1)
            chosen = gains.argmax(1)
            better = gains.gather(1, chosen[:, None]).squeeze(1) > similarity.detach()
            rows = torch.arange(self.passages, device=device)
            ids = torch.where(better[:, None], trial[rows, chosen], ids)
            history.append(torch.maximum(gains.max(1).values, similarity.detach()).mean())
            report_step(step + 1, self.steps)
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        return ids, mask, texts, cost, time.perf_counter() - start, [float(h) for h in history]

    def run(
        self,
        retriever,
        queries,
        positives,
        corpus,
        positive_index,
        threat,
        generator=None,
        train_queries=None,
    ):  # noqa: ANN001, ANN201, ARG002, PLR0913
        ids, mask, texts, cost, wall, history = self.fit(
            retriever, list(train_queries or []), generator or torch.Generator().manual_seed(0)
        )
        with torch.no_grad():
            poison = retriever.encode_ids(ids, mask)
        return TextAttackResult(
            query_features=retriever.encode(queries),
            texts=texts,
            poison_features=poison,
            cost=cost,
            wall_time=wall,
            history=history,
        )


def _kmeans(
    x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 20
) -> torch.Tensor:
    """Spherical k-means on normalised rows; ``k`` normalised centroids."""
    k = max(1, min(k, len(x)))
    start = torch.randperm(len(x), generator=generator)[:k].to(x.device)
    centroids = x[start].clone()
    for _ in range(iterations):
        assign = (x @ centroids.T).argmax(1)
        for c in range(k):
            members = x[assign == c]
            if len(members):
                centroids[c] = members.mean(0)
        centroids = F.normalize(centroids, dim=-1)
    return centroids
