"""The screens report: the section's context, the leakage/task-success trade-off plots and the
terminal table."""

from __future__ import annotations

import base64
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.table import Table

from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.report.media import run_file
from robustbench_cl.report.plots import COLORS, figure, to_svg
from robustbench_cl.report.table import percent_or_dash
from robustbench_cl.tasks.screens.results import screen_rows


def _screens(results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    section = results.get("screens")
    if not section:
        return None
    examples = []
    for entry in section["examples"]:
        for example in entry["examples"]:
            path = run_file(run_dir, example["image"])
            image = (
                "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
                if path is not None
                else None
            )
            examples.append(dict(example, label=entry["label"], src=image))
    routers = list(section["routers"])
    return {
        "rows": section["rows"],
        "routers": section["routers"],
        "rules": section["rules"],
        "data": section["data"],
        "plots": [(r, screen_tradeoff(section["rows"], r)) for r in routers],
        "examples": examples,
    }


def screens_table(summary: RunSummary) -> Table | None:
    """PLR, exact PLR, zero-leak and TSR % per protector and router, with image quality."""
    records = summary.of("screen")
    if not records:
        return None
    table = Table(
        title="screens: PII leakage (PLR) and task success (TSR) per protector and router",
        title_justify="left",
    )
    for name, justify in (
        ("protector", "left"),
        ("router", "left"),
        ("PLR %", "right"),
        ("exact %", "right"),
        ("zero-leak %", "right"),
        ("TSR %", "right"),
        ("PSNR", "right"),
        ("SSIM", "right"),
    ):
        table.add_column(name, justify=justify)
    for row in screen_rows(records):
        table.add_row(
            row["label"],
            f"{row['router']} ({row['access']})",
            percent_or_dash(row["plr"]["rate"]),
            percent_or_dash(row["plr_exact"]["rate"]),
            percent_or_dash(row["zero_leak"]["rate"]),
            percent_or_dash(row["tsr"]["rate"]),
            f"{row['psnr']:.1f}",
            f"{row['ssim']:.3f}",
        )
    return table


def screen_tradeoff(rows: list[dict[str, Any]], router: str) -> str | None:
    """PLR against TSR for one router: one series per protector, its eps sweep as a line;
    the top-left corner (little leakage, the task still done) is better."""
    points = [r for r in rows if r["router"] == router and r["plr"]["rate"] is not None]
    if not points:
        return None
    fig, ax = figure(4.8, 3.4)
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in points:
        series[row["name"]].append(row)
    for color, (name, members) in zip(COLORS * 4, series.items()):
        members.sort(key=lambda r: r["eps"] or 0)
        xs = [100 * r["tsr"]["rate"] for r in members]
        ys = [100 * r["plr"]["rate"] for r in members]
        ax.plot(xs, ys, marker="o", color=color, label=name, linewidth=1 if len(xs) > 1 else 0)
        for x, y, r in zip(xs, ys, members):
            if r["eps"] is not None:
                ax.annotate(
                    f"{r['eps'] * 255:g}",
                    (x, y),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                    color=color,
                )
    ax.set_xlabel("task success rate, TSR (%)")
    ax.set_ylabel("PII leakage rate, PLR (%)")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return to_svg(fig)
