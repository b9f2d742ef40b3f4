"""The membership report: the privacy section's context, the ROC curves and the terminal table."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rich.table import Table

from robustbench_cl.engine.records import (
    label,
)
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.report.plots import COLORS, figure, log_axes, to_svg
from robustbench_cl.report.table import percent
from robustbench_cl.tasks.pairs import pair_labels


def _privacy(results: dict[str, Any]) -> dict[str, Any] | None:
    audits = results.get("membership", [])
    if not audits:
        return None
    by_pair: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for audit in audits:
        by_pair[audit["pair"]].append(dict(audit, label=audit["attack"]["label"]))
    alphas = sorted({a for audit in audits for a in audit["tpr_at_fpr"]}, key=float, reverse=True)
    return {
        "membership": audits,
        "alphas": alphas,
        "rocs": [(pair, membership_roc(curves)) for pair, curves in by_pair.items()],
    }


def membership_roc(curves: list[dict[str, Any]]) -> str | None:
    """Membership-inference ROC on log-log axes, where the low-FPR regime is visible, down to
    the FPR resolution (one non-member) and no lower: below it nothing was measured."""
    if not curves:
        return None
    fig, ax = figure(4.5, 3.6)
    counts = [c["n_nonmembers"] for c in curves if c.get("n_nonmembers")]
    floor = 1.0 / max(counts) if counts else 1e-4
    for color, curve in zip(COLORS * 4, curves):
        fpr = [max(v, floor) for v in curve["fpr"]]
        tpr = [max(v, floor) for v in curve["tpr"]]
        ax.plot(fpr, tpr, color=color, label=f"{curve['label']} (AUC {curve['auc']:.3f})")
    ax.plot([floor, 1], [floor, 1], color="#888", linestyle="--", linewidth=0.8, label="chance")
    log_axes(ax)
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(floor, 1.0)
    ax.set_xlabel(f"false positive rate (resolution {floor:.2g})")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, frameon=False)
    return to_svg(fig)


def membership_table(summary: RunSummary) -> Table | None:
    """Membership inference per (model, defense): AUC, TPR at low FPR, advantage."""
    labels = pair_labels(summary)
    records = summary.of("membership")
    rows = [(name, r) for pair_id, name in labels.items() for r in records if r.pair_id == pair_id]
    if not rows:
        return None
    alphas = sorted({a for _, r in rows for a in r.tpr_at_fpr}, key=float, reverse=True)
    n_out = rows[0][1].n_nonmembers
    table = Table(
        title=f"membership inference ({rows[0][1].n_members} members / {n_out} non-members; "
        f"FPR resolution {100 / max(n_out, 1):.2g}%)",
        title_justify="left",
    )
    for name in ("model / defense", "attack", "AUC", "95% CI"):
        table.add_column(name, justify="left" if name in ("model / defense", "attack") else "right")
    for alpha in alphas:
        table.add_column(f"TPR@{100 * float(alpha):g}%FPR", justify="right")
    table.add_column("advantage", justify="right")
    table.add_column("eps >=", justify="right")
    table.add_column("claimed eps", justify="right")
    table.add_column("refs", justify="right")
    for name, record in rows:
        low, high = record.auc_ci95
        refs = record.reference_models
        table.add_row(
            name,
            label(record.attack),
            f"{record.auc:.3f}",
            f"{low:.3f}-{high:.3f}",
            *[percent(record.tpr_at_fpr[a]) for a in alphas],
            f"{record.advantage:.3f}",
            f"{record.epsilon_audit['epsilon_lb']:.2f}" if record.epsilon_audit else "-",
            f"{record.privacy['epsilon']:.2f}" if record.privacy else "-",
            f"{refs}{' off' if record.offline else ''}" if refs else "-",
        )
    for clean in summary.of("clean"):
        for skipped in clean.membership_skipped or []:
            table.add_row(
                labels[clean.id],
                skipped["attack"],
                "n/a",
                "no recipe",
                *[""] * (len(alphas) + 4),
            )
    return table
