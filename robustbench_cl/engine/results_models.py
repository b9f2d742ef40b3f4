"""The ``results.json`` frame: the run, the threat models, the flag count, and the shapes every
task's section shares (a rate, a flag, a threat model, an attack entry).

The JSON Schema of ``results.json`` is generated from these models and the result fields of
every registered task (``Task.result_fields``): :func:`robustbench_cl.engine.results.results_schema`.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

STRICT = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

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
    """A threat model as a cell ran under it (``ThreatModel.to_dict``)."""

    model_config = STRICT
    norm: Norm
    eps: float
    space: Space
    bounds: list[float] | None = Field(..., max_length=2, min_length=2)
    targeted: bool
    universal: bool
    access: Access
    budget: dict[str, Any]
    eps_relative: bool
    #: the budget as the config wrote it (``"8/255"``), when a fraction: the label reports show
    eps_label: str | None = Field(None, exclude_if=lambda value: value is None)


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


class Rate(BaseModel):
    """A rate with its count, its denominator and a 95% interval (``None`` when ``n`` is 0)."""

    model_config = STRICT
    rate: float | None
    k: Count
    n: Count
    ci95: list[float] | None


class CoreResults(BaseModel):
    """The aggregate results of one run directory. See docs/results-schema.md."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: Literal["robustbench_cl.results"] = Field(..., alias="schema")
    schema_version: str = Field(..., pattern="^1\\.[0-9]+$")
    run: Run
    threat_models: list[Threat]
    flag_count: int = Field(..., ge=0)


class EpsilonAudit(BaseModel):
    """
    an empirical epsilon lower bound: `two-split` (threshold chosen on one half of the audited
    samples, FPR and FNR counted on the other, Clopper-Pearson) or `one-run` (Steinke et al.)
    """

    model_config = STRICT
    method: Literal["two-split", "one-run"]
    certified: bool = False
    """
    true when the bound's trials are independent (one-run: each canary included at random);
    a two-split bound on one model's fixed split is the field's usual estimate, not a guarantee
    """
    epsilon_lb: float = Field(..., ge=0.0)
    epsilon_point: float | None = None
    epsilon_interval: list[float | None] | None = None
    """
    two-split: `[epsilon_lb, upper]`, the bound from the Clopper-Pearson upper and from the lower
    bounds on the rates (upper null when a rate can be 0); each end at 95%, the pair at 90% or
    more; one-run: null
    """
    delta: float = Field(..., ge=0.0, lt=1.0)
    confidence: float = Field(..., gt=0.0, lt=1.0)
    max_certifiable: float = Field(..., ge=0.0)
    threshold: float | None = None
    n_counted: list[int] | None = None
    false_positives: int | None = None
    false_negatives: int | None = None
    canaries: int | None = None
    guesses: int | None = None
    correct: int | None = None
