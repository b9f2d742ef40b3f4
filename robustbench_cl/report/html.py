"""A self-contained HTML report of a run directory (inline CSS, no external URL).

Built with Jinja2 and autoescape on: every string from a config, a model or data is escaped.
This is the first version; the full report (curves, examples, privacy) builds on it.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from robustbench_cl.engine.summary import column_label, load_run


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("robustbench_cl.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["pct"] = lambda value: f"{100 * value:.1f}"
    return env


def render_report(run_dir: str | Path) -> str:
    summary = load_run(run_dir)
    for pair in summary.pairs:
        pair.by_column = {column_label(cell): cell for cell in pair.cells}  # type: ignore[attr-defined]
    threats = []
    for pair in summary.pairs:
        for cell in pair.cells:
            if cell["threat"] not in threats:
                threats.append(cell["threat"])
    return (
        _environment()
        .get_template("report.html.j2")
        .render(summary=summary, meta=summary.meta, threats=threats)
    )


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    path = Path(output) if output is not None else Path(run_dir) / "report.html"
    path.write_text(render_report(run_dir), encoding="utf-8")
    return path
