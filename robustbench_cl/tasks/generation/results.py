"""The generation part of ``results.json`` and its record in ``cells.jsonl``."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from robustbench_cl.engine.records import DefenseRef, ModelRef, Record
from robustbench_cl.engine.results_models import STRICT, Probability
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.tasks.pairs import pair_labels


def _pair_generations(summary: RunSummary) -> list[tuple[str, GenerationRecord]]:
    """(pair label, its generation record) per pair that has one, in pair order."""
    records = {r.pair_id: r for r in summary.of("generation")}
    return [(name, records[pid]) for pid, name in pair_labels(summary).items() if pid in records]


def _training_summary(log: dict[str, Any] | None) -> dict[str, Any] | None:
    if not log or "auc" not in log:  # only energy-trained defenses (DAT) log an AUC trace
        return None
    aucs = log.get("auc", [])
    return {
        "final_gen_steps": log.get("final_gen_steps"),
        "nan_batches": log.get("nan_batches", 0),
        "auc_std_last_100": log.get("auc_std_last_100"),
        "auc_mean_last_100": float(np.mean(aucs[-100:])) if aucs else None,
        "batches": len(aucs),
        # a coarse trace for the report: one point every 10 batches
        "auc_trace": aucs[::10],
        "gen_steps_trace": log.get("gen_steps", [])[::10],
    }


def _generation_entry(record: GenerationRecord, pair_label: str) -> dict[str, Any]:
    keys = (
        "judge",
        "n_samples",
        "steps",
        "step_size",
        "intended_class_accuracy",
        "mini_fid",
        "fid_train_vs_eval",
        "fid_seeds_vs_eval",
        "ood_auroc",
        "ood_auroc_by_kind",
        "samples_in_bounds",
        "training",
        "grid",
        "wall_time",
    )
    return {"id": record.id, "pair_id": record.pair_id, "pair": pair_label} | {
        key: getattr(record, key) for key in keys
    }


# ---------------------------------------------------------------------- results.json
class GenerationTraining(BaseModel):
    final_gen_steps: int | None = None
    nan_batches: int | None = Field(None, ge=0)
    auc_std_last_100: float | None = None
    auc_mean_last_100: float | None = None
    batches: int | None = Field(None, ge=0)
    auc_trace: list[float] | None = None
    gen_steps_trace: list[int] | None = None


class GenerationEntry(BaseModel):
    """
    class-conditional samples of one (model, defense), scored by an independent judge
    """

    model_config = STRICT
    id: str
    pair_id: str
    pair: str
    judge: str
    n_samples: int = Field(..., ge=0)
    steps: int = Field(..., ge=0)
    step_size: float = Field(..., ge=0.0)
    intended_class_accuracy: float = Field(..., ge=0.0, le=1.0)
    mini_fid: float = Field(..., ge=0.0)
    fid_train_vs_eval: float = Field(..., ge=0.0)
    fid_seeds_vs_eval: float = Field(..., ge=0.0)
    ood_auroc: float = Field(..., ge=0.0, le=1.0)
    ood_auroc_by_kind: dict[str, Probability]
    samples_in_bounds: bool
    training: GenerationTraining | None
    grid: str
    wall_time: float = Field(..., ge=0.0)


# ---------------------------------------------------------------------- cells.jsonl
class GenerationRecord(Record):
    """A pair's sampler audit: class-conditional samples judged by an independent classifier,
    their mini-FID, and the OOD AUROC of the model's energy."""

    type: Literal["generation"]
    pair_id: str
    model: ModelRef
    defense: DefenseRef
    judge: str
    n_samples: int = Field(..., ge=0)
    steps: int = Field(..., ge=0)
    step_size: float
    intended_class_accuracy: float | None
    samples_in_bounds: bool
    mini_fid: float | None
    fid_train_vs_eval: float | None
    fid_seeds_vs_eval: float | None
    ood_auroc: float | None
    ood_auroc_by_kind: dict[str, float | None]
    training: dict[str, Any] | None
    grid: str
    samples: str | None = None
    """the samples and their intended classes (a safetensors file in the run directory)"""
