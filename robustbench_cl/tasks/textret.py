"""Dense text retrieval under attack: the ``textret:`` section of a config.

The first task written against the Task protocol after it existed: this module and its
template are all of it (nothing in the runner, the results, the report or the CLI names it).

Per (retriever, defense): a ``textret_clean`` record (the defense is trained or loaded first:
InfoNCE, MW or AR2 fine-tuning of a head on the frozen encoder) with MRR@10, R@1/5/10/20 and
nDCG@10 over the test queries, ranking the whole corpus. Per (retriever, defense, attack, eps):
a ``textret`` record with the same metrics under attack and ASR@k, the share of the queries
whose relevant passage was in the top k before the attack and is not after it (Wilson
intervals). For corpus poisoning, ASR@k is the share of test queries with an injected passage
in their top k. Every attack is white-box on the defended retriever (adaptive), and each cell's
attacked queries are also scored with uniformly random token swaps of the same budget (the
``noise`` column), so a flag says when the attack does no better than chance.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

from robustbench_cl.attacks.base import step_hook
from robustbench_cl.attacks.textret import RerankPipeline, TextRetrievalAttack, rerank_scores
from robustbench_cl.engine.config import DefenseConfig, ModelConfig, SectionAttackConfig
from robustbench_cl.engine.metrics import rate_entry
from robustbench_cl.engine.records import (
    AttackRef,
    DefenseRef,
    ModelRef,
    RateRef,
    Record,
    ThreatRef,
)
from robustbench_cl.engine.results import attack_entry, model_label
from robustbench_cl.engine.results_models import STRICT, Attack, Flag, Rate, Threat
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.engine.task import RunContext, Task, Unit, register_task
from robustbench_cl.errors import UserError, under_field
from robustbench_cl.report.table import percent_or_dash
from robustbench_cl.tasks.sections import build_columns, build_defenses, check_models
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import derive_seed, stable_hash

#: bump when the protocol changes (record ids change, so old records are not reused)
PROTOCOL_VERSION = 1
KS = (1, 5, 10, 20)
#: candidates per query that a ranker re-orders (the retriever's top K)
RERANK_K = 20

DEFAULT_THREATS = {
    "hotflip": {"norm": "l0", "eps": 3, "space": "token", "bounds": None},
    "embedding-query": {
        "norm": "l2",
        "eps": 0.5,
        "space": "embedding",
        "bounds": None,
        "eps_relative": True,
    },
    "corpus-poison": {"norm": "none", "eps": 0, "space": "token", "bounds": None},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextRetDataConfig(_Strict):
    #: ``facts[?n=600&seed=0]`` (built in) or ``beir:DIR`` (a local BEIR folder)
    name: str = "facts"
    #: test queries evaluated (the first ones); all when unset
    n_test: int | None = Field(default=None, ge=1)


class TextRetConfig(_Strict):
    data: TextRetDataConfig = Field(default_factory=TextRetDataConfig)
    models: list[ModelConfig] = Field(min_length=1)
    defenses: list[DefenseConfig] = Field(default_factory=lambda: [DefenseConfig()])
    attacks: list[SectionAttackConfig] = Field(default_factory=list)
    #: queries attacked per batch
    batch_size: int = Field(default=32, ge=1)
    #: attacked examples kept per cell for the report
    examples: int = Field(default=3, ge=0, le=12)


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


@register_task("textret")
class TextRetrievalTask(Task):
    """Dense text retrievers (and their defenses) under query, passage and poisoning attacks."""

    order = 60

    section_type = TextRetConfig
    record_types = ("textret_clean", "textret_auc", "textret_rerank", "textret")
    template = Path(__file__).parent / "templates" / "textret.html.j2"
    title = "Text retrieval"
    data_sources: ClassVar[tuple[tuple[str, str], ...]] = (
        (
            "facts[?n=600&seed=0&namesakes=1]",
            "built-in people-and-facts passages with paraphrased questions (namesakes=3: each "
            "name shared by three people, told apart by a job or a birth city)",
        ),
        ("beir:DIR", "a local BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv"),
    )

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self.section: TextRetConfig = self.section(self.config)
        self.device = ctx.device
        self.progress = ctx.progress
        self._corpus = None
        self._pair: tuple[int, int] | None = None
        self._retriever = None
        self._passages: torch.Tensor | None = None
        self._passage_states = None

    # ------------------------------------------------------------------ plan
    def plan(self) -> list[Unit]:
        section = self.section
        check_models("textret", section.models)
        self.defenses = build_defenses(
            "textret",
            section.defenses,
            "does not train retrievers",
            "use none, infonce-ft, mw-ft or ar2",
        )
        self.columns = build_columns(
            "textret",
            section.attacks,
            TextRetrievalAttack,
            "is not a text-retrieval attack",
            "use hotflip, embedding-query or corpus-poison",
            DEFAULT_THREATS,
        )
        labels = [column_label(c) for c in self.columns]
        if len(set(labels)) != len(labels):
            raise UserError(
                "textret.attacks[].name", "two attack columns share a label", "name them"
            )
        data_key = self.section.data.model_dump()
        units = []
        for mi, model in enumerate(section.models):
            for di, (defense, built) in enumerate(self.defenses):
                pair_key = {
                    "model": model.spec,
                    "defense": defense.defense,
                    "settings": built.settings(),
                    "data": data_key,
                    "version": PROTOCOL_VERSION,
                }
                clean_id = stable_hash({"textret_clean": pair_key})
                label = f"{model.label} / {defense.label}"
                units.append(Unit(clean_id, f"{label} | text retrieval clean", "clean", (mi, di)))
                auc_id = stable_hash({"textret_auc": pair_key})
                units.append(Unit(auc_id, f"{label} | score AUC", "auc", (mi, di), (clean_id,)))
                rerank_id = None
                if getattr(built, "has_ranker", False):  # AR2: re-rank with its rankers
                    rerank_id = stable_hash({"textret_rerank": pair_key, "k": RERANK_K})
                    units.append(
                        Unit(rerank_id, f"{label} | re-ranking", "rerank", (mi, di), (clean_id,))
                    )
                for ci, column in enumerate(self.columns):
                    cell_id = stable_hash(
                        {
                            "textret": pair_key,
                            "attack": column["config"].attack,
                            "settings": column["built"].settings(),
                            "threat": column["threat"].to_dict(),
                            "seed": self.config.seed,
                        }
                    )
                    cell_label = f"{label} | {column_label(column)}"
                    units.append(Unit(cell_id, cell_label, "cell", (mi, di, ci), (clean_id,)))
                    if rerank_id is None or not _attacks_pipeline(column):
                        continue
                    # the retrieve-then-re-rank pipeline, attacked through each ranker
                    for ranker in built.ranker_names:
                        pipeline_id = stable_hash(
                            {"textret_pipeline": cell_id, "ranker": ranker, "k": RERANK_K}
                        )
                        units.append(
                            Unit(
                                pipeline_id,
                                f"{cell_label} | re-ranked by the {ranker} ranker",
                                "pipeline",
                                (mi, di, ci, ranker),
                                (clean_id, rerank_id),
                            )
                        )
        return units

    # ------------------------------------------------------------------ shared parts
    @property
    def corpus(self):  # noqa: ANN201
        if self._corpus is None:
            from robustbench_cl.data.qa import load_qa

            with under_field("textret.data.name", replace=True):
                corpus = load_qa(self.section.data.name, seed=self.config.seed)
            if self.section.data.n_test is not None:
                corpus.test = corpus.test[: self.section.data.n_test]
            self._corpus = corpus
            index = corpus.index()
            self._relevant = [
                torch.tensor([index[p] for p in q.relevant], device=self.device)
                for q in corpus.test
            ]
            self._positive = torch.tensor(
                [index[q.relevant[0]] for q in corpus.test], device=self.device
            )
        return self._corpus

    def retriever(self, mi: int, di: int):  # noqa: ANN201
        """The defended retriever of (model mi, defense di) and its passage features; the last
        one built stays loaded."""
        from robustbench_cl.models import load_model

        if self._pair != (mi, di):
            self._pair = self._retriever = self._passages = self._passage_states = None
            model = self.section.models[mi]
            defense, built = self.defenses[di]
            cached = getattr(built, "cached", None)
            verb = "training" if cached and not cached(model.spec, self.corpus) else "loading"
            self.progress.message(f"{verb} {model.label} / {defense.label}")
            base = load_model(model.spec).to(self.device)
            inner = getattr(base, "model", base)
            if not hasattr(inner, "encode_embeds"):
                raise UserError(
                    f"textret.models[{mi}].spec",
                    f"{model.spec} is not a text retriever",
                    "use builtin:minilm-retriever or sentence-transformers:DIR",
                )
            with step_hook(self.progress.step):
                defended = built.build(base, model.spec, self.corpus)
            self._retriever = getattr(defended, "model", defended)
            self._passages = self._retriever.encode(self.corpus.texts())
            self._pair = (mi, di)
        return self._retriever, self._passages

    def batches(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> int:
        if unit.kind in ("clean", "auc"):
            return 1
        if unit.kind == "rerank":
            return 2
        return -(-len(self.corpus.test) // self.section.batch_size)

    # ------------------------------------------------------------------ run
    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        mi, di = unit.key[:2]
        retriever, passages = self.retriever(mi, di)
        model, (defense, built) = self.section.models[mi], self.defenses[di]
        corpus = self.corpus
        if unit.kind == "clean":
            start = time.perf_counter()
            query = retriever.encode([q.text for q in corpus.test])
            rank = ranks(query, passages, self._relevant)
            self.progress.batch_done()
            info = getattr(built, "training_info", None)
            return {
                "type": "textret_clean",
                "id": unit.id,
                "model": model.model_dump(),
                "defense": defense.model_dump(),
                "data": corpus.describe(),
                "metrics": metrics(rank, ndcg10(query, passages, self._relevant)),
                "ranks": rank.tolist(),
                "training": None
                if not info
                else {
                    "wall_time": info.get("wall_time"),
                    "loss_history": info.get("loss_history", []),
                    "ranker_loss_history": info.get("ranker_loss_history"),
                    "ranker_warmup_accuracy": info.get("ranker_warmup_accuracy"),
                },
                "wall_time": time.perf_counter() - start,
            }
        if unit.kind == "rerank":
            return self.rerank_record(unit, retriever, passages, built)
        if unit.kind == "auc":
            query = retriever.encode([q.text for q in corpus.test])
            self.progress.batch_done()
            return {
                "type": "textret_auc",
                "id": unit.id,
                "clean_id": unit.needs[0],
                **score_auc(query @ passages.T, self._relevant),
            }
        column = self.columns[unit.key[2]]
        if unit.kind == "pipeline":
            clean, rerank = inputs[unit.needs[0]], inputs[unit.needs[1]]
            return self.pipeline_cell(unit, clean, rerank, column, retriever, passages, built)
        return self.attack_cell(unit, inputs[unit.needs[0]], column, retriever, passages)

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
        name = unit.key[3]
        pipeline = RerankPipeline(
            retriever, built.rankers[name], passages, self.passage_states(retriever), RERANK_K
        )
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, unit.id))
        queries = [q.text for q in corpus.test]
        start = time.perf_counter()
        results = self._in_batches(
            attack, retriever, passages, threat, generator, pipeline=pipeline
        )
        texts = [text for result in results for text in result.texts]
        history = [result.history for result in results]
        scores = torch.cat([result.reranked.cpu() for result in results])
        relevant = [r.cpu() for r in self._relevant]
        rank = _ranks(scores, relevant)
        asr = _asr(torch.tensor(rerank["rankers"][name]["ranks"]), rank)
        steps = min((len(h) for h in history), default=0)
        curve = [sum(h[s] for h in history) / len(history) for s in range(steps)]
        examples = [
            {"original": queries[i], "attacked": texts[i], "kind": "query"}
            for i in range(min(self.section.examples, len(texts)))
        ]
        return {
            "type": "textret",
            "id": unit.id,
            "clean_id": pipeline_pair_id(unit.needs[1], name),
            "model": clean["model"],
            "defense": clean["defense"],
            "attack": {
                "attack": column["config"].attack,
                "name": column["config"].name,
                "params": column["config"].params,
                "settings": attack.settings(),
            },
            "threat": threat.to_dict(),
            "n": len(queries),
            "metrics": metrics(rank, _ndcg10(scores, relevant)),
            "asr": asr,
            "ranks": rank.tolist(),
            "noise_asr": None,
            "margin_history": curve,
            "cost": {
                "forward": sum(result.cost.forward for result in results),
                "backward": sum(result.cost.backward for result in results),
            },
            "examples": examples,
            "pipeline": {"ranker": name, "candidates": pipeline.k, "rerank_id": unit.needs[1]},
            "wall_time": time.perf_counter() - start,
        }

    def rerank_record(self, unit, retriever, passages, built) -> dict[str, Any]:  # noqa: ANN001
        """Each test query's top ``RERANK_K`` passages under the retriever, re-ordered by each
        of the defense's rankers (AR2: the warm-up ranker, trained on the initial retriever's
        negatives only, and the ranker after the game); passages below the top K keep their
        retriever order."""
        from robustbench_cl.models.ranker import TokenStates

        start = time.perf_counter()
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
        return {
            "type": "textret_rerank",
            "id": unit.id,
            "clean_id": unit.needs[0],
            "candidates": int(top.shape[1]),
            "rankers": out,
            "wall_time": time.perf_counter() - start,
        }

    def attack_cell(self, unit, clean, column, retriever, passages) -> dict[str, Any]:  # noqa: ANN001
        corpus = self.corpus
        threat: ThreatModel = column["threat"]
        attack = column["built"]
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, unit.id))
        queries = [q.text for q in corpus.test]
        positives = [corpus.passages[int(i)].text for i in self._positive]
        start = time.perf_counter()
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
            asr = _asr(torch.tensor(clean["ranks"], device=rank.device), rank)
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
        return {
            "type": "textret",
            "id": unit.id,
            "clean_id": unit.needs[0],
            "model": clean["model"],
            "defense": clean["defense"],
            "attack": {
                "attack": column["config"].attack,
                "name": column["config"].name,
                "params": column["config"].params,
                "settings": attack.settings(),
            },
            "threat": threat.to_dict(),
            "n": len(query),
            "metrics": metrics(rank, ndcg),
            "asr": asr,
            "ranks": rank.tolist(),
            "noise_asr": noise,
            "margin_history": curve,
            "cost": {"forward": forward, "backward": backward},
            "examples": examples,
            "wall_time": time.perf_counter() - start,
        }

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
        before = torch.tensor(clean["ranks"], device=rank.device)
        return {
            f"@{k_}": rate_entry(
                int(((before <= k_) & (rank > k_)).sum()), int((before <= k_).sum())
            )
            for k_ in KS
        }

    def close(self) -> None:
        self._pair = self._retriever = self._passages = None

    # ------------------------------------------------------------------ results
    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        cleans = summary.of("textret_clean")
        cells = summary.of("textret")
        aucs = {r["clean_id"]: r for r in summary.of("textret_auc")}
        reranks = {r["clean_id"]: r for r in summary.of("textret_rerank")}
        if not cleans and not cells:
            return None
        pairs = [
            {
                "id": r["id"],
                "label": _pair_label(r),
                "model": model_label(r["model"]),
                "defense": r["defense"].get("name") or r["defense"]["defense"],
                "defense_kind": r["defense"]["defense"],
                "data": r["data"],
                "metrics": r["metrics"],
                "training_seconds": (r.get("training") or {}).get("wall_time"),
                "global_auc": aucs.get(r["id"], {}).get("global_auc"),
                "per_query_auc": aucs.get(r["id"], {}).get("per_query_auc"),
                "rerank": _rerank_entry(reranks.get(r["id"])),
                "ranker_warmup_accuracy": (r.get("training") or {}).get("ranker_warmup_accuracy"),
            }
            for r in cleans
        ]
        pairs = [entry for pair in pairs for entry in [pair, *_pipeline_pairs(pair, reranks)]]
        labels = {p["id"]: p["label"] for p in pairs}
        entries = []
        for r in cells:
            entry = {
                "id": r["id"],
                "clean_id": r["clean_id"],
                "pair": labels.get(r["clean_id"], _pair_label(r)),
                "attack": attack_entry(r["attack"]),
                "column": _column_text(r["attack"], r["threat"]),
                "threat": r["threat"],
                "n": r["n"],
                "metrics": r["metrics"],
                "asr": r["asr"],
                "noise_asr": r.get("noise_asr"),
                "cost": r["cost"],
                "examples": r["examples"],
                "wall_time": r["wall_time"],
            }
            history = r.get("margin_history", [])
            if r["attack"]["attack"] == "corpus-poison":  # its similarity rises: flip it
                history = [-value for value in history]
            entry["flags"] = _flags(entry, history)
            entries.append(entry)
        columns = list(dict.fromkeys(e["column"] for e in entries))
        return {"textret": {"pairs": pairs, "cells": entries, "columns": columns}}

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """Clean MRR@10 per pair; per cell, MRR@10 under attack and ASR@1."""
        section = results.get("textret") or {}
        rows = []
        for pair in section.get("pairs", []):
            mrr = (pair.get("metrics") or {}).get("mrr@10")
            if mrr is not None:
                rows.append(
                    {"row": pair["label"], "cell": "clean MRR@10", "value": mrr, "better": "higher"}
                )
        for cell in section.get("cells", []):
            mrr = (cell.get("metrics") or {}).get("mrr@10")
            if mrr is not None:
                rows.append(
                    {
                        "row": cell["pair"],
                        "cell": f"{cell['column']} MRR@10",
                        "value": mrr,
                        "better": "higher",
                    }
                )
            rate = ((cell.get("asr") or {}).get("@1") or {}).get("rate")
            if rate is not None:
                rows.append(
                    {
                        "row": cell["pair"],
                        "cell": f"{cell['column']} ASR@1",
                        "value": rate,
                        "better": "lower",
                    }
                )
        return rows

    @classmethod
    def flag_rows(cls, section: dict[str, Any]) -> list[dict[str, str]]:
        return cls.rows_of(
            section.get("cells", []), lambda cell: f"{cell['pair']} | {cell['column']}"
        )

    @classmethod
    def threat_models(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        return [c["threat"] for c in results.get("textret", {}).get("cells", [])]

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        section = results.get("textret")
        if not section:
            return None
        by_pair: dict[str, dict[str, Any]] = {}
        for cell in section["cells"]:
            by_pair.setdefault(cell["clean_id"], {})[cell["column"]] = cell
        rows = [dict(p, by_column=by_pair.get(p["id"], {})) for p in section["pairs"]]
        data = section["pairs"][0]["data"] if section["pairs"] else {}
        note = (
            f"{data.get('name')}: {data.get('passages')} passages, {data.get('test_queries')} test queries"
            if data
            else None
        )
        return {
            "rows": rows,
            "columns": section["columns"],
            "cells": section["cells"],
            "data_note": note,
        }

    @classmethod
    def table(cls, summary: RunSummary) -> Table | None:
        results = cls.summarize(summary, {})
        if not results:
            return None
        section = results["textret"]
        table = Table(
            title="text retrieval: MRR@10 % clean, and ASR@10 % per attack (previously-correct queries)",
            title_justify="left",
        )
        table.add_column("retriever / defense", justify="left")
        table.add_column("MRR@10", justify="right")
        table.add_column("R@1", justify="right")
        for column in section["columns"]:
            table.add_column(column, justify="right")
        cells = {(c["clean_id"], c["column"]): c for c in section["cells"]}
        for pair in section["pairs"]:
            values = []
            for column in section["columns"]:
                cell = cells.get((pair["id"], column))
                values.append(percent_or_dash(cell["asr"]["@10"]["rate"]) if cell else "-")
            table.add_row(
                pair["label"],
                percent_or_dash(pair["metrics"]["mrr@10"]),
                percent_or_dash(pair["metrics"]["r@1"]),
                *values,
            )
        return table


def _asr(before: torch.Tensor, after: torch.Tensor) -> dict[str, dict[str, Any]]:
    """ASR@k: of the queries whose relevant passage ranked within k before, those it does not
    after."""
    asr = {}
    for k in KS:
        correct = before <= k
        asr[f"@{k}"] = rate_entry(int((correct & (after > k)).sum()), int(correct.sum()))
    return asr


def _attacks_pipeline(column: dict[str, Any]) -> bool:
    """Whether a column also attacks the re-ranking pipeline: HotFlip on the query."""
    attack = column["built"]
    return attack.name == "hotflip" and attack.side == "query"


def pipeline_pair_id(rerank_id: str, ranker: str) -> str:
    """The id of a (retriever, defense)'s pipeline with one of its rankers, in results.json."""
    return f"{rerank_id}/{ranker}"


def _pipeline_pairs(pair: dict[str, Any], reranks: dict[str, Any]) -> list[dict[str, Any]]:
    """A row per ranker of an AR2 pair: its retriever's top K re-ranked, clean metrics."""
    record = reranks.get(pair["id"])
    if record is None:
        return []
    return [
        dict(
            pair,
            id=pipeline_pair_id(record["id"], name),
            label=f"{pair['label']}, top {record['candidates']} re-ranked ({RANKER_LABELS.get(name, name)})",
            metrics=entry["metrics"],
            training_seconds=None,
            global_auc=None,
            per_query_auc=None,
            rerank=None,
            ranker_warmup_accuracy=None,
            pipeline={"ranker": name, "candidates": record["candidates"], "of": pair["id"]},
        )
        for name, entry in sorted(record["rankers"].items(), key=_ranker_order)
    ]


def _ranker_order(item: tuple[str, Any]) -> tuple[int, str]:
    names = list(RANKER_LABELS)
    return (names.index(item[0]) if item[0] in names else len(names), item[0])


#: how the report names AR2's rankers
RANKER_LABELS = {"warmup": "warm-up ranker", "final": "game's ranker"}


def _rerank_entry(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "candidates": record["candidates"],
        **{name: entry["metrics"] for name, entry in record["rankers"].items()},
    }


def column_label(column: dict[str, Any]) -> str:
    return _column_text(
        {"attack": column["config"].attack, "name": column["config"].name},
        column["threat"].to_dict(),
    )


def _column_text(attack: dict[str, Any], threat: dict[str, Any]) -> str:
    name = attack.get("name") or attack["attack"]
    if threat["norm"] == "l0":
        return f"{name} {int(threat['eps'])} tok"
    if threat["norm"] == "none":
        return name
    relative = " rel." if threat.get("eps_relative") else ""
    return f"{name} {threat['norm']} {threat['eps']:g}{relative}"


def _pair_label(record: dict[str, Any]) -> str:
    defense = record["defense"].get("name") or record["defense"]["defense"]
    return f"{model_label(record['model'])} / {defense}"


def _flags(cell: dict[str, Any], history: list[float]) -> list[dict[str, str]]:
    """noise_beats_attack: random swaps of the same budget break as many queries at k = 10
    (the attack is not working); attack_not_converged: over 10 steps or more, the objective
    (falling) still moved by more than 5% of its whole change over the last fifth of them."""
    flags = []
    noise = cell.get("noise_asr")
    attack = cell["asr"].get("@10", {})
    if noise and attack.get("rate") is not None and noise["@10"]["rate"] is not None:
        if attack["rate"] <= noise["@10"]["rate"] and attack.get("n", 0):
            flags.append(
                {
                    "code": "noise_beats_attack",
                    "message": f"random token swaps of the same budget break {100 * noise['@10']['rate']:.1f}% "
                    f"of the queries at k=10, the attack {100 * attack['rate']:.1f}%",
                }
            )
    if len(history) >= 10:
        tail = max(1, len(history) // 5)
        drop = history[-tail - 1] - history[-1]
        scale = abs(history[0] - history[-1]) or 1.0
        if drop > 0.05 * scale:
            flags.append(
                {
                    "code": "attack_not_converged",
                    "message": f"the attack's objective still moved by {drop:.3f} over its last "
                    f"{tail} steps (more steps would likely break more)",
                }
            )
    return flags


# ---------------------------------------------------------------------- results.json
class TextRetPair(BaseModel):
    model_config = STRICT
    id: str
    label: str
    model: str
    defense: str
    defense_kind: str
    data: dict[str, Any]
    metrics: dict[str, float]
    """MRR@10, R@1/5/10/20 and nDCG@10 over the test queries, clean"""
    training_seconds: float | None
    global_auc: float | None
    """the AUC of relevant against irrelevant scores, pooled over the test queries"""
    per_query_auc: float | None
    rerank: dict[str, Any] | None = None
    """AR2 only: ``candidates`` (the retriever's top K re-ordered) and per ranker (``warmup``:
    trained on the initial retriever's negatives; ``final``: after the game) the clean metrics
    after re-ranking"""
    ranker_warmup_accuracy: float | None = None
    """AR2 only: the warm-up ranker's top-1 accuracy among [d+, hard negatives] on the training
    queries"""
    pipeline: dict[str, Any] | None = None
    """a re-ranking pipeline's row (``ranker``, ``candidates``, ``of``: the retriever's pair id);
    its metrics are the re-ranked ones, and its cells attack the whole pipeline"""


class TextRetExample(BaseModel):
    model_config = STRICT
    kind: str
    original: str
    attacked: str


class TextRetCell(BaseModel):
    model_config = STRICT
    id: str
    clean_id: str
    pair: str
    attack: Attack
    column: str
    threat: Threat
    n: int = Field(..., ge=0)
    metrics: dict[str, float]
    asr: dict[str, Rate]
    """ASR@k over the queries whose relevant passage was in the top k before the attack"""
    noise_asr: dict[str, Rate] | None
    """the same, for uniformly random token swaps of the same budget"""
    cost: dict[str, int]
    examples: list[TextRetExample]
    wall_time: float = Field(..., ge=0.0)
    flags: list[Flag]
    """sanity flags (docs/sanity-checks.md)"""


class TextRetSection(BaseModel):
    """Dense text retrieval: clean ranking metrics per (retriever, defense), and per attack cell
    the metrics under attack, ASR@k and the random-swap baseline."""

    model_config = STRICT
    pairs: list[TextRetPair]
    cells: list[TextRetCell]
    columns: list[str]


TextRetrievalTask.section_model = TextRetSection


# ---------------------------------------------------------------------- cells.jsonl
class TextRetCleanRecord(Record):
    """A (retriever, defense)'s clean ranking: metrics and the relevant passage's rank per query."""

    type: Literal["textret_clean"]
    model: ModelRef
    defense: DefenseRef
    data: dict[str, Any]
    metrics: dict[str, float]
    ranks: list[int]
    training: dict[str, Any] | None


class TextRetAucRecord(Record):
    type: Literal["textret_auc"]
    clean_id: str
    global_auc: float
    per_query_auc: float


class TextRetRerankRecord(Record):
    """A (retriever, defense)'s rankers re-ordering each test query's top candidates."""

    type: Literal["textret_rerank"]
    clean_id: str
    candidates: int = Field(..., ge=1)
    rankers: dict[str, dict[str, Any]]
    """per ranker (``warmup``, ``final``): ``metrics`` and per-query ``ranks`` after re-ranking"""


class TextRetRecord(Record):
    """One attack cell: metrics and ranks under attack, ASR@k, the random-swap baseline."""

    type: Literal["textret"]
    clean_id: str
    model: ModelRef
    defense: DefenseRef
    attack: AttackRef
    threat: ThreatRef
    n: int = Field(..., ge=0)
    metrics: dict[str, float]
    ranks: list[int]
    asr: dict[str, RateRef]
    noise_asr: dict[str, RateRef] | None
    margin_history: list[float]
    cost: dict[str, int]
    examples: list[dict[str, Any]]
    pipeline: dict[str, Any] | None = None
    """against a re-ranking pipeline: ``ranker``, ``candidates`` and the ``rerank_id`` whose
    clean ranks the ASR counts from"""


TextRetrievalTask.record_models = {
    "textret_clean": TextRetCleanRecord,
    "textret_auc": TextRetAucRecord,
    "textret_rerank": TextRetRerankRecord,
    "textret": TextRetRecord,
}


__all__ = ["TextRetrievalTask"]
