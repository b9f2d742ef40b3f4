"""The text-retrieval report section and terminal table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.report.table import percent_or_dash


class Report:
    """The text-retrieval task's report section and terminal table (mixed into it)."""

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        section = results.get("textret")
        if not section:
            return None
        by_pair: dict[str, dict[str, Any]] = {}
        for cell in section["cells"]:
            by_pair.setdefault(cell["clean_id"], {})[cell["column"]] = cell
        rows = [dict(p, by_column=by_pair.get(p["id"], {})) for p in section["pairs"]]
        data = section["pairs"][0]["data"] if section["pairs"] else {}
        note = (
            f"{data.get('name')}: {data.get('passages')} passages, {data.get('test_queries')} test queries"
            if data
            else None
        )
        return {
            "rows": rows,
            "columns": section["columns"],
            "cells": section["cells"],
            "data_note": note,
        }

    @classmethod
    def table(cls, summary: RunSummary) -> Table | None:
        results = cls.summarize(summary, {})
        if not results:
            return None
        section = results["textret"]
        table = Table(
            title="text retrieval: MRR@10 % clean, and ASR@10 % per attack (previously-correct queries)",
            title_justify="left",
        )
        table.add_column("retriever / defense", justify="left")
        table.add_column("MRR@10", justify="right")
        table.add_column("R@1", justify="right")
        for column in section["columns"]:
            table.add_column(column, justify="right")
        cells = {(c["clean_id"], c["column"]): c for c in section["cells"]}
        for pair in section["pairs"]:
            values = []
            for column in section["columns"]:
                cell = cells.get((pair["id"], column))
                values.append(percent_or_dash(cell["asr"]["@10"]["rate"]) if cell else "-")
            table.add_row(
                pair["label"],
                percent_or_dash(pair["metrics"]["mrr@10"]),
                percent_or_dash(pair["metrics"]["r@1"]),
                *values,
            )
        return table
