"""The ``jailbreak:`` section of a config, its expansion into models, defenses and attack
columns, and the typed keys of its units."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from robustbench_cl.attacks.jailbreak import JailbreakAttack
from robustbench_cl.data.chat import DEFENSE_TRAINING
from robustbench_cl.engine.config import (
    DefenseConfig,
    MatrixConfig,
    ModelConfig,
    SectionAttackConfig,
    StrictConfig,
    refuse_duplicate_labels,
)
from robustbench_cl.tasks.jailbreak.results import jailbreak_label
from robustbench_cl.tasks.sections import build_columns, build_defenses, check_models

#: bump when the jailbreak protocol changes (record ids change, so old records are not reused)
PROTOCOL_VERSION = 2  # 2: outcomes on the suffix text re-encoded; judges


DEFAULT_THREATS = {
    "direct": {"norm": "none", "eps": 0.0, "space": "token", "bounds": None},
    "gcg": {"norm": "none", "eps": 0.0, "space": "token", "bounds": None},
    "gcg-universal": {"norm": "none", "eps": 0.0, "space": "token", "bounds": None},
    "random-search": {"norm": "none", "eps": 0.0, "space": "token", "bounds": None},
    "embedding": {
        "norm": "l2",
        "eps": 0.3,
        "space": "embedding",
        "bounds": None,
        "eps_relative": True,
    },
}


class JailbreakDataConfig(StrictConfig):
    """The synthetic chat data (:mod:`robustbench_cl.data.chat`). Test harmful prompts cycle
    over the held-out test behaviours; the defenses train on the training behaviours."""

    #: held-out harmful behaviours attacked
    n_harmful: int = Field(default=24, ge=1)
    #: benign prompts that measure utility
    n_benign: int = Field(default=60, ge=0)
    #: borderline (harmless but scary-sounding) prompts that measure over-refusal
    n_borderline: int = Field(default=30, ge=0)
    #: harmful behaviours the adversarial-training defenses train on
    train_harmful: int = Field(default=DEFENSE_TRAINING["train_harmful"], ge=1)
    #: benign chats the defenses' utility loss trains on
    train_benign: int = Field(default=DEFENSE_TRAINING["train_benign"], ge=0)
    #: borderline chats the defenses' utility loss trains on
    train_borderline: int = Field(default=DEFENSE_TRAINING["train_borderline"], ge=0)
    #: ``behaviors:FILE.csv``: the test harmful prompts from a CSV (goal, target[, category];
    #: JailbreakBench's behaviours CSV as published; HarmBench's with
    #: ``?targets=FILE.json[&only=standard]``), ``n_harmful`` rows of it; unset, the built-in
    #: held-out behaviours
    behaviors: str | None = None
    #: ``benign:FILE.csv``: the utility and over-refusal prompts from a CSV (instruction,
    #: answer[, kind, task]); unset, the built-in synthetic tasks, which measure only the
    #: built-in models (a user's model gets no utility number without its own prompts)
    benign: str | None = None

    @field_validator("behaviors", "benign")
    @classmethod
    def _absolute_file(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        prefix = f"{info.field_name}:"
        path, _, query = value.removeprefix(prefix).partition("?")
        resolved = prefix + str(Path(path).expanduser().resolve())
        if not query:
            return resolved
        parts = []  # a targets file is a path too: resolved where the config is read
        for part in query.split("&"):
            key, _, item = part.partition("=")
            parts.append(f"{key}={Path(item).expanduser().resolve()}" if key == "targets" else part)
        return resolved + "?" + "&".join(parts)


class JailbreakConfig(StrictConfig):
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
    #: prompts per attack batch (generation batches hold at least 32)
    batch_size: int = Field(default=24, ge=1)
    #: harmful behaviours per shard: each attacks its behaviours under its own seed, and is one
    #: Ray task (GCG is ~60 forward and backward passes per step); unset, a cell is one shard
    shard_size: int | None = Field(default=None, ge=1)
    #: example prompts and completions kept per attack cell for the report
    examples: int = Field(default=3, ge=0, le=12)
    #: the judges of every completion (`robustbench-cl list judges`); the first is primary
    #: (its ASR is the cell's judged ASR); with two or more, each cell reports their pairwise
    #: agreement and Cohen's kappa
    judges: list[str] = Field(default_factory=lambda: ["keyword"], min_length=1)
    #: ``FILE.csv``: human-labelled responses in JailbreakBench's judge-comparison layout
    #: (goal, prompt, target_response, human_majority); each judge's precision, recall and F1
    labels: str | None = None

    @field_validator("judges")
    @classmethod
    def _judges_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a judge is listed twice; list each once")
        return value

    @field_validator("labels")
    @classmethod
    def _labels_file(cls, value: str | None) -> str | None:
        return None if value is None else str(Path(value).expanduser().resolve())


@dataclass(frozen=True)
class UtilityKey:
    """The clean unit of (model ``mi``, defense ``di``): utility and over-refusal."""

    mi: int
    di: int


@dataclass(frozen=True)
class JudgeKey:
    """The judges against the human labels of ``labels``."""


@dataclass(frozen=True)
class AttackKey:
    """An attack cell: column ``ci`` on (model ``mi``, defense ``di``)."""

    mi: int
    di: int
    ci: int


def expand_jailbreak(config: MatrixConfig) -> dict[str, Any]:
    """Validate the section; the (model, defense) pairs and the (attack, threat) columns."""

    section = config.jailbreak
    assert section is not None
    if section.data.behaviors is not None:  # a bad file fails before anything runs
        from robustbench_cl.data.behaviors import load_behaviors

        load_behaviors(section.data.behaviors)
    if section.data.benign is not None:
        from robustbench_cl.data.behaviors import load_benign

        load_benign(section.data.benign)
    from robustbench_cl.tasks.jailbreak.judges import check_judge_spec, load_labels

    for i, spec in enumerate(section.judges):  # an unknown judge fails before anything runs
        check_judge_spec(spec, f"jailbreak.judges[{i}]")
    if section.labels is not None:
        load_labels(section.labels)
    check_models("jailbreak", section.models)
    defenses = build_defenses(
        "jailbreak",
        section.defenses,
        "does not train chat models",
        "use none, cadv-ul, cadv-ipo, discrete-at, smoothllm or perplexity-filter",
    )
    columns = build_columns(
        "jailbreak",
        section.attacks,
        JailbreakAttack,
        "is not a jailbreak attack",
        "use direct, embedding, gcg or random-search (see `robustbench-cl list attacks`)",
        DEFAULT_THREATS,
    )
    labels = [jailbreak_label(c["threat"].to_dict(), c["config"].label) for c in columns]
    refuse_duplicate_labels(labels, "jailbreak.attacks[].name", "attack columns")
    return {"models": section.models, "defenses": defenses, "columns": columns}
