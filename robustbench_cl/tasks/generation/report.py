"""The generation report: the section's context and the terminal table."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from rich.table import Table

from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.report import plots
from robustbench_cl.report.media import run_file
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
    return {"rows": rows, "trace": plots.training_traces(traces) if traces else None}


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
