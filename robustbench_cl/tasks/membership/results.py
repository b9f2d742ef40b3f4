"""The membership part of ``results.json`` and its records in ``cells.jsonl``: one entry per
audit (AUC, TPR at low FPR, advantage, with intervals) and its sanity flags."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from robustbench_cl.engine.records import (
    AttackRef,
    DefenseRef,
    Flag,
    ModelRef,
    Record,
    attack_entry,
    flag,
)
from robustbench_cl.engine.results_models import STRICT, Attack, Interval, Probability


def _membership_entry(record: MembershipRecord, pair_label: str) -> dict[str, Any]:
    keys = (
        "n_members",
        "n_nonmembers",
        "fpr_resolution",
        "auc",
        "auc_ci95",
        "advantage",
        "advantage_ci95",
        "tpr_at_fpr",
        "tpr_at_fpr_ci95",
        "bootstrap",
        "fpr",
        "tpr",
        "reference_models",
        "reference_in_fraction",
        "offline",
        "population_z",
        "wall_time",
    )
    entry = {
        "id": record.id,
        "pair_id": record.pair_id,
        "pair": pair_label,
        "attack": attack_entry(record.attack),
        **{key: getattr(record, key) for key in keys},
    }
    entry["flags"] = membership_flags(entry)
    return entry


def membership_flags(entry: dict[str, Any]) -> list[Flag]:
    """An attack whose AUC is significantly *below* chance ranks non-members above members:
    it is miscalibrated, and its numbers say nothing about the model's privacy."""
    low, high = entry["auc_ci95"]
    if high < 0.5:
        return [
            flag(
                "auc_below_chance",
                f"AUC {entry['auc']:.3f} [{low:.3f}, {high:.3f}] is significantly below 0.5: the "
                "attack ranks non-members above members, so it is miscalibrated (reference "
                "models unlike the target, or an inverted score), not evidence of privacy",
            )
        ]
    return []


# ---------------------------------------------------------------------- results.json
class MembershipEntry(BaseModel):
    """
    one membership-inference column for one (model, defense)
    """

    model_config = STRICT
    id: str
    pair_id: str
    pair: str
    attack: Attack
    n_members: int = Field(..., ge=0)
    n_nonmembers: int = Field(..., ge=0)
    fpr_resolution: float = Field(..., ge=0.0, le=1.0)
    auc: float = Field(..., ge=0.0, le=1.0)
    auc_ci95: Interval
    advantage: float = Field(..., ge=0.0, le=1.0)
    advantage_ci95: Interval
    tpr_at_fpr: dict[str, Probability]
    tpr_at_fpr_ci95: dict[str, Interval]
    bootstrap: int = Field(..., ge=0)
    fpr: list[Probability]
    tpr: list[Probability]
    reference_models: int = Field(..., ge=0)
    offline: bool
    population_z: int = Field(..., ge=0)
    wall_time: float = Field(..., ge=0.0)
    reference_in_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    flags: list[Flag]
    """
    sanity flags (docs/sanity-checks.md)
    """


# ---------------------------------------------------------------------- cells.jsonl
class MembershipReferencesRecord(Record):
    """The reference models of one (pair, k, IN fraction), trained or found in the cache."""

    type: Literal["membership_references"]
    pair_id: str
    k: int = Field(..., ge=0)
    in_fraction: float | None
    references_trained: int = Field(..., ge=0)


class MembershipRecord(Record):
    """One membership-inference audit: per-sample scores and membership, ROC and intervals."""

    type: Literal["membership"]
    pair_id: str
    model: ModelRef
    defense: DefenseRef
    attack: AttackRef
    reference_models: int = Field(..., ge=0)
    reference_in_fraction: float | None
    offline: bool
    references_trained: int = Field(..., ge=0)
    population_z: int = Field(..., ge=0)
    n_members: int = Field(..., ge=0)
    n_nonmembers: int = Field(..., ge=0)
    auc: float
    auc_ci95: list[float]
    advantage: float
    advantage_ci95: list[float]
    tpr_at_fpr: dict[str, float]
    tpr_at_fpr_ci95: dict[str, list[float]]
    fpr_resolution: float
    bootstrap: int
    fpr: list[float]
    tpr: list[float]
    scores: list[float]
    members: list[int]
