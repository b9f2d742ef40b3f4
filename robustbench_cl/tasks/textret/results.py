"""The text-retrieval part of ``results.json``, its records in ``cells.jsonl`` and its flags."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from robustbench_cl.engine.records import (
    AttackRef,
    DefenseRef,
    Flag,
    ModelRef,
    Rate,
    Record,
    Threat,
    as_json,
    attack_entry,
    flag,
    label,
)
from robustbench_cl.engine.results_models import STRICT, Attack
from robustbench_cl.engine.summary import RunSummary, eps_text, threat_dict


class Results:
    """The text-retrieval task's results section (mixed into it): pairs, cells and columns from its records."""

    # ------------------------------------------------------------------ results
    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        cleans = summary.of("textret_clean")
        cells = summary.of("textret")
        aucs = {r.clean_id: r for r in summary.of("textret_auc")}
        reranks = {r.clean_id: r for r in summary.of("textret_rerank")}
        if not cleans and not cells:
            return None
        pairs = [
            {
                "id": r.id,
                "label": _pair_label(r),
                "model": label(r.model),
                "defense": label(r.defense),
                "defense_kind": r.defense.defense,
                "data": r.data,
                "metrics": r.metrics,
                "training_seconds": (r.training or {}).get("wall_time"),
                "global_auc": aucs[r.id].global_auc if r.id in aucs else None,
                "per_query_auc": aucs[r.id].per_query_auc if r.id in aucs else None,
                "rerank": _rerank_entry(reranks.get(r.id)),
                "ranker_warmup_accuracy": (r.training or {}).get("ranker_warmup_accuracy"),
            }
            for r in cleans
        ]
        pairs = [entry for pair in pairs for entry in [pair, *_pipeline_pairs(pair, reranks)]]
        labels = {p["id"]: p["label"] for p in pairs}
        entries = []
        for r in cells:
            threat = threat_dict(r.threat)
            entry = {
                "id": r.id,
                "clean_id": r.clean_id,
                "pair": labels.get(r.clean_id, _pair_label(r)),
                "attack": attack_entry(r.attack),
                "column": _column_text(r.attack, threat),
                "threat": threat,
                "n": r.n,
                "metrics": r.metrics,
                "asr": as_json(r.asr),
                "noise_asr": as_json(r.noise_asr),
                "cost": r.cost,
                "examples": r.examples,
                "wall_time": r.wall_time,
            }
            history = list(r.margin_history)
            if r.attack.attack == "corpus-poison":  # its similarity rises: flip it
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
                    {
                        "row": pair["label"],
                        "measure": "clean MRR@10",
                        "value": mrr,
                        "better": "higher",
                    }
                )
        for cell in section.get("cells", []):
            mrr = (cell.get("metrics") or {}).get("mrr@10")
            if mrr is not None:
                rows.append(
                    {
                        "row": cell["pair"],
                        "measure": f"{cell['column']} MRR@10",
                        "value": mrr,
                        "better": "higher",
                    }
                )
            rate = ((cell.get("asr") or {}).get("@1") or {}).get("rate")
            if rate is not None:
                rows.append(
                    {
                        "row": cell["pair"],
                        "measure": f"{cell['column']} ASR@1",
                        "value": rate,
                        "better": "lower",
                    }
                )
        return rows

    @classmethod
    def flag_rows(cls, results: dict[str, Any]) -> list[dict[str, str]]:
        return cls.rows_of(
            (results.get("textret") or {}).get("cells", []),
            lambda cell: f"{cell['pair']} | {cell['column']}",
        )

    @classmethod
    def threat_models(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        return [c["threat"] for c in results.get("textret", {}).get("cells", [])]


def pipeline_pair_id(rerank_id: str, ranker: str) -> str:
    """The id of a (retriever, defense)'s pipeline with one of its rankers, in results.json."""
    return f"{rerank_id}/{ranker}"


def _pipeline_pairs(
    pair: dict[str, Any], reranks: dict[str, TextRetRerankRecord]
) -> list[dict[str, Any]]:
    """A row per ranker of an AR2 pair: its retriever's top K re-ranked, clean metrics."""
    record = reranks.get(pair["id"])
    if record is None:
        return []
    return [
        dict(
            pair,
            id=pipeline_pair_id(record.id, name),
            label=f"{pair['label']}, top {record.candidates} re-ranked ({RANKER_LABELS.get(name, name)})",
            metrics=entry["metrics"],
            training_seconds=None,
            global_auc=None,
            per_query_auc=None,
            rerank=None,
            ranker_warmup_accuracy=None,
            pipeline={"ranker": name, "candidates": record.candidates, "of": pair["id"]},
        )
        for name, entry in sorted(record.rankers.items(), key=_ranker_order)
    ]


def _ranker_order(item: tuple[str, Any]) -> tuple[int, str]:
    names = list(RANKER_LABELS)
    return (names.index(item[0]) if item[0] in names else len(names), item[0])


#: how the report names AR2's rankers
RANKER_LABELS = {"warmup": "warm-up ranker", "final": "game's ranker"}


def _rerank_entry(record: TextRetRerankRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "candidates": record.candidates,
        **{name: entry["metrics"] for name, entry in record.rankers.items()},
    }


def column_name(column: dict[str, Any]) -> str:
    """A planned attack column's name in the report (its attack and budget)."""
    return _column_text(
        {"attack": column["config"].attack, "name": column["config"].name},
        column["threat"].to_dict(),
    )


def _column_text(attack: Any, threat: dict[str, Any]) -> str:
    name = label(attack)
    if threat["norm"] == "l0":
        return f"{name} {int(threat['eps'])} tok"
    if threat["norm"] == "none":
        return name
    relative = " rel." if threat.get("eps_relative") else ""
    return f"{name} {threat['norm']} {eps_text(threat)}{relative}"


def _pair_label(record: TextRetCleanRecord | TextRetRecord) -> str:
    return f"{label(record.model)} / {label(record.defense)}"


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
                flag(
                    "noise_beats_attack",
                    f"random token swaps of the same budget break {100 * noise['@10']['rate']:.1f}% "
                    f"of the queries at k=10, the attack {100 * attack['rate']:.1f}%",
                )
            )
    if len(history) >= 10:
        tail = max(1, len(history) // 5)
        drop = history[-tail - 1] - history[-1]
        scale = abs(history[0] - history[-1]) or 1.0
        if drop > 0.05 * scale:
            flags.append(
                flag(
                    "attack_not_converged",
                    f"the attack's objective still moved by {drop:.3f} over its last "
                    f"{tail} steps (more steps would likely break more)",
                )
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
    threat: Threat
    n: int = Field(..., ge=0)
    metrics: dict[str, float]
    ranks: list[int]
    asr: dict[str, Rate]
    noise_asr: dict[str, Rate] | None
    margin_history: list[float]
    cost: dict[str, int]
    examples: list[dict[str, Any]]
    pipeline: dict[str, Any] | None = None
    """against a re-ranking pipeline: ``ranker``, ``candidates`` and the ``rerank_id`` whose
    clean ranks the ASR counts from"""
