"""The text-retrieval task: plan the units of every (retriever, defense) and attack column;
build each defended retriever once and run them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from robustbench_cl.attacks.base import step_hook
from robustbench_cl.attacks.textret import TextRetrievalAttack
from robustbench_cl.engine.task import RunContext, Task, Unit, register_task
from robustbench_cl.errors import UserError, under_field
from robustbench_cl.tasks.sections import build_columns, build_defenses, check_models
from robustbench_cl.tasks.textret.config import (
    DEFAULT_THREATS,
    PROTOCOL_VERSION,
    RERANK_K,
    AttackKey,
    AucKey,
    CleanKey,
    PipelineKey,
    RerankKey,
    TextRetConfig,
)
from robustbench_cl.tasks.textret.evaluate import Evaluation, _attacks_pipeline
from robustbench_cl.tasks.textret.metrics import metrics, ndcg10, ranks, score_auc
from robustbench_cl.tasks.textret.report import Report
from robustbench_cl.tasks.textret.results import (
    Results,
    TextRetAucRecord,
    TextRetCleanRecord,
    TextRetRecord,
    TextRetRerankRecord,
    TextRetSection,
    column_name,
)
from robustbench_cl.utils import stable_hash


@register_task("textret")
class TextRetrievalTask(Report, Results, Evaluation, Task):
    """Dense text retrievers (and their defenses) under query, passage and poisoning attacks."""

    order = 60

    section_type = TextRetConfig
    record_types = ("textret_clean", "textret_auc", "textret_rerank", "textret")
    record_models: ClassVar[dict[str, Any]] = {
        "textret_clean": TextRetCleanRecord,
        "textret_auc": TextRetAucRecord,
        "textret_rerank": TextRetRerankRecord,
        "textret": TextRetRecord,
    }
    section_model: ClassVar[Any] = TextRetSection
    template = Path(__file__).parent.parent / "templates" / "textret.html.j2"
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
        self.load_corpus()  # before any work: an unreadable corpus is a one-line error now
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
        labels = [column_name(c) for c in self.columns]
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
                units.append(
                    Unit(clean_id, f"{label} | text retrieval clean", key=CleanKey(mi, di))
                )
                auc_id = stable_hash({"textret_auc": pair_key})
                units.append(
                    Unit(auc_id, f"{label} | score AUC", key=AucKey(mi, di), needs=(clean_id,))
                )
                rerank_id = None
                if getattr(built, "has_ranker", False):  # AR2: re-rank with its rankers
                    rerank_id = stable_hash({"textret_rerank": pair_key, "k": RERANK_K})
                    units.append(
                        Unit(
                            rerank_id,
                            f"{label} | re-ranking",
                            key=RerankKey(mi, di),
                            needs=(clean_id,),
                        )
                    )
                for ci, column in enumerate(self.columns):
                    cell_id = stable_hash(
                        {
                            "textret": pair_key,
                            "attack": column["config"].attack,
                            "settings": column["built"].settings(),
                            "threat": column["threat"].key(),
                            "seed": self.config.seed,
                        }
                    )
                    cell_label = f"{label} | {column_name(column)}"
                    units.append(
                        Unit(cell_id, cell_label, key=AttackKey(mi, di, ci), needs=(clean_id,))
                    )
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
                                key=PipelineKey(mi, di, ci, ranker),
                                needs=(clean_id, rerank_id),
                            )
                        )
        return units

    # ------------------------------------------------------------------ shared parts
    def load_corpus(self) -> None:
        """The corpus, its test queries (the first ``n_test``) and their relevant passages."""
        from robustbench_cl.data.qa import load_qa

        with under_field("textret.data.name", replace=True):
            corpus = load_qa(self.section.data.name, seed=self.config.seed)
        if self.section.data.n_test is not None:
            corpus.test = corpus.test[: self.section.data.n_test]
        self._corpus = corpus
        index = corpus.index()
        self._relevant = [
            torch.tensor([index[p] for p in q.relevant], device=self.device) for q in corpus.test
        ]
        self._positive = torch.tensor(
            [index[q.relevant[0]] for q in corpus.test], device=self.device
        )

    @property
    def corpus(self):  # noqa: ANN201
        """The loaded corpus (:meth:`plan` loads it)."""
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
        if isinstance(unit.key, (CleanKey, AucKey)):
            return 1
        if isinstance(unit.key, RerankKey):
            return 2
        return -(-len(self.corpus.test) // self.section.batch_size)

    # ------------------------------------------------------------------ run
    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        key = unit.key
        retriever, passages = self.retriever(key.mi, key.di)
        model, (defense, built) = self.section.models[key.mi], self.defenses[key.di]
        corpus = self.corpus
        if isinstance(key, CleanKey):
            query = retriever.encode([q.text for q in corpus.test])
            rank = ranks(query, passages, self._relevant)
            self.progress.batch_done()
            info = getattr(built, "training_info", None)
            return TextRetCleanRecord(
                type="textret_clean",
                id=unit.id,
                model=model.model_dump(),
                defense=defense.model_dump(),
                data=corpus.describe(),
                metrics=metrics(rank, ndcg10(query, passages, self._relevant)),
                ranks=rank.tolist(),
                training=None
                if not info
                else {
                    "wall_time": info.get("wall_time"),
                    "loss_history": info.get("loss_history", []),
                    "ranker_loss_history": info.get("ranker_loss_history"),
                    "ranker_warmup_accuracy": info.get("ranker_warmup_accuracy"),
                },
            )
        if isinstance(key, RerankKey):
            return self.rerank_record(unit, retriever, passages, built)
        if isinstance(key, AucKey):
            query = retriever.encode([q.text for q in corpus.test])
            self.progress.batch_done()
            return TextRetAucRecord(
                type="textret_auc",
                id=unit.id,
                clean_id=unit.needs[0],
                **score_auc(query @ passages.T, self._relevant),
            )
        column = self.columns[key.ci]
        if isinstance(key, PipelineKey):
            clean, rerank = inputs[unit.needs[0]], inputs[unit.needs[1]]
            return self.pipeline_cell(unit, clean, rerank, column, retriever, passages, built)
        return self.attack_cell(unit, inputs[unit.needs[0]], column, retriever, passages)

    def close(self) -> None:
        self._pair = self._retriever = self._passages = None
