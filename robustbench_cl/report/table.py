"""Terminal tables every task shares: percentages, the sanity flags of a run and a comparison
of runs (each task draws its own table: ``Task.table``)."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def percent_or_dash(value: float | None) -> str:
    return "-" if value is None else percent(value)


def flags_table(results: dict[str, Any]) -> Table | None:
    """Every task's sanity flags (``results.flag_rows``), or ``None`` when there are none."""
    from robustbench_cl.engine.results import flag_rows

    rows = flag_rows(results)
    if not rows:
        return None
    table = Table(
        title="! evaluation possibly unreliable (docs/sanity-checks.md)", title_justify="left"
    )
    for name in ("task", "where", "flag", "reason"):
        table.add_column(name)
    for row in rows:
        table.add_row(row["task"], row["where"], row["code"], row["message"])
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
    """The same measures across runs: accuracy % per run, and each run's delta to the first."""
    table = Table(
        title="% across runs (delta vs the first run, on the same data only)", title_justify="left"
    )
    table.add_column("task")
    table.add_column("model / defense", style="bold")
    table.add_column("measure")
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
        table.add_row(row["task"], row["pair"], row["measure"], *values)
    return table
