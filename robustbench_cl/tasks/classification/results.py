"""The classification part of ``results.json``: ``pairs`` (clean accuracy and the worst case per
threat model of each (model, defense)) and ``cells`` (one per attack at a threat model)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from robustbench_cl.engine.results_models import STRICT, Attack, Count, Flag, Interval, Threat


class CostEntry(BaseModel):
    model_config = STRICT
    forward: int = Field(..., ge=0)
    backward: int = Field(..., ge=0)
    queries: int = Field(..., ge=0)


class MinNorm(BaseModel):
    """What a minimum-norm cell measured beyond its verdict at the cell's eps."""

    model_config = STRICT
    median: float | None
    """
    the median smallest adversarial norm over the attacked samples (a sample without one counts
    as infinite); None when none were attacked or half or more have none
    """
    attacked: Count
    found: Count
    """
    attacked samples with an adversarial example at some norm
    """
    complete: bool
    """
    every clean-correct sample was attacked (the cell came first in its cascade, or there was no
    cascade): only then is ``curve`` the model's robust accuracy at each eps
    """
    curve: list[list[float]] | None
    """
    ``[eps, robust accuracy]`` points of a step function, eps rising from 0: robust accuracy at
    eps counts the clean-correct samples whose smallest norm found is above eps; the points are
    the norms found (at most 100, evenly spaced by rank), the cell's eps and the end (None
    unless complete)
    """


class CellEntry(BaseModel):
    model_config = STRICT
    id: str
    pair_id: str
    group_id: str
    pair: str
    attack: Attack
    column: str
    threat: Threat
    threat_label: str
    adaptive: bool
    """
    false for a non-adaptive (transfer) evaluation of a defense
    """
    cascade: bool
    n: int = Field(..., ge=0)
    attacked: int = Field(..., ge=0)
    broken: int = Field(..., ge=0)
    robust_count: int = Field(..., ge=0)
    clean_accuracy: float = Field(..., ge=0.0, le=1.0)
    robust_accuracy: float = Field(..., ge=0.0, le=1.0)
    robust_ci95: Interval
    attack_success_rate: float = Field(..., ge=0.0, le=1.0)
    """
    cumulative down the cascade: the clean-correct samples broken by this attack or an earlier
    one at the same threat model, over the clean-correct samples
    """
    broken_rate: float = Field(..., ge=0.0, le=1.0)
    """
    this attack alone: the samples it broke first (robust after every earlier attack of its
    group), over the clean-correct samples; without a cascade it equals attack_success_rate
    """
    cost: CostEntry
    wall_time: float = Field(..., ge=0.0)
    flags: list[Flag]
    examples: str | None
    """
    run-relative path of a safetensors file of example images
    """
    min_norm: MinNorm | None = Field(None, exclude_if=lambda value: value is None)
    """
    a minimum-norm attack (fmn, ddn): the smallest adversarial norms it found and the security
    curve they give
    """


class WorstCase(BaseModel):
    model_config = STRICT
    threat: Threat
    label: str
    robust_accuracy: float = Field(..., ge=0.0, le=1.0)
    ci95: Interval
    best_known_attack: str | None
    attacks: list[str]
    breaks: dict[str, Count]


class MembershipSkippedItem(BaseModel):
    attack: str
    index: str | None = None
    reason: str


class PairEntry(BaseModel):
    model_config = STRICT
    id: str
    label: str
    model: str
    model_spec: str
    defense: str
    defense_id: str
    defense_params: dict[str, Any]
    n: int = Field(..., ge=0)
    clean_accuracy: float = Field(..., ge=0.0, le=1.0)
    clean_ci95: Interval
    cell_ids: list[str]
    worst_case: list[WorstCase]
    membership_skipped: list[MembershipSkippedItem] | None = None
    normalization: str | None = None
    """
    the input normalisation inside the model: none, imagenet or mean/std (null: not probed)
    """
    flags: list[Flag] = []
    """
    flags of the clean pass: missing_classes, normalization_mismatch, defense_degrades_clean
    """
