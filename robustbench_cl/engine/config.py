"""The matrix config: YAML validated with pydantic, with one-line errors.

A config names the task, the data, the models, the defenses and the attacks, each attack with
its threat model; an ``eps`` list is a sweep. ``profiles`` hold overrides (``quick``, ``full``)
merged over the base before validation.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from robustbench_cl.errors import UserError, under_field
from robustbench_cl.utils import parse_fraction, stable_hash

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    name: str = "digits"
    split: Literal["train", "test"] = "test"
    n: int | None = Field(default=None, ge=1)
    train_split: Literal["train", "test"] = "train"

    @field_validator("name")
    @classmethod
    def _absolute_folder(cls, name: str) -> str:
        """A ``safetensors:`` folder is recorded as an absolute path, so that Ray workers (which
        do not share the driver's working directory) and later resumes read the same files."""
        for prefix in ("safetensors:", "imagefolder:", "cifar10:", "cifar100:", "hf-disk:"):
            if name.startswith(prefix):
                folder, mark, query = name.removeprefix(prefix).partition("?")
                return prefix + str(Path(folder).expanduser().resolve()) + mark + query
        return name


class ModelConfig(_Strict):
    spec: str
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.spec


class DefenseConfig(_Strict):
    defense: str = "none"
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.defense


class ThreatConfig(_Strict):
    norm: Literal["linf", "l2", "l1", "l0", "none"] = "linf"
    eps: float | list[float]
    space: Literal["input", "embedding", "token"] = "input"
    bounds: tuple[float, float] | None = (0.0, 1.0)
    targeted: bool = False
    access: Literal["white-box", "black-box", "transfer"] = "white-box"
    #: embedding space only: eps is relative to the mean token-embedding norm
    eps_relative: bool = False
    #: what the attack may spend: ``steps``, ``restarts``, ``queries``, ``eot_samples``; each
    #: overrides the attack's own parameter (and is part of the threat model's id)
    budget: dict[str, int] = Field(default_factory=dict)

    @field_validator("eps")
    @classmethod
    def _eps_not_empty(cls, value: float | list[float]) -> float | list[float]:
        if isinstance(value, list) and not value:
            raise ValueError("an eps sweep needs at least one value")
        return value

    def eps_values(self) -> list[float]:
        return list(self.eps) if isinstance(self.eps, list) else [self.eps]


class AttackConfig(_Strict):
    attack: str
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    threat: ThreatConfig

    @property
    def label(self) -> str:
        return self.name or self.attack


class MembershipConfig(_Strict):
    """A membership-inference column: ``loss``, ``lira``, ``rmia`` or ``art-blackbox``.

    ``n`` members (from ``data.train_split``) and ``n`` non-members (from ``data.split``) are
    audited; by default half the evaluation split, the other half being RMIA's population z.
    """

    attack: str
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    n: int | None = Field(default=None, ge=2)

    @property
    def label(self) -> str:
        return self.name or self.attack


class GenerationConfig(_Strict):
    """Ask every (model, defense) to draw each class; an independent judge scores the samples."""

    n_per_class: int = Field(default=20, ge=2)
    steps: int = Field(default=40, ge=0)
    step_size: float = Field(default=0.2, gt=0)
    judge: str = "builtin:digits-judge"
    #: the classes to draw (``robustbench-cl generate --class K``); every class when omitted
    classes: list[int] | None = Field(default=None, min_length=1)


class RetrievalDataConfig(_Strict):
    #: ``shapes`` (built in) or ``karpathy:DIR`` (COCO / Flickr30K in the Karpathy JSON layout)
    name: str = "shapes"
    #: test images evaluated (all their captions come with them); all when omitted
    n: int | None = Field(default=None, ge=2)
    #: training images the universal attacks are fitted on; all when omitted
    train_n: int | None = Field(default=None, ge=2)


class RetrievalConfig(_Strict):
    """Image-text retrieval under universal perturbations.

    Every attack is fitted once per source model and eps, on the training split; the one
    perturbation is then evaluated on every model (source == target: white-box; otherwise
    transfer). Metrics: TR/IR R@K and ASR@K over the previously-correct set.
    """

    data: RetrievalDataConfig = Field(default_factory=RetrievalDataConfig)
    models: list[ModelConfig] = Field(min_length=1)
    attacks: list[AttackConfig] = Field(min_length=1)
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    #: example retrievals kept per white-box cell for the report
    examples: int = Field(default=3, ge=0, le=12)
    #: test images per shard of an evaluation (each one Ray task under ``--executor ray``:
    #: the shard perturbs and encodes its images and their captions); one shard when omitted
    shard_size: int | None = Field(default=None, ge=1)

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError("ks must be a non-empty list of integers >= 1")
        return sorted(set(value))


class JailbreakDataConfig(_Strict):
    """The synthetic chat data (:mod:`robustbench_cl.data.chat`). Test harmful prompts cycle
    over the held-out test behaviours; the defenses train on the training behaviours."""

    n_harmful: int = Field(default=24, ge=1)
    n_benign: int = Field(default=60, ge=0)
    n_borderline: int = Field(default=30, ge=0)
    train_harmful: int = Field(default=200, ge=1)
    train_benign: int = Field(default=200, ge=0)
    train_borderline: int = Field(default=100, ge=0)
    #: ``behaviors:FILE.csv``: the test harmful prompts from a CSV (goal, target[, category]),
    #: the first ``n_harmful`` rows; unset, the built-in held-out behaviours
    behaviors: str | None = None

    @field_validator("behaviors")
    @classmethod
    def _absolute_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return "behaviors:" + str(Path(value.removeprefix("behaviors:")).expanduser().resolve())


class SectionAttackConfig(_Strict):
    """An attack entry whose threat may be omitted: the task then gives the attack's own."""

    attack: str
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    #: omitted: the attack's own (jailbreak: direct and gcg in token space, embedding l2 0.3
    #: relative; textret: hotflip 3 tokens, embedding-query l2 0.5 relative)
    threat: ThreatConfig | None = None

    @property
    def label(self) -> str:
        return self.name or self.attack

    def threat_models(self, field: str, defaults: dict[str, dict[str, Any]]) -> list[Any]:
        """One ThreatModel per eps of the entry's threat, or the attack's default threat."""
        from robustbench_cl.threat import ThreatModel

        if self.threat is None:
            if self.attack not in defaults:
                raise UserError(field, f"{self.attack} has no default threat", "give a threat")
            values = [defaults[self.attack]]
        else:
            base = self.threat.model_dump()
            values = [dict(base, eps=eps) for eps in self.threat.eps_values()]
        threats = []
        for value in values:
            with under_field(field):
                threats.append(ThreatModel(**value))
        return threats


class JailbreakConfig(_Strict):
    """Chat LLMs under jailbreak attacks, with and without adversarial training.

    Every (model, defense) gets a clean record (benign utility, over-refusal on borderline
    prompts, training compute) and one record per (attack, eps): forced and judged ASR.
    """

    data: JailbreakDataConfig = Field(default_factory=JailbreakDataConfig)
    models: list[ModelConfig] = Field(min_length=1)
    defenses: list[DefenseConfig] = Field(default_factory=lambda: [DefenseConfig()])
    attacks: list[SectionAttackConfig] = Field(min_length=1)
    #: greedy decoding; the judge reads this many new tokens
    max_new_tokens: int = Field(default=24, ge=1, le=512)
    batch_size: int = Field(default=24, ge=1)
    #: harmful behaviours per shard: each attacks its behaviours under its own seed, and is one
    #: Ray task (GCG is ~60 forward and backward passes per step); unset, a cell is one shard
    shard_size: int | None = Field(default=None, ge=1)
    #: example prompts and completions kept per attack cell for the report
    examples: int = Field(default=3, ge=0, le=12)


def refuse_duplicate_labels(labels: list[str], field: str, noun: str) -> None:
    """Columns are keyed by their labels: two columns may not share one."""
    for label in labels:
        if labels.count(label) > 1:
            raise UserError(
                field, f"two {noun} are both labelled {label!r}", "give each a distinct `name`"
            )


class ScreensDataConfig(_Strict):
    #: ``privscreen-mini[?n=160&seed=0]`` (rendered) or ``privscreen:DIR`` (PrivScreen's layout)
    name: str = "privscreen-mini?n=160&seed=0"
    #: per app, the first share of screens trains the protectors, the rest is evaluated
    train_ratio: float = Field(default=0.8, gt=0, lt=1)
    #: evaluate at most this many test screens (all when omitted)
    n_test: int | None = Field(default=None, ge=1)


class ScreenProtectorConfig(_Strict):
    protector: str
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    #: l-inf budgets as fractions of the pixel range (``32/255`` is accepted); bounded
    #: protectors (noise, pgd, dualtap) need one, clean and blackout take none
    eps: float | str | list[float | str] | None = None

    @field_validator("eps")
    @classmethod
    def _fractions(cls, value: Any) -> Any:
        if value is None:
            return None
        values = [parse_fraction(v) for v in (value if isinstance(value, list) else [value])]
        if not values or any(not 0 < v <= 1 for v in values):
            raise ValueError("eps must be in (0, 1], e.g. 32/255")
        return values

    def eps_values(self) -> list[float | None]:
        return list(self.eps) if self.eps else [None]  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        return self.name or self.protector


class ScreensConfig(_Strict):
    """Screenshot privacy: PII routers (OCR engines) against screen protectors.

    One record per (protector, eps): per router, which PII fields each protected screen leaks,
    which task keywords stay readable, and the image quality.
    """

    data: ScreensDataConfig = Field(default_factory=ScreensDataConfig)
    routers: list[Literal["easyocr", "tesseract"]] = Field(
        default_factory=lambda: ["easyocr", "tesseract"], min_length=1
    )
    protectors: list[ScreenProtectorConfig] = Field(min_length=1)
    #: example screens (PII masked) kept per protector for the report
    examples: int = Field(default=2, ge=0, le=8)
    #: test screens per shard (each one Ray task under ``--executor ray``); one shard when
    #: omitted. Random protectors (noise, PGD's start) draw per shard, so it is in the ids
    shard_size: int | None = Field(default=None, ge=1)


class EngineConfig(_Strict):
    #: samples per attack call; "auto" starts large and halves on out-of-memory
    batch_size: int | Literal["auto"] = 256
    #: "bf16" runs attacks under bfloat16 autocast (opt-in); outcomes are re-judged in fp32
    precision: Literal["fp32", "bf16"] = "fp32"
    #: torch.compile the defended model before attacking it (opt-in; the first call compiles)
    compile: bool = False

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("batch_size must be >= 1 or auto")
        return value

    #: samples per shard: each contiguous range is attacked under its own seed, held in memory
    #: alone (inputs are streamed), and is one Ray task; unset, the evaluation is one shard
    shard_size: int | None = Field(default=None, ge=1)
    cascade: bool = True
    sanity_checks: bool = True
    sanity_probe_size: int = Field(default=64, ge=1)
    #: adversarial examples kept per cell for the report (image data only; 0 keeps none)
    examples: int = Field(default=3, ge=0, le=16)


#: top-level config keys of tasks registered with a section type (``@register_task`` adds
#: them): ``textret: {...}`` is read as ``tasks: {textret: {...}}``
TASK_SECTIONS: set[str] = set()


class MatrixConfig(_Strict):
    suite: str
    description: str = ""
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    models: list[ModelConfig] = Field(default_factory=list)
    defenses: list[DefenseConfig] = Field(default_factory=lambda: [DefenseConfig()])
    attacks: list[AttackConfig] = Field(default_factory=list)
    membership: list[MembershipConfig] = Field(default_factory=list)
    generation: GenerationConfig | None = None
    retrieval: RetrievalConfig | None = None
    jailbreak: JailbreakConfig | None = None
    screens: ScreensConfig | None = None
    #: sections of tasks registered outside the package (``@register_task``), by task name;
    #: each is validated by its task's ``section_type``
    tasks: dict[str, Any] = Field(default_factory=dict)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    #: load pickled checkpoints (code that runs when loaded) with weights_only=False; a
    #: permission, not part of the experiment, so it is not recorded in config.yaml or the hash
    trust_remote_code: bool = Field(default=False, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _task_sections(cls, data: Any) -> Any:
        if isinstance(data, dict) and TASK_SECTIONS & set(data):
            data = dict(data)
            tasks = dict(data.get("tasks") or {})
            for name in sorted(TASK_SECTIONS & set(data)):
                tasks[name] = data.pop(name)
            data["tasks"] = tasks
        return data

    @model_validator(mode="after")
    def _has_columns(self) -> MatrixConfig:
        classification = bool(self.attacks or self.membership or self.generation is not None)
        others = (self.retrieval, self.jailbreak, self.screens)
        if not classification and all(section is None for section in others) and not self.tasks:
            raise ValueError(
                "a config needs attacks, membership, generation, retrieval, jailbreak, screens "
                "or a registered task's section under tasks"
            )
        if classification and not self.models:
            raise ValueError("models: list at least one model for the attacks to run on")
        return self

    def config_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "config"


def _format_validation_error(error: ValidationError, model: type[BaseModel]) -> UserError:
    errors = error.errors()
    # an unknown key usually explains the missing one next to it (a typo): report it first
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    where = _location(tuple(p for p in first["loc"] if not str(p).startswith("function-")))
    if first["type"] == "extra_forbidden":
        parent = model
        for part in first["loc"][:-1]:
            if isinstance(part, int):
                continue
            annotation = parent.model_fields[part].annotation
            inner = getattr(annotation, "__args__", (annotation,))[0]
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                parent = inner
            elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
                parent = annotation
        allowed = ", ".join(parent.model_fields)
        return UserError(where, "unknown config key", f"allowed keys here: {allowed}")
    if first["type"] == "missing":
        return UserError(where, "required key is missing", "add it to the config")
    message = first["msg"].removeprefix("Value error, ").rstrip(".")
    return UserError(where, message, "fix the value in the config")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(
            str(path), f"is not UTF-8 text (byte {error.start})", "save the config as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise UserError(
            str(path), f"broken YAML{where}: {problem}", "fix the YAML syntax"
        ) from None
    if not isinstance(raw, dict):
        raise UserError(str(path), "a config must be a YAML mapping", "start with `suite: NAME`")
    return raw


def resolve_suite_path(name_or_path: str | Path) -> Path:
    """A packaged suite name (``quickstart``) or a path to a YAML file."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.exists():
            raise UserError("config", f"file {str(candidate)!r} does not exist", "check the path")
        return candidate
    packaged = SUITES_DIR / f"{name_or_path}.yaml"
    if packaged.exists():
        return packaged
    import difflib

    names = list_suites()
    close = difflib.get_close_matches(str(name_or_path), names, n=3)
    hint = (
        f"did you mean {', '.join(repr(c) for c in close)}?"
        if close
        else f"known suites: {', '.join(names)}"
    )
    raise UserError("suite", f"unknown suite {str(name_or_path)!r}", hint)


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_config(
    source: str | Path | dict[str, Any],
    profile: str | None = "quick",
    seed: int | None = None,
    engine: dict[str, Any] | None = None,
) -> MatrixConfig:
    """Read, apply a profile, and validate. Raises :class:`UserError` with a one-line message."""
    raw = dict(source) if isinstance(source, dict) else read_yaml(resolve_suite_path(source))
    profiles = raw.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise UserError("profiles", "must be a mapping of profile name to overrides")
    if profile is not None and profiles:
        if profile not in profiles:
            raise UserError(
                "profile", f"unknown profile {profile!r}", f"use one of {', '.join(profiles)}"
            )
        raw = _deep_merge(raw, profiles[profile] or {})
    if seed is not None:
        raw["seed"] = seed
    if engine:
        raw["engine"] = {**(raw.get("engine") or {}), **engine}
    raw.pop("task", None)  # a label of versions before 0.4 that meant nothing: still accepted
    try:
        config = MatrixConfig.model_validate(raw)
    except ValidationError as error:
        raise _format_validation_error(error, MatrixConfig) from None
    return config
