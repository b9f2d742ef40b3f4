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
from robustbench_cl.engine.results_models import (
    STRICT,
    Attack,
    EpsilonAudit,
    Interval,
    Probability,
)
from robustbench_cl.privacy.epsilon import UNDERPOWERED_EPSILON


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
        "epsilon_audit",
        "privacy",
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
    it is miscalibrated, and its numbers say nothing about the model's privacy. An audited
    epsilon above the accountant's is a broken training or accounting; an audit that could not
    certify more than a small epsilon even with a perfect attack says nothing either way."""
    flags = []
    audit, claim = entry.get("epsilon_audit"), entry.get("privacy")
    if audit and claim and audit["epsilon_lb"] > claim["epsilon"]:
        certified = audit.get("certified", audit["method"] == "one-run")
        consequence = (
            "the training does not do what its accounting assumes (noise, clipping, sampling) "
            "or the accounting is wrong"
            if certified
            else "this two-split bound treats one model's audited examples as independent "
            "trials, which a fixed split does not make them; confirm it with a one-run audit "
            "before blaming the training"
        )
        flags.append(
            flag(
                "audit_exceeds_accountant",
                f"the audit bounds epsilon >= {audit['epsilon_lb']:.3f} at "
                f"{100 * audit['confidence']:.0f}% confidence, above the accountant's "
                f"{claim['epsilon']:.3f} (delta {claim['delta']:g}): {consequence}",
            )
        )
    if audit and audit["max_certifiable"] < UNDERPOWERED_EPSILON:
        flags.append(
            flag(
                "audit_underpowered",
                f"even a perfect attack could certify at most epsilon "
                f"{audit['max_certifiable']:.2f} with these samples "
                f"({_audit_size(audit)}): the bound cannot show a meaningful leak; audit more "
                "samples (or more canaries and guesses)",
            )
        )
    low, high = entry["auc_ci95"]
    if high < 0.5:
        flags.append(
            flag(
                "auc_below_chance",
                f"AUC {entry['auc']:.3f} [{low:.3f}, {high:.3f}] is significantly below 0.5: the "
                "attack ranks non-members above members, so it is miscalibrated (reference "
                "models unlike the target, or an inverted score), not evidence of privacy",
            )
        )
    return flags


def _audit_size(audit: dict[str, Any]) -> str:
    if audit["method"] == "one-run":
        return f"{audit['guesses']} guesses on {audit['canaries']} canaries"
    members, nonmembers = audit["n_counted"]
    return f"{members} members and {nonmembers} non-members counted after the threshold half"


# ---------------------------------------------------------------------- results.json
class PrivacyClaim(BaseModel):
    """
    the accountant's guarantee for a DP-trained model
    """

    model_config = STRICT
    epsilon: float = Field(..., ge=0.0)
    delta: float = Field(..., ge=0.0, lt=1.0)
    noise_multiplier: float = Field(..., ge=0.0)
    max_grad_norm: float = Field(..., gt=0.0)
    sample_rate: float = Field(..., gt=0.0, le=1.0)
    steps: int = Field(..., ge=0)
    accountant: str


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
    epsilon_audit: EpsilonAudit | None = None
    """
    the empirical epsilon lower bound this attack certifies
    """
    privacy: PrivacyClaim | None = None
    """
    what the pair's DP training claims (its accountant's epsilon), if it claims anything
    """
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
    epsilon_audit: dict[str, Any] | None = None
    privacy: dict[str, Any] | None = None
