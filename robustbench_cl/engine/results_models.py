"""The ``results.json`` models: the run, the threat models, the classification pairs and cells.

The JSON Schema of ``results.json`` is generated from these models and the section model of
every registered task (``Task.section_model``): :func:`robustbench_cl.engine.results.results_schema`.
Tasks build their sections as plain dicts; validation checks them against the models.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

STRICT = ConfigDict(extra="forbid")

#: a rate, a probability or an accuracy
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
#: a 95% interval of a probability
Interval = Annotated[list[Probability], Field(min_length=2, max_length=2)]
Count = Annotated[int, Field(ge=0)]


class Run(BaseModel):
    model_config = STRICT
    suite: str | None
    profile: str | None
    config_hash: str | None
    seed: int | None
    command: str | None
    started: str | None
    finished: str | None
    wall_time: float | None
    device: str | None
    device_name: str | None
    git_commit: str | None
    versions: dict[str, str]
    data: dict[str, Any] | None
    complete: bool
    artifacts: dict[str, str] | None = None
    """
    cached artifact (cache-relative path) -> content hash, for those this process built or loaded
    """
    threads: int | None = Field(None, ge=1)
    """
    torch CPU threads of the run
    """


class Norm(Enum):
    LINF = "linf"
    L2 = "l2"
    L1 = "l1"
    L0 = "l0"
    NONE = "none"


class Space(Enum):
    INPUT = "input"
    EMBEDDING = "embedding"
    TOKEN = "token"


class Access(Enum):
    WHITE_BOX = "white-box"
    BLACK_BOX = "black-box"
    TRANSFER = "transfer"


class Threat(BaseModel):
    norm: Norm
    eps: float
    space: Space
    bounds: list[float] | None = Field(..., max_length=2, min_length=2)
    targeted: bool
    universal: bool
    access: Access
    budget: dict[str, Any]
    eps_relative: bool


class Flag(BaseModel):
    model_config = STRICT
    code: str
    message: str


class Attack(BaseModel):
    model_config = STRICT
    attack: str
    label: str
    params: dict[str, Any]
    settings: dict[str, Any]


class Cost(BaseModel):
    model_config = STRICT
    forward: int = Field(..., ge=0)
    backward: int = Field(..., ge=0)
    queries: int = Field(..., ge=0)


class Cell(BaseModel):
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
    cost: Cost
    wall_time: float = Field(..., ge=0.0)
    flags: list[Flag]
    examples: str | None
    """
    run-relative path of a safetensors file of example images
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


class Pair(BaseModel):
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
    flags of the clean pass: missing_classes, normalization_mismatch
    """


class Rate(BaseModel):
    rate: float | None
    k: int
    n: int
    ci95: list[Any] | None


class CoreResults(BaseModel):
    """The aggregate results of one run directory. See docs/results-schema.md."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: Literal["robustbench_cl.results"] = Field(..., alias="schema")
    schema_version: str = Field(..., pattern="^1\\.[0-9]+$")
    run: Run
    threat_models: list[Threat]
    pairs: list[Pair]
    cells: list[Cell]
    flag_count: int = Field(..., ge=0)
