"""The retrieval report: the section's context (with perturbation and example images) and the
terminal table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from safetensors.torch import load_file

from robustbench_cl.engine.records import (
    label,
)
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.report.media import (
    EXAMPLES_PER_CELL,
    EXAMPLES_TOTAL,
    eps_label,
    png_data_uri,
    run_file,
)
from robustbench_cl.report.table import percent


def _retrieval(results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    section = results.get("retrieval")
    if not section:
        return None

    order = {"tr": 0, "ir": 1}
    first = section["clean"][0]["recall"] if section["clean"] else {}
    recall_keys = sorted(first, key=lambda k: (order[k.split("@")[0]], int(k.split("@")[1])))
    cells = section["cells"]
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    perturbations, examples, seen = [], [], set()
    for cell in cells:
        key = (cell["attack"]["label"], eps_label(cell["threat"]), cell["source"])
        row = rows.setdefault(
            key, {"attack": key[0], "threat": key[1], "source": key[2], "by_target": {}}
        )
        row["by_target"][cell["target"]] = cell
        path = run_file(run_dir, cell["perturbation"])
        if path is not None and cell["fit_id"] not in seen:
            seen.add(cell["fit_id"])
            delta = load_file(str(path))["delta"]
            eps = float(cell["threat"]["eps"]) or 1.0
            amplified = (delta / (2 * eps) + 0.5).clamp(0, 1)
            label = f"{cell['attack']['label']} on {cell['source']}, {eps_label(cell['threat'])}"
            perturbations.append({"label": label, "image": png_data_uri(amplified)})
        images = run_file(run_dir, cell.get("example_images"))
        if images is not None and len(examples) < EXAMPLES_TOTAL:
            stacks = load_file(str(images))
            for index, example in enumerate(cell["examples"][:EXAMPLES_PER_CELL]):
                examples.append(
                    dict(
                        example,
                        cell=f"{cell['source']} | {cell['attack']['label']} | {eps_label(cell['threat'])}",
                        clean_image=png_data_uri(stacks["clean"][index]),
                        adversarial_image=png_data_uri(stacks["adversarial"][index]),
                    )
                )
    asr_keys = sorted(
        {k for c in cells for k in c["asr"]},
        key=lambda k: (order[k.split("@")[0]], int(k.split("@")[1])),
    )
    train_n = cells[0]["fit"].get("train_images") if cells else None
    return {
        "clean": section["clean"],
        "recall_keys": recall_keys,
        "asr_keys": asr_keys,
        "targets": [c["model"] for c in section["clean"]],
        "rows": list(rows.values()),
        "cells": [dict(c, eps_label=eps_label(c["threat"])) for c in cells],
        "perturbations": perturbations,
        "examples": examples,
        "train_note": f"{train_n} images" if train_n else "all of it",
        "data_note": (
            f"{section['clean'][0]['n_images']} test images, {section['clean'][0]['n_captions']} captions"
            if section["clean"]
            else "-"
        ),
    }


def retrieval_table(summary: RunSummary) -> Table | None:
    """ASR@1 (TR / IR, %) of each universal perturbation: source x target, plus clean R@1."""
    records, cleans = summary.of("retrieval"), summary.of("retrieval_clean")
    if not records:
        return None
    targets = [label(r.model) for r in cleans]
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
    for record in records:
        attack, source, target = (label(x) for x in (record.attack, record.source, record.target))
        tr, ir = (record.asr.get(k, {}).get("asr") for k in ("tr@1", "ir@1"))
        mark = "*" if record.access == "white-box" else ""
        key = (attack, record.threat.eps, source)
        rows.setdefault(key, {})[target] = f"{percent(tr)} / {percent(ir)}{mark}"
    for (attack, eps, source), cells in rows.items():
        table.add_row(attack, f"{eps * 255:.3g}/255", source, *[cells.get(t, "-") for t in targets])
    clean = "  ".join(
        f"{t}: TR@1 {percent(r.recall.get('tr@1'))} IR@1 {percent(r.recall.get('ir@1'))}"
        for t, r in zip(targets, cleans)
    )
    table.caption = f"clean: {clean}"
    return table
