"""The matrix as a rich table: one column per (model, defense), one row per attack and threat.

Rows are grouped by threat model; a group with several attacks ends with its worst case
(per-sample, over the attacks of the group). '!' marks a cell with sanity flags.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from robustbench_cl.engine.summary import RunSummary, column_label, threat_label, threat_sort_key


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def percent_or_dash(value: float | None) -> str:
    return "-" if value is None else percent(value)


def matrix_table(summary: RunSummary) -> Table:
    """Clean and robust accuracy (%): rows = attack @ threat, columns = model / defense."""
    n = summary.pairs[0].n if summary.pairs else 0
    table = Table(
        title=f"{summary.meta.get('suite', 'run')}: accuracy % (n={n})", title_justify="left"
    )
    table.add_column("attack", style="bold")
    table.add_column("threat")
    for pair in summary.pairs:
        header = (
            pair.defense
            if len({p.model for p in summary.pairs}) == 1
            else f"{pair.model} / {pair.defense}"
        )
        if pair.normalization:
            header += f"\n(norm. {pair.normalization})"
        table.add_column(header, justify="right")
    clean = []
    for pair in summary.pairs:
        text = Text(percent(pair.clean_accuracy))
        if pair.flags:
            text.append(" !", style="bold yellow")
        clean.append(text)
    table.add_row("clean", "", *clean, end_section=True)
    threats: list[str] = []
    rows: dict[str, list[str]] = {}
    for pair in summary.pairs:
        for cell in pair.cells:
            label = threat_label(cell["threat"])
            if label not in threats:
                threats.append(label)
                rows[label] = []
            column = column_label(cell)
            if column not in rows[label]:
                rows[label].append(column)
    order = {}
    for pair in summary.pairs:
        for cell in pair.cells:
            order.setdefault(threat_label(cell["threat"]), threat_sort_key(cell["threat"]))
    for label in sorted(threats, key=lambda item: order[item]):
        for column in rows[label]:
            attack_name = column[: -len(label) - 1]
            values = []
            for pair in summary.pairs:
                cell = next((c for c in pair.cells if column_label(c) == column), None)
                if cell is None:
                    values.append(Text("-"))
                    continue
                text = Text(percent(cell["robust_accuracy"]))
                if cell["flags"]:
                    text.append(" !", style="bold yellow")
                values.append(text)
            table.add_row(attack_name, label, *values)
        worst = [next((w for w in p.worst_case if w.label == label), None) for p in summary.pairs]
        if len(rows[label]) > 1:
            table.add_row(
                Text("worst case", style="bold"),
                label,
                *[Text(percent(w.robust_accuracy) if w else "-", style="bold") for w in worst],
            )
        table.rows[-1].end_section = True
    return table


def flags_table(summary: RunSummary) -> Table | None:
    from robustbench_cl.engine.results import build_results, task_flag_rows

    rows = [
        (f"{pair.defense}", "clean pass", flag["code"], flag["message"])
        for pair in summary.pairs
        for flag in pair.flags
    ]
    rows += [
        (f"{pair.defense}", column_label(cell), flag["code"], flag["message"])
        for pair in summary.pairs
        for cell in pair.cells
        for flag in cell["flags"]
    ]
    rows += [  # membership, retrieval, jailbreak and screens flags
        (row["task"], row["where"], row["code"], row["message"])
        for row in task_flag_rows(build_results(summary))
    ]
    if not rows:
        return None
    table = Table(
        title="! evaluation possibly unreliable (docs/sanity-checks.md)", title_justify="left"
    )
    for name in ("defense / task", "cell", "flag", "reason"):
        table.add_column(name)
    for row in rows:
        table.add_row(*row)
    return table


def _delta(value: float | None, better: str = "higher", same_data: bool = True) -> Text:
    if not same_data:
        return Text("other data", style="yellow")
    if value is None:
        return Text("")
    points = 100 * value
    gain = points if better == "higher" else -points
    style = "green" if gain > 0.05 else "red" if gain < -0.05 else "dim"
    return Text(f"{points:+.1f}", style=style)


def comparison_table(comparison: dict[str, Any]) -> Table:
    """The same cells across runs: accuracy % per run, and each run's delta to the first."""
    table = Table(
        title="% across runs (delta vs the first run, on the same data only)", title_justify="left"
    )
    table.add_column("task")
    table.add_column("model / defense", style="bold")
    table.add_column("cell")
    for index, run in enumerate(comparison["runs"]):
        table.add_column(run["name"], justify="right")
        if index:
            table.add_column("delta", justify="right")
    for row in comparison["rows"]:
        values: list[Text] = []
        for index, (value, delta) in enumerate(zip(row["values"], row["deltas"])):
            values.append(Text("-" if value is None else percent(value)))
            if index:
                same = row["same_data"][index] or value is None
                values.append(_delta(delta, row.get("better", "higher"), same))
        table.add_row(row["task"], row["pair"], row["cell"], *values)
    return table
