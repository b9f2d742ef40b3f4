"""The text-retrieval attack cells: on the retriever, on the re-ranking pipeline, AR2's
re-ranking and the noise baseline."""

from __future__ import annotations

from typing import Any

import torch

from robustbench_cl.attacks.base import step_hook
from robustbench_cl.attacks.textret import RerankPipeline, rerank_scores
from robustbench_cl.engine.metrics import rate_entry
from robustbench_cl.tasks.textret.config import KS, RERANK_K
from robustbench_cl.tasks.textret.metrics import (
    _asr,
    _ndcg10,
    _ranks,
    metrics,
    ranks,
    replaced_scores,
)
from robustbench_cl.tasks.textret.results import (
    TextRetRecord,
    TextRetRerankRecord,
    pipeline_pair_id,
)
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import derive_seed


class Evaluation:
    """The text-retrieval task's attack cells (mixed into it): an attack on the retriever, on the re-ranking pipeline, AR2's re-ranking, and the noise baseline."""

    def _in_batches(self, attack, retriever, passages, threat, generator, **options) -> list:  # noqa: ANN001
        """``attack.run`` on the test queries, ``batch_size`` at a time, in order."""
        corpus = self.corpus
        queries = [q.text for q in corpus.test]
        positives = [corpus.passages[int(i)].text for i in self._positive]
        size, results = self.section.batch_size, []
        for begin in range(0, len(queries), size):
            chunk = slice(begin, begin + size)
            with step_hook(self.progress.step):
                results.append(
                    attack.run(
                        retriever,
                        queries[chunk],
                        positives[chunk],
                        passages,
                        self._positive[chunk],
                        threat,
                        generator,
                        **options,
                    )
                )
            self.progress.batch_done()
        return results

    def passage_states(self, retriever):  # noqa: ANN001, ANN201
        """The frozen encoder's token states of every passage (what a ranker reads), once per
        pair."""
        from robustbench_cl.models.ranker import TokenStates

        if self._passage_states is None:
            self._passage_states = TokenStates(retriever.encoder, self.corpus.texts())
        return self._passage_states

    def pipeline_cell(self, unit, clean, rerank, column, retriever, passages, built):  # noqa: ANN001
        """HotFlip on the query against the retriever's top ``RERANK_K`` re-ranked by one of
        the defense's rankers: the attack's margin is the pipeline's (adaptive to the ranker),
        and the metrics are those of the re-ranked ranking, ASR@k over the queries the
        pipeline had right."""
        corpus, threat, attack = self.corpus, column["threat"], column["built"]
        name = unit.key.ranker
        pipeline = RerankPipeline(
            retriever, built.rankers[name], passages, self.passage_states(retriever), RERANK_K
        )
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, unit.id))
        queries = [q.text for q in corpus.test]
        results = self._in_batches(
            attack, retriever, passages, threat, generator, pipeline=pipeline
        )
        texts = [text for result in results for text in result.texts]
        history = [result.history for result in results]
        scores = torch.cat([result.reranked.cpu() for result in results])
        relevant = [r.cpu() for r in self._relevant]
        rank = _ranks(scores, relevant)
        asr = _asr(torch.tensor(rerank.rankers[name]["ranks"]), rank)
        steps = min((len(h) for h in history), default=0)
        curve = [sum(h[s] for h in history) / len(history) for s in range(steps)]
        examples = [
            {"original": queries[i], "attacked": texts[i], "kind": "query"}
            for i in range(min(self.section.examples, len(texts)))
        ]
        return TextRetRecord(
            type="textret",
            id=unit.id,
            clean_id=pipeline_pair_id(unit.needs[1], name),
            model=clean.model,
            defense=clean.defense,
            attack=_attack_ref(column),
            threat=threat.to_dict(),
            n=len(queries),
            metrics=metrics(rank, _ndcg10(scores, relevant)),
            asr=asr,
            ranks=rank.tolist(),
            noise_asr=None,
            margin_history=curve,
            cost={
                "forward": sum(result.cost.forward for result in results),
                "backward": sum(result.cost.backward for result in results),
            },
            examples=examples,
            pipeline={"ranker": name, "candidates": pipeline.k, "rerank_id": unit.needs[1]},
        )

    def rerank_record(self, unit, retriever, passages, built) -> dict[str, Any]:  # noqa: ANN001
        """Each test query's top ``RERANK_K`` passages under the retriever, re-ordered by each
        of the defense's rankers (AR2: the warm-up ranker, trained on the initial retriever's
        negatives only, and the ranker after the game); passages below the top K keep their
        retriever order."""
        from robustbench_cl.models.ranker import TokenStates

        corpus = self.corpus
        query = retriever.encode([q.text for q in corpus.test])
        scores = query @ passages.T
        top = scores.topk(min(RERANK_K, scores.shape[1]), dim=1).indices.cpu()
        shown = top.flatten().unique()
        where = torch.full((scores.shape[1],), -1, dtype=torch.long)
        where[shown] = torch.arange(len(shown))
        encoder = retriever.encoder
        query_states = TokenStates(encoder, [q.text for q in corpus.test])
        passage_states = TokenStates(encoder, [corpus.passages[int(i)].text for i in shown])
        relevant = [r.cpu() for r in self._relevant]
        out: dict[str, Any] = {}
        for name, ranker in built.rankers.items():
            logits = []
            with torch.no_grad():
                for begin in range(0, len(top), 32):
                    batch = torch.arange(begin, min(len(top), begin + 32))
                    logits.append(ranker(query_states[batch], passage_states[where[top[batch]]]))
            reranked = rerank_scores(scores.detach().cpu(), top, torch.cat(logits))
            rank = _ranks(reranked, relevant)
            out[name] = {
                "metrics": metrics(rank, _ndcg10(reranked, relevant)),
                "ranks": rank.tolist(),
            }
            self.progress.batch_done()
        return TextRetRerankRecord(
            type="textret_rerank",
            id=unit.id,
            clean_id=unit.needs[0],
            candidates=int(top.shape[1]),
            rankers=out,
        )

    def attack_cell(self, unit, clean, column, retriever, passages) -> dict[str, Any]:  # noqa: ANN001
        corpus = self.corpus
        threat: ThreatModel = column["threat"]
        attack = column["built"]
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, unit.id))
        queries = [q.text for q in corpus.test]
        positives = [corpus.passages[int(i)].text for i in self._positive]
        features, attacked_passages, texts, history = [], [], [], []
        forward = backward = 0
        poison = None
        if attack.name == "corpus-poison":
            with step_hook(self.progress.step):
                result = attack.run(
                    retriever,
                    queries,
                    positives,
                    passages,
                    self._positive,
                    threat,
                    generator,
                    train_queries=[q.text for q in corpus.train],
                )
            features, poison, texts, history = (
                [result.query_features],
                result.poison_features,
                result.texts,
                result.history,
            )
            forward, backward = result.cost.forward, result.cost.backward
            self.progress.batch_done()
        else:
            for result in self._in_batches(attack, retriever, passages, threat, generator):
                features.append(result.query_features)
                if result.passage_features is not None:
                    attacked_passages.append(result.passage_features)
                texts += result.texts
                history.append(result.history)
                forward += result.cost.forward
                backward += result.cost.backward
        query = torch.cat(features)
        if poison is not None:  # the poisoned corpus: the real passages and the injected ones
            scores = query @ torch.cat([passages, poison]).T
            hit = scores.topk(max(KS), dim=1).indices >= len(passages)  # an injected one in top k
            asr = {f"@{k}": rate_entry(int(hit[:, :k].any(1).sum()), len(query)) for k in KS}
            rank, ndcg = _ranks(scores, self._relevant), _ndcg10(scores, self._relevant)
        else:
            if attacked_passages:  # each query's relevant passage replaced by its attacked text
                attacked = torch.cat(attacked_passages)
                scores = replaced_scores(query, passages, attacked, self._positive)
            else:
                scores = query @ passages.T
            rank, ndcg = _ranks(scores, self._relevant), _ndcg10(scores, self._relevant)
            asr = _asr(torch.tensor(clean.ranks, device=rank.device), rank)
        steps = (
            min((len(h) for h in history if h), default=0)
            if history and isinstance(history[0], list)
            else len(history)
        )
        curve = (
            [sum(h[s] for h in history) / len(history) for s in range(steps)]
            if history and isinstance(history[0], list)
            else list(history)
        )
        examples = []
        for i in range(min(self.section.examples, len(texts))):
            if poison is not None:
                examples.append({"original": "", "attacked": texts[i], "kind": "injected passage"})
            else:
                original = (
                    positives[i] if getattr(attack, "side", "query") == "passage" else queries[i]
                )
                examples.append(
                    {
                        "original": original,
                        "attacked": texts[i],
                        "kind": getattr(attack, "side", "query"),
                    }
                )
        noise = (
            self.noise_baseline(column, retriever, passages, queries, clean, generator)
            if attack.name == "hotflip"
            else None
        )
        return TextRetRecord(
            type="textret",
            id=unit.id,
            clean_id=unit.needs[0],
            model=clean.model,
            defense=clean.defense,
            attack=_attack_ref(column),
            threat=threat.to_dict(),
            n=len(query),
            metrics=metrics(rank, ndcg),
            asr=asr,
            ranks=rank.tolist(),
            noise_asr=noise,
            margin_history=curve,
            cost={"forward": forward, "backward": backward},
            examples=examples,
        )

    def noise_baseline(
        self, column, retriever, passages, queries, clean, generator
    ) -> dict[str, Any] | None:  # noqa: ANN001
        """ASR@k of k uniformly random token swaps in the queries (same budget as the attack)."""
        from robustbench_cl.attacks.textret import _allowed_vocabulary, _special_mask

        attack = column["built"]
        if attack.side != "query":
            return None
        k = int(column["threat"].eps)
        tokens = retriever.tokenize(queries)
        ids, mask = tokens["input_ids"].clone(), tokens["attention_mask"]
        allowed = _allowed_vocabulary(retriever)
        swappable = _special_mask(retriever, ids, mask)
        for row in range(len(ids)):
            positions = swappable[row].nonzero().flatten()
            order = torch.randperm(len(positions), generator=generator)[:k]
            picks = torch.randint(len(allowed), (len(order),), generator=generator)
            ids[row, positions[order]] = allowed[picks.to(allowed.device)]
        with torch.no_grad():
            query = torch.cat(
                [
                    retriever.encode_ids(ids[b : b + 256], mask[b : b + 256])
                    for b in range(0, len(ids), 256)
                ]
            )
        rank = ranks(query, passages, self._relevant)
        before = torch.tensor(clean.ranks, device=rank.device)
        return {
            f"@{k_}": rate_entry(
                int(((before <= k_) & (rank > k_)).sum()), int((before <= k_).sum())
            )
            for k_ in KS
        }


def _attacks_pipeline(column: dict[str, Any]) -> bool:
    """Whether a column also attacks the re-ranking pipeline: HotFlip on the query."""
    attack = column["built"]
    return attack.name == "hotflip" and attack.side == "query"


def _attack_ref(column: dict[str, Any]) -> dict[str, Any]:
    """A column's attack as its records name it: as configured, and the settings it ran with."""
    config = column["config"]
    return {
        "attack": config.attack,
        "name": config.name,
        "params": config.params,
        "settings": column["built"].settings(),
    }
