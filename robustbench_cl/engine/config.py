"""The matrix config: YAML validated with pydantic, with one-line errors.

A config names the task, the data, the models, the defenses and the attacks, each attack with
its threat model; an ``eps`` list is a sweep. ``profiles`` hold overrides (``quick``, ``full``)
merged over the base before validation.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from robustbench_cl.errors import UserError, under_field
from robustbench_cl.paths import absolute_paths
from robustbench_cl.utils import stable_hash

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


class StrictConfig(BaseModel):
    """A config model: unknown keys are refused (a typo is an error), values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(StrictConfig):
    """A model to evaluate: any spec that `robustbench-cl list models` shows."""

    #: `builtin:NAME`, a scheme such as `hf:DIR` or `torchvision:NAME?weights=PATH`, or
    #: `python:module:factory` (`robustbench-cl list models`); relative paths are read from the
    #: config's folder
    spec: str
    #: the label in tables and reports (default: the spec)
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.spec


class DefenseConfig(StrictConfig):
    """A defense applied to every model: `none`, a training defense or a preprocessor."""

    #: a registered defense (`robustbench-cl list defenses`); `none` is the undefended model
    defense: str = "none"
    #: the label in tables and reports (default: the defense)
    name: str | None = None
    #: the defense's parameters (`robustbench-cl list defenses NAME --params`)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _fractions(cls, value: dict[str, Any]) -> dict[str, Any]:
        return fractions_as_numbers(value)

    @property
    def label(self) -> str:
        return self.name or self.defense


class ThreatConfig(StrictConfig):
    """What the attacker may do: the norm ball, the space it lives in and the access."""

    #: the distance: `linf`, `l2`, `l1`, `l0` (tokens or pixels changed) or `none` (unbounded,
    #: e.g. a suffix)
    norm: Literal["linf", "l2", "l1", "l0", "none"] = "linf"
    #: the radius, a number or a fraction as the field writes it (`8/255`, kept as the
    #: budget's label in reports); a list is a sweep (one column per value)
    eps: float | str | list[float | str]
    #: where the perturbation lives: `input` (pixels), `embedding` (token embeddings) or `token`
    space: Literal["input", "embedding", "token"] = "input"
    #: the valid input range the adversarial input is clipped to; `null` for none
    bounds: tuple[float, float] | None = (0.0, 1.0)
    #: attack towards a target class instead of away from the label
    targeted: bool = False
    #: `white-box` (gradients of the defended model), `black-box` (queries only) or `transfer`
    #: (crafted on the undefended model: labelled non-adaptive)
    access: Literal["white-box", "black-box", "transfer"] = "white-box"
    #: embedding space only: eps is relative to the mean token-embedding norm
    eps_relative: bool = False
    #: what the attack may spend: ``steps``, ``restarts``, ``queries``, ``eot_samples``; each
    #: overrides the attack's own parameter (and is part of the threat model's id)
    budget: dict[str, int] = Field(default_factory=dict)

    @field_validator("eps")
    @classmethod
    def _eps_not_empty(cls, value: float | str | list[float | str]) -> float | str | list:
        if isinstance(value, list) and not value:
            raise ValueError("an eps sweep needs at least one value")
        from robustbench_cl.threat import parse_budget

        seen: dict[float, Any] = {}
        for item in value if isinstance(value, list) else [value]:
            try:
                number = parse_budget(item)[0]
            except UserError:
                raise ValueError(
                    f"{item!r} is not a number or a fraction; write it like 8/255 or 0.03"
                ) from None
            if number in seen:
                raise ValueError(f"{seen[number]!r} and {item!r} are the same budget: list it once")
            seen[number] = item
        return value

    def eps_values(self) -> list[float | str]:
        """Each eps as written: a fraction stays a string, and becomes the ThreatModel's float
        and its display label."""
        return list(self.eps) if isinstance(self.eps, list) else [self.eps]


class AttackConfig(StrictConfig):
    """An attack column: the attack, its parameters and its threat model."""

    #: a registered attack (`robustbench-cl list attacks`), or `torchattacks:NAME` / `art:NAME`
    attack: str
    #: the column's label (default: the attack)
    name: str | None = None
    #: the attack's parameters (`robustbench-cl list attacks NAME --params`)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _fractions(cls, value: dict[str, Any]) -> dict[str, Any]:
        return fractions_as_numbers(value)

    threat: ThreatConfig

    @property
    def label(self) -> str:
        return self.name or self.attack


class SectionAttackConfig(StrictConfig):
    """An attack entry whose threat may be omitted: the task then gives the attack's own."""

    #: a registered attack of this task (`robustbench-cl list attacks`)
    attack: str
    #: the column's label (default: the attack)
    name: str | None = None
    #: the attack's parameters (`robustbench-cl list attacks NAME --params`)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _fractions(cls, value: dict[str, Any]) -> dict[str, Any]:
        return fractions_as_numbers(value)

    #: omitted: the attack's own (jailbreak: direct, gcg, gcg-universal and random-search in token space, embedding l2 0.3
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


_FRACTION = re.compile(r"^\s*\d+(\.\d+)?\s*/\s*\d+(\.\d+)?\s*$")


def fractions_as_numbers(params: dict[str, Any]) -> dict[str, Any]:
    """A parameter written as a fraction (``eps: 8/255``) is its float: the settings, the ids
    and the cache keys hold the number, so both spellings are one configuration."""
    from robustbench_cl.threat import parse_budget

    return {
        key: parse_budget(value, key)[0]
        if isinstance(value, str) and _FRACTION.match(value)
        else value
        for key, value in params.items()
    }


def refuse_duplicate_labels(labels: list[str], field: str, noun: str) -> None:
    """Columns are keyed by their labels: two columns may not share one."""
    for label in labels:
        if labels.count(label) > 1:
            raise UserError(
                field, f"two {noun} are both labelled {label!r}", "give each a distinct `name`"
            )


class EngineConfig(StrictConfig):
    """How the engine runs the cells (never what they measure)."""

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
    #: attack only the samples still robust after the attacks before it at the same threat (the
    #: worst case is unchanged; the cost falls)
    cascade: bool = True
    #: run the "evaluation possibly unreliable" checks (docs/sanity-checks.md)
    sanity_checks: bool = True
    #: samples the sanity probes (stronger attack, gradient checks) use
    sanity_probe_size: int = Field(default=64, ge=1)
    #: adversarial examples kept per cell for the report (image data only; 0 keeps none)
    examples: int = Field(default=3, ge=0, le=16)


#: what registered tasks add to the config (``@register_task`` fills these; the frame names
#: no task): top-level keys with their annotation and default, the top-level keys read as
#: ``tasks: {name: ...}``, and per task a function that says whether a config asks for it
CONFIG_FIELDS: dict[str, tuple[Any, Any]] = {}
TASK_SECTIONS: set[str] = set()
REQUESTED: dict[str, Callable[[Any], bool]] = {}
#: per task, a check of the whole config (a ``ValueError`` is a one-line error at ``config``)
CONFIG_CHECKS: dict[str, Callable[[Any], None]] = {}
#: the keys to name when a config has no task's section at all
SECTION_HINTS: dict[str, tuple[str, ...]] = {}


class MatrixConfig(StrictConfig):
    """The frame every config shares; :func:`config_model` adds the registered tasks' keys."""

    #: the run's name: the run directory is `runs/<suite>-<timestamp>`
    suite: str
    #: one line shown in `list suites` and the report header
    description: str = ""
    #: the run's seed: data subsets, random starts and training draw from it
    seed: int = 0
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
    def _has_a_task(self) -> MatrixConfig:
        for check in CONFIG_CHECKS.values():
            check(self)
        if not self.tasks and not any(asked(self) for asked in REQUESTED.values()):
            keys = sorted({key for hints in SECTION_HINTS.values() for key in hints})
            raise ValueError(
                f"a config needs {', '.join(keys)} or a registered task's section under tasks"
            )
        return self

    def config_hash(self) -> str:
        return stable_hash(self.model_dump(mode="json"))


_MODELS: dict[tuple[str, ...], type[MatrixConfig]] = {}


def config_model() -> type[MatrixConfig]:
    """The config model of the registered tasks: the frame plus each task's top-level keys."""
    key = tuple(sorted(CONFIG_FIELDS))
    if key not in _MODELS:
        _MODELS[key] = create_model(  # type: ignore[call-overload]
            "MatrixConfig", __base__=MatrixConfig, **CONFIG_FIELDS
        )
    return _MODELS[key]


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
    if isinstance(source, dict):
        raw = dict(source)  # from Python or the command line: paths as the caller gave them
    else:
        path = resolve_suite_path(source)
        # a config's relative paths are read from its own folder, not the working directory
        raw = absolute_paths(read_yaml(path), path.resolve().parent)
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
        model = config_model()
        config = model.model_validate(raw)
    except ValidationError as error:
        raise _format_validation_error(error, model) from None
    return config
