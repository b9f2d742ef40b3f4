"""The ``chat_membership`` part of ``results.json`` and its records in ``cells.jsonl``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from robustbench_cl.engine.records import DefenseRef, Flag, ModelRef, Record, flag
from robustbench_cl.engine.results_models import STRICT, EpsilonAudit, Interval, Probability
from robustbench_cl.privacy.epsilon import UNDERPOWERED_EPSILON


class ChatAttackResult(BaseModel):
    """
    one attack on one (model, defense): its ROC summary, epsilon bound and random-split control
    """

    model_config = STRICT
    attack: str
    auc: float = Field(..., ge=0.0, le=1.0)
    auc_ci95: Interval
    advantage: float = Field(..., ge=0.0, le=1.0)
    tpr_at_fpr: dict[str, Probability]
    tpr_at_fpr_ci95: dict[str, Interval]
    epsilon_audit: EpsilonAudit
    control_auc: float | None = Field(None, ge=0.0, le=1.0)
    """
    the selection control: pseudo-members the target never saw, chosen by the members' rule,
    against the same non-members (must be at 0.5; null for the reference attack and for files)
    """
    control_auc_ci95: Interval | None = None


class ChatMembershipEntry(BaseModel):
    """
    one chat model (and defense) audited for its fine-tuning data
    """

    model_config = STRICT
    id: str
    pair: str
    model: dict[str, Any]
    defense: dict[str, Any]
    source: str
    n_members: int = Field(..., ge=0)
    n_nonmembers: int = Field(..., ge=0)
    reference: str | None
    shift_auc: float | None = Field(None, ge=0.0, le=1.0)
    shift_auc_ci95: Interval | None = None
    attacks: list[ChatAttackResult]
    wall_time: float = Field(..., ge=0.0)
    flags: list[Flag]


class ChatMembershipRecord(Record):
    """One (model, defense) audit: every attack's metrics, the controls and the raw scores."""

    type: Literal["chat_membership"]
    model: ModelRef
    defense: DefenseRef
    source: str
    n_members: int = Field(..., ge=0)
    n_nonmembers: int = Field(..., ge=0)
    reference: str | None
    shift_auc: float | None
    shift_auc_ci95: list[float] | None
    attacks: list[dict[str, Any]]
    members: list[int]
    scores: dict[str, list[float]]


def pair_label(record: ChatMembershipRecord) -> str:
    model = record.model.name or record.model.spec
    defense = record.defense.name or record.defense.defense
    return f"{model} / {defense}"


def chat_membership_flags(entry: dict[str, Any]) -> list[Flag]:
    """A selection control that is not at chance is a biased choice of members; a reference
    model that tells the two sets apart is a distribution shift that every AUC includes."""
    flags = []
    for result in entry["attacks"]:
        if result.get("control_auc_ci95") is None:
            continue
        low, high = result["control_auc_ci95"]
        if high < 0.5 or low > 0.5:
            flags.append(
                flag(
                    "control_not_at_chance",
                    f"{result['attack']} tells pseudo-members the model never saw (chosen by the "
                    f"members' rule) from the non-members with AUC {result['control_auc']:.3f} "
                    f"[{low:.3f}, {high:.3f}]: how the sets are chosen differs in more than "
                    "membership, and the row's AUCs include that difference",
                )
            )
    if entry.get("shift_auc_ci95") is not None:
        low, high = entry["shift_auc_ci95"]
        if high < 0.5 or low > 0.5:
            flags.append(
                flag(
                    "distribution_shift",
                    f"the reference model, which saw neither set, tells members from "
                    f"non-members with AUC {entry['shift_auc']:.3f} [{low:.3f}, {high:.3f}]: the "
                    "sets differ in more than membership, and every AUC here includes that "
                    "difference; draw non-members from the members' distribution",
                )
            )
    smallest = min((r["epsilon_audit"]["max_certifiable"] for r in entry["attacks"]), default=9)
    if smallest < UNDERPOWERED_EPSILON:
        flags.append(
            flag(
                "audit_underpowered",
                f"even a perfect attack could certify at most epsilon {smallest:.2f} with "
                f"{entry['n_members']} + {entry['n_nonmembers']} examples; audit more (n)",
            )
        )
    return flags


def chat_membership_entry(record: ChatMembershipRecord) -> dict[str, Any]:
    entry = {
        "id": record.id,
        "pair": pair_label(record),
        "model": record.model.model_dump(),
        "defense": record.defense.model_dump(),
        "source": record.source,
        "n_members": record.n_members,
        "n_nonmembers": record.n_nonmembers,
        "reference": record.reference,
        "shift_auc": record.shift_auc,
        "shift_auc_ci95": record.shift_auc_ci95,
        "attacks": record.attacks,
        "wall_time": record.wall_time,
    }
    entry["flags"] = chat_membership_flags(entry)
    return entry
