"""The classification records of ``cells.jsonl``: a pair's clean pass and one attack cell."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from robustbench_cl.engine.records import AttackRef, DefenseRef, Flag, ModelRef, Record, Threat


class CleanRecord(Record):
    """A pair's clean pass: per-sample correctness and the gradient/randomisation probes."""

    type: Literal["clean"]
    model: ModelRef
    defense: DefenseRef
    defense_kind: str | None = None
    membership_skipped: list[dict[str, Any]] | None = None
    n: int = Field(..., ge=0)
    correct: list[int]
    clean_accuracy: float = Field(..., ge=0.0, le=1.0)
    clean_ci95: list[float]
    probes: dict[str, Any]
    normalization: str | None = None
    flags: list[Flag] = []


class CellRecord(Record):
    """One attack cell: per-sample outcomes (1 robust, 0 broken here, -1 not attacked: wrong
    when clean or broken earlier in the cascade)."""

    type: Literal["cell"]
    pair_id: str
    group_id: str
    model: ModelRef
    defense: DefenseRef
    attack: AttackRef
    threat: Threat
    adaptive: bool | None = None
    uses_gradients: bool | None = None
    cascade: bool = True
    n: int = Field(..., ge=0)
    attacked: int = Field(..., ge=0)
    broken: int = Field(..., ge=0)
    robust_count: int = Field(..., ge=0)
    clean_accuracy: float = Field(..., ge=0.0, le=1.0)
    robust_accuracy: float = Field(..., ge=0.0, le=1.0)
    robust_ci95: list[float]
    attack_success_rate: float
    broken_rate: float | None = None
    cost: dict[str, int]
    #: seconds in the attack's calls (the unit's wall_time adds building, probes, examples)
    attack_seconds: float | None = None
    flags: list[Flag]
    sanity_probe: dict[str, Any]
    example_indices: list[int]
    examples: str | None = None
    """run-relative path of the kept adversarial examples (records before 1.1 have none)"""
    outcomes: list[Annotated[int, Field(ge=-1, le=1)]]
    #: a minimum-norm attack (fmn, ddn): each sample's smallest adversarial norm found; None
    #: where it was not attacked or none was found (``outcomes`` says which)
    min_norms: list[float | None] | None = Field(None, exclude_if=lambda value: value is None)
