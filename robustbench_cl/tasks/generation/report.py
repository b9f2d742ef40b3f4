"""The generation report: the section's context and the terminal table."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from rich.table import Table

from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.report.media import run_file
from robustbench_cl.report.plots import COLORS, figure, to_svg
from robustbench_cl.report.table import percent
from robustbench_cl.tasks.generation.results import _pair_generations


def _generation(results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    entries = results.get("generation")
    if not entries:
        return None
    rows = []
    for entry in entries:
        grid = None
        path = run_file(run_dir, entry.get("grid"))
        if path is not None:
            grid = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        rows.append(dict(entry, image=grid))
    traces = [(e["pair"], e["training"]) for e in entries if e.get("training")]
    return {"rows": rows, "trace": training_traces(traces) if traces else None}


def generation_table(summary: RunSummary) -> Table | None:
    """Generation quality per (model, defense), scored by the independent judge."""
    rows = _pair_generations(summary)
    if not rows:
        return None
    first = rows[0][1]
    table = Table(
        title=f"generation ({first.n_samples} samples, {first.steps} ascent steps; judge "
        f"{first.judge}; mini-FID floor {first.fid_train_vs_eval:.1f}, "
        f"seeds {first.fid_seeds_vs_eval:.1f})",
        title_justify="left",
    )
    for name in ("model / defense", "intended class %", "mini-FID", "OOD AUROC", "training"):
        table.add_column(name, justify="left" if name == "model / defense" else "right")
    for name, record in rows:
        training = record.training
        note = (
            f"T={training['final_gen_steps']} NaN={training['nan_batches']} "
            f"AUC sd={training['auc_std_last_100']:.3f}"
            if training
            else "-"
        )
        table.add_row(
            name,
            percent(record.intended_class_accuracy),
            f"{record.mini_fid:.1f}",
            f"{record.ood_auroc:.3f}",
            note,
        )
    return table


def training_traces(traces: list[tuple[str, dict[str, Any]]]) -> str:
    """DAT's stage-2 training AUC (every 10th batch) and curriculum T, one line per defense."""
    fig, ax = figure(5.5, 3.2)
    twin = ax.twinx()
    for color, (label, training) in zip(COLORS * 4, traces):
        auc = training.get("auc_trace", [])
        steps = training.get("gen_steps_trace", [])
        ax.plot([10 * i for i in range(len(auc))], auc, color=color, label=f"{label} AUC")
        twin.plot(
            [10 * i for i in range(len(steps))], steps, color=color, linestyle=":", linewidth=1
        )
    ax.set_xlabel("stage-2 batch")
    ax.set_ylabel("training AUC, s(real) vs s(generated)")
    twin.set_ylabel("generation steps T (dotted)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    return to_svg(fig)
