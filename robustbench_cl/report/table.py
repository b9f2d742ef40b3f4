"""The matrix as a rich table: one column per (model, defense), one row per attack and threat.

Rows are grouped by threat model; a group with several attacks ends with its worst case
(per-sample, over the attacks of the group). '!' marks a cell with sanity flags.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from robustbench_cl.engine.summary import RunSummary, column_label, threat_label, threat_sort_key


def _percent(value: float) -> str:
    return f"{100 * value:.1f}"


def _percent_or_dash(value: float | None) -> str:
    return "-" if value is None else _percent(value)


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
        table.add_column(header, justify="right")
    table.add_row(
        "clean", "", *[_percent(p.clean_accuracy) for p in summary.pairs], end_section=True
    )
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
                text = Text(_percent(cell["robust_accuracy"]))
                if cell["flags"]:
                    text.append(" !", style="bold yellow")
                values.append(text)
            table.add_row(attack_name, label, *values)
        worst = [next((w for w in p.worst_case if w.label == label), None) for p in summary.pairs]
        if len(rows[label]) > 1:
            table.add_row(
                Text("worst case", style="bold"),
                label,
                *[Text(_percent(w.robust_accuracy) if w else "-", style="bold") for w in worst],
            )
        table.rows[-1].end_section = True
    return table


def flags_table(summary: RunSummary) -> Table | None:
    from robustbench_cl.engine.results import build_results, task_flag_rows

    rows = [
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


def _delta(value: float | None) -> Text:
    if value is None:
        return Text("")
    points = 100 * value
    style = "green" if points > 0.05 else "red" if points < -0.05 else "dim"
    return Text(f"{points:+.1f}", style=style)


def comparison_table(comparison: dict[str, Any]) -> Table:
    """The same cells across runs: accuracy % per run, and each run's delta to the first."""
    table = Table(title="accuracy % across runs (delta vs the first run)", title_justify="left")
    table.add_column("model / defense", style="bold")
    table.add_column("cell")
    for index, run in enumerate(comparison["runs"]):
        table.add_column(run["name"], justify="right")
        if index:
            table.add_column("delta", justify="right")
    for row in comparison["rows"]:
        values: list[Text] = []
        for index, (value, delta) in enumerate(zip(row["values"], row["deltas"])):
            values.append(Text("-" if value is None else _percent(value)))
            if index:
                values.append(_delta(delta))
        table.add_row(row["pair"], row["cell"], *values)
    return table


def membership_table(summary: RunSummary) -> Table | None:
    """Membership inference per (model, defense): AUC, TPR at low FPR, advantage."""
    rows = [(pair, record) for pair in summary.pairs for record in pair.membership]
    if not rows:
        return None
    alphas = sorted({a for _, r in rows for a in r["tpr_at_fpr"]}, key=float, reverse=True)
    n_out = rows[0][1]["n_nonmembers"]
    table = Table(
        title=f"membership inference ({rows[0][1]['n_members']} members / {n_out} non-members; "
        f"FPR resolution {100 / max(n_out, 1):.2g}%)",
        title_justify="left",
    )
    for name in ("model / defense", "attack", "AUC", "95% CI"):
        table.add_column(name, justify="left" if name in ("model / defense", "attack") else "right")
    for alpha in alphas:
        table.add_column(f"TPR@{100 * float(alpha):g}%FPR", justify="right")
    table.add_column("advantage", justify="right")
    table.add_column("refs", justify="right")
    for pair, record in rows:
        low, high = record["auc_ci95"]
        refs = record["reference_models"]
        table.add_row(
            pair.label,
            record["attack"].get("name") or record["attack"]["attack"],
            f"{record['auc']:.3f}",
            f"{low:.3f}-{high:.3f}",
            *[_percent(record["tpr_at_fpr"][a]) for a in alphas],
            f"{record['advantage']:.3f}",
            f"{refs}{' off' if record['offline'] else ''}" if refs else "-",
        )
    for pair in summary.pairs:
        for skipped in pair.membership_skipped:
            table.add_row(
                pair.label, skipped["attack"], "n/a", "no recipe", *[""] * (len(alphas) + 2)
            )
    return table


def generation_table(summary: RunSummary) -> Table | None:
    """Generation quality per (model, defense), scored by the independent judge."""
    rows = [(pair, pair.generation) for pair in summary.pairs if pair.generation]
    if not rows:
        return None
    first = rows[0][1]
    table = Table(
        title=f"generation ({first['n_samples']} samples, {first['steps']} ascent steps; judge "
        f"{first['judge']}; mini-FID floor {first['fid_train_vs_eval']:.1f}, "
        f"seeds {first['fid_seeds_vs_eval']:.1f})",
        title_justify="left",
    )
    for name in ("model / defense", "intended class %", "mini-FID", "OOD AUROC", "training"):
        table.add_column(name, justify="left" if name == "model / defense" else "right")
    for pair, record in rows:
        training = record.get("training")
        note = (
            f"T={training['final_gen_steps']} NaN={training['nan_batches']} "
            f"AUC sd={training['auc_std_last_100']:.3f}"
            if training
            else "-"
        )
        table.add_row(
            pair.label,
            _percent(record["intended_class_accuracy"]),
            f"{record['mini_fid']:.1f}",
            f"{record['ood_auroc']:.3f}",
            note,
        )
    return table


def retrieval_table(summary: RunSummary) -> Table | None:
    """ASR@1 (TR / IR, %) of each universal perturbation: source x target, plus clean R@1."""
    if not summary.retrieval:
        return None
    targets = [r["model"].get("name") or r["model"]["spec"] for r in summary.retrieval_clean]
    table = Table(
        title="retrieval: ASR@1 % (TR / IR) over the previously-correct queries; * white-box",
        title_justify="left",
    )
    table.add_column("attack", justify="left")
    table.add_column("eps", justify="right")
    table.add_column("source", justify="left")
    for target in targets:
        table.add_column(target, justify="right")
    rows: dict[tuple[str, float, str], dict[str, str]] = {}
    for record in summary.retrieval:
        attack = record["attack"].get("name") or record["attack"]["attack"]
        source = record["source"].get("name") or record["source"]["spec"]
        target = record["target"].get("name") or record["target"]["spec"]
        tr, ir = record["asr"].get("tr@1", {}).get("asr"), record["asr"].get("ir@1", {}).get("asr")
        mark = "*" if record["access"] == "white-box" else ""
        key = (attack, record["threat"]["eps"], source)
        rows.setdefault(key, {})[target] = f"{_percent(tr)} / {_percent(ir)}{mark}"
    for (attack, eps, source), cells in rows.items():
        table.add_row(attack, f"{eps * 255:.3g}/255", source, *[cells.get(t, "-") for t in targets])
    clean = "  ".join(
        f"{t}: TR@1 {_percent(r['recall'].get('tr@1'))} IR@1 {_percent(r['recall'].get('ir@1'))}"
        for t, r in zip(targets, summary.retrieval_clean)
    )
    table.caption = f"clean: {clean}"
    return table


def jailbreak_table(summary: RunSummary) -> Table | None:
    """Judged ASR % (forced ASR %) per (model, defense) and attack, with utility and compute."""
    if not summary.jailbreak_clean:
        return None
    from robustbench_cl.engine.results import jailbreak_label

    table = Table(
        title="jailbreak: judged ASR % (forced ASR %) on held-out harmful behaviours",
        title_justify="left",
    )
    table.add_column("model / defense", justify="left")
    table.add_column("utility %", justify="right")
    table.add_column("over-refusal %", justify="right")
    columns: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    for record in summary.jailbreak:
        attack = record["attack"].get("name") or record["attack"]["attack"]
        column = jailbreak_label(record["threat"], attack)
        if column not in columns:
            columns.append(column)
        cells[(record["clean_id"], column)] = (
            f"{_percent_or_dash(record['judged_asr']['rate'])} ({_percent_or_dash(record['forced_asr']['rate'])})"
        )
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("train passes", justify="right")
    for record in summary.jailbreak_clean:
        defense = record["defense"].get("name") or record["defense"]["defense"]
        model = record["model"].get("name") or record["model"]["spec"]
        cost = (record.get("training") or {}).get("cost")
        passes = f"{cost['forward'] + cost['backward']:,}" if cost else "-"
        table.add_row(
            f"{model} / {defense}",
            _percent_or_dash(record["utility"]["rate"]),
            _percent_or_dash(record["over_refusal"]["rate"]),
            *[cells.get((record["id"], c), "-") for c in columns],
            passes,
        )
    return table


def screens_table(summary: RunSummary) -> Table | None:
    """PLR, exact PLR, zero-leak and TSR % per protector and router, with image quality."""
    if not summary.screens:
        return None
    from robustbench_cl.engine.screens import screen_rows

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
    for row in screen_rows(summary.screens):
        table.add_row(
            row["label"],
            f"{row['router']} ({row['access']})",
            _percent_or_dash(row["plr"]["rate"]),
            _percent_or_dash(row["plr_exact"]["rate"]),
            _percent_or_dash(row["zero_leak"]["rate"]),
            _percent_or_dash(row["tsr"]["rate"]),
            f"{row['psnr']:.1f}",
            f"{row['ssim']:.3f}",
        )
    return table
