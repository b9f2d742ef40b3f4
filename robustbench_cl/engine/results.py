"""``results.json``: the versioned, machine-readable result of a run.

Derived from ``cells.jsonl`` and ``meta.json`` (never by running a model), validated against
the JSON Schema generated from the typed models (:mod:`robustbench_cl.engine.results_models`
and each task's ``section_model``) and documented in ``docs/results-schema.md``. The HTML
report and ``compare`` read this dict, so anything a report shows is in the JSON too.

Per-sample outcomes stay in ``cells.jsonl``; ``results.json`` carries the aggregates.
Bump ``SCHEMA_VERSION`` (major for a removed or renamed field, minor for an added one) whenever
the shape changes, and update the models and the doc with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from robustbench_cl.engine.store import write_json_atomic
from robustbench_cl.engine.summary import RunSummary, load_run, threat_sort_key

SCHEMA_VERSION = "1.4"


def results_model() -> type:
    """The ``results.json`` model: the frame (run, threat models, flag count) and the fields of
    every registered task (``Task.result_fields``: its section model, or any JSON value)."""
    from pydantic import create_model

    from robustbench_cl.engine.results_models import CoreResults
    from robustbench_cl.engine.task import task_classes

    fields: dict[str, Any] = {}
    for task in task_classes():
        fields.update(task.result_fields())
    return create_model("Results", __base__=CoreResults, **fields)


def results_schema() -> dict[str, Any]:
    """The JSON Schema of ``results.json``, generated from :func:`results_model` (a task that
    gives a JSON Schema dict instead of a model gets it as its section's schema)."""
    from robustbench_cl.engine.task import task_classes

    schema = results_model().model_json_schema(by_alias=True)
    for task in task_classes():
        if task.section_model is None and task.name in schema["properties"]:
            schema["properties"][task.name] = task.schema or {
                "description": f"the {task.name} task's section (it declares no schema)"
            }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://robustbench-cl.invalid/results.schema.json"
    schema["title"] = "robustbench_cl results.json"
    return schema


def records_schema() -> dict[str, Any]:
    """The JSON Schema of one ``cells.jsonl`` line: any registered task's record model, chosen
    by its ``type`` (a task that declares no record models admits any object of its types)."""
    from pydantic import TypeAdapter

    from robustbench_cl.engine.task import task_classes

    models = [m for task in task_classes() for m in task.record_models.values()]
    untyped = sorted(
        t for task in task_classes() if not task.record_models for t in task.record_types
    )
    schema: dict[str, Any] = TypeAdapter(Union[tuple(models)]).json_schema()  # noqa: UP007
    if untyped:
        schema.setdefault("anyOf", []).append(
            {"type": "object", "properties": {"type": {"enum": untyped}}, "required": ["type"]}
        )
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "robustbench_cl cells.jsonl record"
    return schema


def _threat_id(threat: dict[str, Any]) -> str:
    """One threat model whatever its budget's spelling (the label is for display)."""
    return json.dumps({k: v for k, v in threat.items() if k != "eps_label"}, sort_keys=True)


def build_results(summary: RunSummary) -> dict[str, Any]:
    """The ``results.json`` dict of a run summary (schema ``SCHEMA_VERSION``).

    The run block comes from ``meta.json``; every registered task adds its section(s) from its
    records (:meth:`~robustbench_cl.engine.task.Task.summarize`), in task order."""
    from robustbench_cl.engine.task import task_classes

    meta = dict(summary.meta)
    results: dict[str, Any] = {
        "schema": "robustbench_cl.results",
        "schema_version": SCHEMA_VERSION,
        "run": {
            "suite": meta.get("suite"),
            "profile": meta.get("profile"),
            "config_hash": meta.get("config_hash"),
            "seed": meta.get("seed"),
            "command": meta.get("command"),
            "started": meta.get("started"),
            "finished": meta.get("finished"),
            "wall_time": meta.get("wall_time"),
            "device": meta.get("device"),
            "device_name": meta.get("device_name"),
            "git_commit": meta.get("git_commit"),
            "versions": meta.get("versions", {}),
            "data": meta.get("data"),
            "complete": meta.get("finished") is not None,
            "threads": meta.get("threads"),
            "artifacts": meta.get("artifacts", {}),
        },
    }
    tasks = task_classes()
    for task in tasks:
        results.update(task.summarize(summary, results) or {})
    threats: dict[str, dict[str, Any]] = {}
    for task in tasks:
        for threat in task.threat_models(results):
            threats.setdefault(_threat_id(threat), threat)
    results["threat_models"] = sorted(threats.values(), key=threat_sort_key)
    results["flag_count"] = len(flag_rows(results))
    return results


def flag_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per sanity flag of every task: ``task``, ``where``, ``code``, ``message`` (the
    report's and the terminal's sanity tables, and the flag count)."""
    from robustbench_cl.engine.task import task_classes

    return [
        {"task": task.name, **row} for task in task_classes() for row in task.flag_rows(results)
    ]


def validate_results(results: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``results`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(results, results_schema())


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Results of a run directory, always re-derived from its records (so never stale)."""
    return build_results(load_run(run_dir))


def write_results(run_dir: str | Path) -> Path:
    path = Path(run_dir) / "results.json"
    write_json_atomic(path, load_results(run_dir))
    return path
