"""The self-contained HTML report of a run directory (``compare`` lives in report/compare.py).

Rendered from the ``results.json`` dict (the report never runs a model): Jinja2 with autoescape
on, inline CSS, plots as inline SVG, example images as inline PNG, a few lines of inline JS for
sorting tables. No CDN, no external URL: the file opens offline and can be mailed as is.
Each section appears only when the run has data for it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from markupsafe import Markup

from robustbench_cl.engine.results import load_results, task_flag_rows
from robustbench_cl.engine.summary import threat_sort_key
from robustbench_cl.report import plots
from robustbench_cl.report.media import (
    EXAMPLES_PER_CELL,
    EXAMPLES_TOTAL,
    example_rows,
    mask_pii,
    truncate,
)


def _percent(value: Any) -> str:
    if value is None or isinstance(value, Undefined):
        return "-"
    return f"{100 * value:.1f}"


def _settings_text(settings: dict[str, Any]) -> str:
    """``k=v`` pairs; a nested dict (AutoAttack's components) shows only its keys."""
    parts = []
    for key, value in sorted(settings.items()):
        if isinstance(value, dict):
            value = "[" + ", ".join(str(k) for k in value) + "]"
        parts.append(f"{key}={value}")
    return " ".join(parts)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("robustbench_cl.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = _percent
    env.filters["mask"] = mask_pii
    env.filters["settings_text"] = _settings_text
    env.filters["truncate_text"] = truncate
    env.filters["svg"] = lambda svg: Markup(svg)  # our own matplotlib output, never data
    return env


def _columns(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Matrix columns (attack @ threat), sorted by norm, eps, then config order."""
    seen: dict[str, dict[str, Any]] = {}
    for index, cell in enumerate(results["cells"]):
        seen.setdefault(
            cell["column"],
            {
                "label": cell["column"],
                "attack": cell["attack"]["label"],
                "threat": cell["threat_label"],
                "adaptive": cell["adaptive"],
                "key": threat_sort_key(cell["threat"]),
                "order": index,
            },
        )
    return sorted(seen.values(), key=lambda c: (c["key"], c["order"]))


def _examples(results: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """Per pair, the cells of its headline threat (the one with the most attacks)."""
    by_pair: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cell in results["cells"]:
        if cell.get("examples"):
            by_pair[cell["pair_id"]].append(cell)
    blocks, total = [], 0
    for pair in results["pairs"]:
        cells = by_pair.get(pair["id"], [])
        if not cells:
            continue
        group_sizes: dict[str, int] = defaultdict(int)
        for cell in pair["cell_ids"]:
            group = next((c["group_id"] for c in results["cells"] if c["id"] == cell), None)
            group_sizes[group] += 1
        headline = max(cells, key=lambda c: (group_sizes[c["group_id"]], c["threat"]["eps"]))
        for cell in [c for c in cells if c["group_id"] == headline["group_id"]]:
            rows = example_rows(run_dir, cell)[:EXAMPLES_PER_CELL]
            rows = rows[: max(EXAMPLES_TOTAL - total, 0)]
            if rows:
                total += len(rows)
                blocks.append({"pair": pair["label"], "cell": cell, "rows": rows})
    return blocks


def task_sections(results: dict[str, Any], run_dir: Path | None) -> list[dict[str, Any]]:
    """Every task's report section, rendered from its own template, in task order."""
    from robustbench_cl.engine.task import task_classes

    env = _environment()
    sections = []
    for task in task_classes():
        if task.template is None:
            continue
        context = task.render(results, run_dir)
        if not context:
            continue
        template = Path(task.template)
        source = template.read_text(encoding="utf-8")
        html = env.from_string(source).render(results=results, run=results["run"], section=context)
        sections.append(
            {
                "name": task.name,
                "title": task.title or task.name.capitalize(),
                "anchor": task.anchor or task.name,
                "data_note": context.get("data_note") if isinstance(context, dict) else None,
                "html": Markup(html),  # rendered with autoescape on, like the page
            }
        )
    return sections


def render_results(results: dict[str, Any], run_dir: str | Path | None = None) -> str:
    cells = {cell["id"]: cell for cell in results["cells"]}
    directory = Path(run_dir) if run_dir is not None else None
    matrix = [
        {
            "pair": pair,
            "by_column": {cells[i]["column"]: cells[i] for i in pair["cell_ids"]},
            "flags": sum(len(cells[i]["flags"]) for i in pair["cell_ids"]),
        }
        for pair in results["pairs"]
    ]
    context = {
        "results": results,
        "run": results["run"],
        "columns": _columns(results),
        "matrix": matrix,
        "curves": plots.security_curves(results),
        "examples": _examples(results, directory) if directory is not None else [],
        "task_sections": task_sections(results, directory),
        "non_adaptive": [c for c in results["cells"] if not c["adaptive"]],
        "task_flags": task_flag_rows(results),
    }
    return _environment().get_template("report.html.j2").render(**context)


def render_report(run_dir: str | Path) -> str:
    return render_results(load_results(run_dir), run_dir)


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    path = Path(output) if output is not None else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(run_dir), encoding="utf-8")
    return path
