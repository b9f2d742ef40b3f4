"""Typed ``cells.jsonl`` records: the base model, the references every task's records share,
and the check the engine loop runs before it appends a record.

Each task declares its record models (``Task.record_models``, one per record ``type``); the loop
validates every record against its model before the append, so a record with a missing,
misspelt or mistyped field fails the unit that made it instead of a later report. The records
stay JSON objects on disk; :func:`records_schema` is the JSON Schema of one line of
``cells.jsonl``, generated from the models of every registered task.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from robustbench_cl.engine.results_models import Flag, Rate, Threat

#: records refuse unknown fields when written; a non-finite float dumps as JSON's NaN/Infinity,
#: as json.dumps writes it, not as null
RECORD = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class Record(BaseModel):
    """One line of ``cells.jsonl``: a unit's result, keyed by the unit id."""

    model_config = RECORD
    id: str
    #: seconds the unit took: the loop measures it and sets it on every stored record (a task
    #: leaves it unset)
    wall_time: float = Field(0.0, ge=0.0)


class ModelRef(BaseModel):
    """A model as the config names it."""

    model_config = RECORD
    spec: str
    name: str | None


class DefenseRef(BaseModel):
    model_config = RECORD
    defense: str
    name: str | None
    params: dict[str, Any]


class AttackRef(BaseModel):
    """An attack as configured (``params``) and as it ran (``settings``, defaults filled in)."""

    model_config = RECORD
    attack: str
    name: str | None
    params: dict[str, Any]
    settings: dict[str, Any]


def check_record(models: dict[str, type[Record]], task: str, record: dict[str, Any]) -> None:
    """Raise ``RuntimeError`` naming the task, the record type and the first bad field when
    ``record`` does not follow its model (a bug in the task, not in the user's input)."""
    model = models.get(record.get("type", ""))
    if model is None:
        if models:
            raise RuntimeError(f"{task} wrote a record of undeclared type {record.get('type')!r}")
        return
    try:  # strict, as JSON: no "12" for 12, and the record must be what the store can write
        model.model_validate_json(json.dumps(record), strict=True)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RuntimeError(
            f"{task} wrote a {record['type']} record that does not follow "
            f"{model.__name__}: {where}: {first['msg']}"
        ) from None


#: the key that says what each kind of configured entry is, tried in this order
_WHAT = ("spec", "attack", "defense", "protector", "router", "judge")


def label(entry: Any) -> str:
    """The display label of a configured entry (a model, an attack, a defense...), as a dict or
    a config model: its ``name`` when it has one, else what it is (``spec``, ``attack``...)."""
    if not isinstance(entry, dict):
        entry = entry.model_dump()
    if entry.get("name"):
        return entry["name"]
    for key in _WHAT:
        if entry.get(key) is not None:
            return str(entry[key])
    raise KeyError(f"an entry without a name or a kind: {sorted(entry)}")


def attack_entry(attack: Any) -> dict[str, Any]:
    """A record's attack as results list it (``results_models.Attack``): with its label."""
    if not isinstance(attack, dict):
        attack = attack.model_dump(mode="json")
    return {
        "attack": attack["attack"],
        "label": label(attack),
        "params": attack.get("params", {}),
        "settings": attack.get("settings", {}),
    }


def as_json(value: Any) -> Any:
    """A typed record's field as results hold it: models (nested in lists and dicts too) as
    their JSON values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    return value


def flag(code: str, message: str) -> dict[str, str]:
    """A sanity flag: ``code`` (documented in docs/sanity-checks.md) and the reason."""
    return {"code": code, "message": message}


__all__ = [
    "AttackRef",
    "DefenseRef",
    "Flag",
    "ModelRef",
    "Rate",
    "Record",
    "Threat",
    "as_json",
    "attack_entry",
    "check_record",
    "flag",
    "label",
]
