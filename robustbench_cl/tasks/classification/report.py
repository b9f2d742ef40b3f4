"""The classification report: the matrix, the worst case, the security curves, the cost and
the example images (its template: tasks/templates/classification.html.j2), the terminal matrix,
the flag rows and the ``--json`` rows."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from rich.text import Text

from robustbench_cl.engine.records import label
from robustbench_cl.engine.summary import RunSummary, threat_dict, threat_label, threat_sort_key
from robustbench_cl.report.media import EXAMPLES_PER_CELL, EXAMPLES_TOTAL, png_data_uri, run_file
from robustbench_cl.report.plots import COLORS, figure, to_svg
from robustbench_cl.report.table import percent
from robustbench_cl.tasks.classification.summary import PairSummary, column_label


def render(results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    """The template's context; ``None`` when the run has no (model, defense) pair."""
    if not results.get("pairs"):
        return None
    cells = {cell["id"]: cell for cell in results["cells"]}
    matrix = [
        {
            "pair": pair,
            "by_column": {cells[i]["column"]: cells[i] for i in pair["cell_ids"]},
            "flags": sum(len(cells[i]["flags"]) for i in pair["cell_ids"]),
        }
        for pair in results["pairs"]
    ]
    return {
        "pairs": results["pairs"],
        "cells": results["cells"],
        "columns": _columns(results),
        "matrix": matrix,
        "curves": security_curves(results),
        "examples": _examples(results, run_dir) if run_dir is not None else [],
        "non_adaptive": [c for c in results["cells"] if not c["adaptive"]],
    }


def flag_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """The flags of each pair's clean pass, then those of each cell."""
    rows = [
        {"where": f"{pair['label']}: clean pass", **flag}
        for pair in results.get("pairs", [])
        for flag in pair.get("flags", [])
    ]
    rows += [
        {"where": f"{cell['pair']}: {cell['column']}", **flag}
        for cell in results.get("cells", [])
        for flag in cell["flags"]
    ]
    return rows


def summary_json(pairs: list[PairSummary]) -> dict[str, Any] | None:
    """``rows``: per pair, its clean accuracy, its cells and its worst case (always present,
    empty for a run without pairs, as before tasks had their own parts)."""
    return {
        "rows": [
            {
                "model": pair.model,
                "defense": pair.defense,
                "clean_accuracy": pair.clean_accuracy,
                "normalization": pair.normalization,
                "flags": pair.flags,
                "cells": [
                    {
                        "attack": label(cell.attack),
                        "threat": threat_dict(cell.threat),
                        "robust_accuracy": cell.robust_accuracy,
                        "robust_ci95": cell.robust_ci95,
                        "flags": [f.model_dump() for f in cell.flags],
                        "cost": cell.cost,
                    }
                    for cell in pair.cells
                ],
                "worst_case": [asdict(w) for w in pair.worst_case],
            }
            for pair in pairs
        ]
    }


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


def security_curves(results: dict[str, Any]) -> list[tuple[str, str]]:
    """Worst-case robust accuracy vs eps, one figure per norm, one line per (model, defense).

    eps = 0 is the clean accuracy. Only norms with at least two eps values get a figure.
    The worst case at an eps is over the attacks that ran at that eps, so the caption says so.
    """
    curves: dict[tuple[str, bool, str], dict[str, list[tuple[float, float, float, float]]]] = (
        defaultdict(lambda: defaultdict(list))
    )
    clean = {pair["label"]: pair for pair in results["pairs"]}
    for pair in results["pairs"]:
        for worst in pair["worst_case"]:
            threat = worst["threat"]
            low, high = worst["ci95"]
            key = (threat["norm"], threat["targeted"], threat.get("access", "white-box"))
            curves[key][pair["label"]].append((threat["eps"], worst["robust_accuracy"], low, high))
    figures = []
    for (norm, targeted, access), lines in curves.items():
        if max(len({p[0] for p in points}) for points in lines.values()) < 2:
            continue
        fig, ax = figure()
        for color, (name, points) in zip(COLORS * 4, lines.items()):
            base = clean[name]
            points = sorted(
                [(0.0, base["clean_accuracy"], *base["clean_ci95"]), *points], key=lambda p: p[0]
            )
            eps = [p[0] for p in points]
            ax.plot(eps, [100 * p[1] for p in points], marker="o", color=color, label=name)
            ax.fill_between(
                eps,
                [100 * p[2] for p in points],
                [100 * p[3] for p in points],
                color=color,
                alpha=0.15,
                linewidth=0,
            )
        suffix = (", targeted" if targeted else "") + (
            f", {access}" if access != "white-box" else ""
        )
        ax.set_xlabel(f"eps ({norm}{suffix})")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        title = norm + suffix.replace(",", "")
        figures.append((title, to_svg(fig)))
    return figures + minimum_norm_curves(results)


def minimum_norm_curves(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The security curve each complete minimum-norm cell (fmn, ddn) draws from its per-sample
    smallest norms: one figure per (norm, attack), one step line per (model, defense)."""
    lines: dict[tuple[str, str], list[tuple[str, list[list[float]]]]] = defaultdict(list)
    for cell in results.get("cells", []):
        curve = (cell.get("min_norm") or {}).get("curve")
        if curve:
            lines[(cell["threat"]["norm"], cell["attack"]["label"])].append((cell["pair"], curve))
    figures = []
    for (norm, attack), entries in lines.items():
        fig, ax = figure()
        for color, (name, curve) in zip(COLORS * 4, entries):
            ax.step(
                [p[0] for p in curve],
                [100 * p[1] for p in curve],
                where="post",
                color=color,
                label=name,
            )
        ax.set_xlabel(f"eps ({norm}), from each sample's smallest adversarial norm")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
        figures.append((f"{norm} {attack} (minimum norm)", to_svg(fig)))
    return figures


def matrix_table(summary: RunSummary, pairs: list[PairSummary]) -> Table:
    """Clean and robust accuracy (%): rows = attack @ threat, columns = model / defense.

    Rows are grouped by threat model; a group with several attacks ends with its worst case
    (per-sample, over the attacks of the group). '!' marks a number with sanity flags.
    """
    n = pairs[0].n if pairs else 0
    table = Table(
        title=f"{summary.meta.get('suite', 'run')}: accuracy % (n={n})", title_justify="left"
    )
    table.add_column("attack", style="bold")
    table.add_column("threat")
    for pair in pairs:
        header = (
            pair.defense if len({p.model for p in pairs}) == 1 else f"{pair.model} / {pair.defense}"
        )
        if pair.normalization:
            header += f"\n(norm. {pair.normalization})"
        table.add_column(header, justify="right")
    clean = []
    for pair in pairs:
        text = Text(percent(pair.clean_accuracy))
        if pair.flags:
            text.append(" !", style="bold yellow")
        clean.append(text)
    table.add_row("clean", "", *clean, end_section=True)
    threats: list[str] = []
    rows: dict[str, list[str]] = {}
    for pair in pairs:
        for cell in pair.cells:
            label = threat_label(cell.threat)
            if label not in threats:
                threats.append(label)
                rows[label] = []
            column = column_label(cell)
            if column not in rows[label]:
                rows[label].append(column)
    order = {}
    for pair in pairs:
        for cell in pair.cells:
            order.setdefault(threat_label(cell.threat), threat_sort_key(cell.threat))
    for label in sorted(threats, key=lambda item: order[item]):
        for column in rows[label]:
            attack_name = column[: -len(label) - 1]
            values = []
            for pair in pairs:
                cell = next((c for c in pair.cells if column_label(c) == column), None)
                if cell is None:
                    values.append(Text("-"))
                    continue
                text = Text(percent(cell.robust_accuracy))
                if cell.flags:
                    text.append(" !", style="bold yellow")
                values.append(text)
            table.add_row(attack_name, label, *values)
        worst = [next((w for w in p.worst_case if w.label == label), None) for p in pairs]
        if len(rows[label]) > 1:
            table.add_row(
                Text("worst case", style="bold"),
                label,
                *[Text(percent(w.robust_accuracy) if w else "-", style="bold") for w in worst],
            )
        table.rows[-1].end_section = True
    return table


def example_rows(
    run_dir: Path, cell: dict[str, Any], class_names: list[str] | None = None
) -> list[dict[str, Any]]:
    """Rows of clean | amplified perturbation | adversarial, with predictions, for one cell."""
    from safetensors.torch import load_file

    relative = cell.get("examples")
    if not relative:
        return []
    path = run_file(Path(run_dir), relative)
    if path is None:
        return []
    tensors = load_file(str(path))
    bounds = tuple(cell["threat"]["bounds"]) if cell["threat"].get("bounds") else None
    names = class_names or []

    def name(value: torch.Tensor) -> str:
        index = int(value)
        return names[index] if index < len(names) else str(index)

    rows = []
    for i in range(len(tensors["index"])):
        clean, adv = tensors["clean"][i], tensors["adversarial"][i]
        delta = adv - clean
        peak = float(delta.abs().max())
        gain = 0.5 / peak if peak > 0 else 1.0
        rows.append(
            {
                "index": int(tensors["index"][i]),
                "label": name(tensors["label"][i]),
                "clean": png_data_uri(clean, bounds),
                "perturbation": png_data_uri(0.5 + gain * delta, (0.0, 1.0)),
                "adversarial": png_data_uri(adv, bounds),
                "clean_prediction": name(tensors["clean_prediction"][i]),
                "adversarial_prediction": name(tensors["adversarial_prediction"][i]),
                "gain": gain,
                "norm": float(_norm(delta, cell["threat"]["norm"])),
            }
        )
    return rows


def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten().float()
    if norm == "l2":
        return flat.norm(p=2)
    if norm == "l1":
        return flat.norm(p=1)
    if norm == "l0":
        return (flat != 0).sum()
    return flat.abs().max()
