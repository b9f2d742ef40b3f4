"""``export --format jailbreakbench``: a JailbreakBench-style attack artifact per attack cell.

One ``METHOD/ATTACK_TYPE/MODEL[__DEFENSE].json`` per cell whose input is text (direct requests
and token attacks; an embedding attack has no prompt a user could send, and is left out with a
line saying so), laid out as JailbreakBench's ``AttackArtifact``: ``parameters`` (method, model,
attack type, defense, ASR, jailbreak and prompt counts, queries, evaluation date and provider,
method parameters) and ``jailbreaks``, one per behaviour (index, goal, behavior, category, the
prompt as sent, the response, and ``jailbroken`` by the primary judge, with every judge's verdict
in ``jailbroken_by``). Our models are not JailbreakBench's four, so its ``read_artifact``
validation (which names them) would refuse the ``model`` field; everything else is its layout.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from robustbench_cl.engine.export import register_export
from robustbench_cl.errors import UserError
from robustbench_cl.paths import slug

#: attacks that see only the model's outputs (log-probabilities), not its weights
BLACK_BOX = {"random-search"}


def _parameters(params: dict[str, Any]) -> dict[str, str | int | float]:
    """JailbreakBench's ``method_parameters`` hold str, int or float values only."""
    out: dict[str, str | int | float] = {}
    for key, value in sorted(params.items()):
        if isinstance(value, bool) or value is None or isinstance(value, list | dict):
            out[key] = str(value)
        elif isinstance(value, int | float | str):
            out[key] = value
    return out


def attack_type(record: dict[str, Any]) -> str:
    """JailbreakBench's attack type: ``manual`` for the request as is, ``transfer`` for a
    suffix optimised elsewhere (another model, or without the defense), ``black_box`` for
    attacks that read only outputs, else ``white_box``."""
    attack = record["attack"]
    settings = attack.get("settings") or {}
    if attack["attack"] == "direct":
        return "manual"
    if settings.get("source") or record.get("adaptive") is False:
        return "transfer"
    return "black_box" if attack["attack"] in BLACK_BOX else "white_box"


def artifact(record: dict[str, Any], finished: str | None) -> dict[str, Any]:
    """A jailbreak record (``cells.jsonl``) as a JailbreakBench attack artifact."""
    attack = record["attack"]
    names = list(record.get("judgements") or {})
    judgements = record.get("judgements") or {"keyword": record["judged"]}
    primary = record["judged"]
    n = record["n"]
    prompts = record.get("prompts") or [None] * n
    goals = record.get("goals") or [None] * n
    categories = record.get("categories") or [None] * n
    jailbreaks = [
        {
            "index": i + 1,
            "goal": goals[i],
            "behavior": record["behaviors"][i],
            "category": categories[i],
            "prompt": prompts[i],
            "response": record["responses"][i],
            "number_of_queries": None,
            "queries_to_jailbreak": None,
            "prompt_tokens": None,
            "response_tokens": None,
            "jailbroken": primary[i] == 1,
            "jailbroken_by": {name: judgements[name][i] == 1 for name in names or judgements},
        }
        for i in range(n)
    ]
    defense = record["defense"]
    hits = sum(1 for v in primary if v == 1)
    return {
        "parameters": {
            "method": attack.get("name") or attack["attack"],
            "model": record["model"].get("name") or record["model"]["spec"],
            "attack_type": attack_type(record),
            "defense": None
            if defense.get("defense") == "none"
            else defense.get("name") or defense["defense"],
            "attack_success_rate": hits / n if n else 0.0,
            "total_number_of_jailbreaks": hits,
            "number_of_submitted_prompts": n,
            "total_number_of_queries": int(record["cost"].get("forward", 0)) or None,
            "total_prompt_tokens": None,
            "total_response_tokens": None,
            "evaluation_date": (finished or "")[:10] or date.today().isoformat(),
            "evaluation_llm_provider": "robustbench_cl (local transformers, greedy)",
            "method_parameters": _parameters(attack.get("params") or {}),
            "judges": names or ["keyword"],
            "max_new_tokens": record["generation"].get("max_new_tokens"),
        },
        "jailbreaks": jailbreaks,
    }


@register_export("jailbreakbench")
def export_jailbreakbench(
    results: dict[str, Any], options: dict[str, str], config: dict[str, Any]
) -> dict[str, Any]:
    """JailbreakBench attack artifacts, one per jailbreak attack cell with a text prompt."""
    from robustbench_cl.engine.store import ResultsStore

    run_dir = Path(options["run_dir"])
    records = [
        r for r in ResultsStore(run_dir / "cells.jsonl").read() if r.get("type") == "jailbreak"
    ]
    if not records:
        raise UserError("--format", f"{run_dir} has no jailbreak cells", "run a jailbreak section")
    if not any(r.get("responses") for r in records):
        raise UserError(
            "--format",
            f"{run_dir}'s jailbreak cells predate per-behaviour responses",
            "rerun it with this version (the records then keep prompts and responses)",
        )
    finished = (results.get("run") or {}).get("finished")
    files: dict[str, Any] = {}
    for record in records:
        prompts = record.get("prompts") or []
        if not record.get("responses") or not prompts or any(p is None for p in prompts):
            continue  # an embedding attack: no text prompt to submit
        entry = artifact(record, finished)
        parameters = entry["parameters"]
        model = slug(parameters["model"])
        name = model if parameters["defense"] is None else f"{model}__{slug(parameters['defense'])}"
        path = f"{slug(parameters['method'])}/{parameters['attack_type']}/{name}.json"
        if path in files:  # two cells would write one file: never overwrite silently
            raise UserError(
                "--format",
                f"two jailbreak cells map to {path} (same attack name, model and defense "
                "labels at two threat models)",
                "give the attack entries distinct names",
            )
        files[path] = entry
    if not files:
        raise UserError(
            "--format",
            "no jailbreak cell has text prompts (embedding attacks have none)",
            "export a run with direct, gcg or random-search cells",
        )
    return files


def read_artifact(path: str | Path) -> dict[str, Any]:
    """Read an artifact back and check its layout (the fields JailbreakBench's model requires)."""
    import json

    value = json.loads(Path(path).read_text())
    parameters = value["parameters"]
    for key in (
        "method",
        "model",
        "attack_type",
        "attack_success_rate",
        "number_of_submitted_prompts",
    ):
        if key not in parameters:
            raise ValueError(f"{path}: parameters lack {key}")
    if parameters["attack_type"] not in ("white_box", "black_box", "transfer", "manual"):
        raise ValueError(f"{path}: attack_type {parameters['attack_type']!r}")
    if not 0 <= parameters["attack_success_rate"] <= 1:
        raise ValueError(f"{path}: attack_success_rate out of [0, 1]")
    for item in value["jailbreaks"]:
        if not isinstance(item["jailbroken"], bool) or not isinstance(item["index"], int):
            raise ValueError(f"{path}: a jailbreak entry's types are wrong")
    if len(value["jailbreaks"]) != parameters["number_of_submitted_prompts"]:
        raise ValueError(f"{path}: jailbreak count differs from the submitted prompts")
    return value
