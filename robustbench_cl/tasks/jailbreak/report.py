"""The jailbreak report: the section's context and the terminal table."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from robustbench_cl.engine.records import as_json, label
from robustbench_cl.engine.summary import RunSummary, threat_dict
from robustbench_cl.report.media import EXAMPLES_TOTAL
from robustbench_cl.report.table import percent_or_dash
from robustbench_cl.tasks.jailbreak.results import jailbreak_label


def _llm(results: dict[str, Any]) -> list[dict[str, Any]]:
    examples: list[dict[str, Any]] = []
    for cell in results.get("jailbreak", {}).get("cells", []):
        examples += [
            dict(example, cell=f"{cell['pair']} | {cell['column']}")
            for example in cell["examples"][:2]
        ]
    return examples[: 2 * EXAMPLES_TOTAL]


def _jailbreak(results: dict[str, Any]) -> dict[str, Any] | None:
    section = results.get("jailbreak")
    if not section:
        return None
    by_pair: dict[str, dict[str, Any]] = {}
    for cell in section["cells"]:
        by_pair.setdefault(cell["clean_id"], {})[cell["column"]] = cell
    worst = {w["clean_id"]: w for w in section["worst_case"]}
    rows = [
        dict(pair, by_column=by_pair.get(pair["id"], {}), worst=worst.get(pair["id"]))
        for pair in section["pairs"]
    ]
    generation = section["cells"][0]["generation"] if section["cells"] else {}
    judged = [c for c in section["cells"] if c.get("judges")]
    return {
        "judges": judged[0]["judges"] if judged else [],
        "judge_cells": [c for c in judged if len(c["judges"]) > 1],
        "validation": section.get("judge_validation"),
        "inference_cells": [c for c in section["cells"] if c.get("defense_applies") is not None],
        "rows": rows,
        "columns": section["columns"],
        "generation": generation,
        "sources": section.get("sources") or {},
        # columns only for what ran: training compute when a defense trained, the ratio to
        # C-AdvUL when C-AdvUL ran on the same model
        "trained": any(pair.get("training") for pair in section["pairs"]),
        "versus_cadv_ul": any(pair.get("compute_vs_cadv_ul") for pair in section["pairs"]),
        "unmeasured": any(
            pair.get("utility") is None or pair.get("over_refusal") is None
            for pair in section["pairs"]
        ),
    }


def jailbreak_table(summary: RunSummary) -> Table | None:
    """Judged ASR % (forced ASR %) per (model, defense) and attack, with utility and compute."""
    cleans, records = summary.of("jailbreak_clean"), summary.of("jailbreak")
    if not cleans:
        return None
    table = Table(
        title="jailbreak: judged ASR % (forced ASR %) on held-out harmful behaviours",
        title_justify="left",
    )
    table.add_column("model / defense", justify="left")
    table.add_column("utility %", justify="right")
    table.add_column("over-refusal %", justify="right")
    columns: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for record in records:
        column = jailbreak_label(threat_dict(record.threat), label(record.attack))
        if column not in columns:
            columns.append(column)
        judged, forced = record.judged_asr.rate, record.forced_asr.rate
        cells[(record.clean_id, column)] = f"{percent_or_dash(judged)} ({percent_or_dash(forced)})"
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("train passes", justify="right")
    for record in cleans:
        defense, model = label(record.defense), label(record.model)
        cost = (as_json(record.training) or {}).get("cost")
        passes = f"{cost['forward'] + cost['backward']:,}" if cost else "-"
        table.add_row(
            f"{model} / {defense}",
            percent_or_dash(record.utility.rate if record.utility else None),
            percent_or_dash(record.over_refusal.rate if record.over_refusal else None),
            *[cells.get((record.id, c), "-") for c in columns],
            passes,
        )
    return table
