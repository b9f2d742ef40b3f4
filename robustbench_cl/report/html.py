"""The self-contained HTML report of a run directory (``compare`` lives in report/compare.py).

Rendered from the ``results.json`` dict (the report never runs a model): Jinja2 with autoescape
on, inline CSS, plots as inline SVG, example images as inline PNG, a few lines of inline JS for
sorting tables. No CDN, no external URL: the file opens offline and can be mailed as is.
Each section appears only when the run has data for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from markupsafe import Markup

from robustbench_cl.engine.results import flag_rows, load_results
from robustbench_cl.report.media import mask_pii, truncate


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


#: the blocks a task template may define; a template without blocks is all ``body``
BLOCKS = ("nav", "header", "banner", "body")


def task_sections(results: dict[str, Any], run_dir: Path | None) -> list[dict[str, Any]]:
    """Every task's report section, rendered from its own template, in task order.

    A task's template may define the blocks ``nav`` (its links in the navigation bar),
    ``header`` (rows of the run table), ``banner`` (warnings under the header) and ``body``
    (its sections); one without blocks is its body, linked as the task's title.
    """
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
        if not template.is_absolute():
            template = Path(__file__).with_name("templates") / template
        compiled = env.from_string(template.read_text(encoding="utf-8"))
        variables = {"results": results, "run": results["run"], "section": context}
        parts = {}
        for block in BLOCKS:
            if block in compiled.blocks:
                render = compiled.blocks[block]
                parts[block] = "".join(render(compiled.new_context(variables))).strip()
        if "body" not in parts:
            parts["body"] = compiled.render(**variables)
        title = task.title or task.name.capitalize()
        anchor = task.anchor or task.name
        if "nav" not in parts:
            parts["nav"] = str(Markup('<a href="#{}">{}</a>').format(anchor, title))
        data_note = context.get("data_note") if isinstance(context, dict) else None
        sections.append(
            {
                "name": task.name,
                "title": title,
                "anchor": anchor,
                "data_note": data_note,
                # rendered with autoescape on, like the page
                **{block: Markup(parts.get(block, "")) for block in BLOCKS},
            }
        )
    return sections


def render_results(results: dict[str, Any], run_dir: str | Path | None = None) -> str:
    directory = Path(run_dir) if run_dir is not None else None
    context = {
        "results": results,
        "run": results["run"],
        "task_sections": task_sections(results, directory),
        "flags": flag_rows(results),
    }
    return _environment().get_template("report.html.j2").render(**context)


def render_report(run_dir: str | Path) -> str:
    return render_results(load_results(run_dir), run_dir)


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    path = Path(output) if output is not None else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(run_dir), encoding="utf-8")
    return path
