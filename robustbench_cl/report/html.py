"""The self-contained HTML report of a run directory, and the side-by-side comparison of runs.

Rendered from the ``results.json`` dict (the report never runs a model): Jinja2 with autoescape
on, inline CSS, plots as inline SVG, example images as inline PNG, a few lines of inline JS for
sorting tables. No CDN, no external URL: the file opens offline and can be mailed as is.
Each section appears only when the run has data for it.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from markupsafe import Markup

from robustbench_cl.engine.results import load_results, task_flag_rows
from robustbench_cl.engine.summary import threat_sort_key
from robustbench_cl.report import plots
from robustbench_cl.report.media import example_rows, mask_pii, png_data_uri, truncate

#: example rows shown per cell, and in the whole report
EXAMPLES_PER_CELL = 3
EXAMPLES_TOTAL = 24


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
        "rocs": [(pair, plots.membership_roc(curves)) for pair, curves in by_pair.items()],
    }


def _generation(results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    entries = results.get("generation")
    if not entries:
        return None
    rows = []
    for entry in entries:
        grid = None
        if run_dir is not None:
            path = (run_dir / entry["grid"]).resolve()
            if path.is_relative_to(run_dir.resolve()) and path.exists():
                grid = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        rows.append(dict(entry, image=grid))
    traces = [(e["pair"], e["training"]) for e in entries if e.get("training")]
    return {"rows": rows, "trace": plots.training_traces(traces) if traces else None}


def _run_file(run_dir: Path | None, relative: str | None) -> Path | None:
    """A file inside the run directory (never outside it), if it exists."""
    if run_dir is None or not relative:
        return None
    path = (run_dir / relative).resolve()
    return path if path.is_relative_to(run_dir.resolve()) and path.exists() else None


def _eps_label(threat: dict[str, Any]) -> str:
    """``linf 12/255`` when eps is a whole number of 255ths, else ``linf 0.05``."""
    eps = float(threat["eps"])
    steps = eps * 255
    text = f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-6 else f"{eps:g}"
    return f"{threat['norm']} {text}"


def _retrieval(results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    section = results.get("retrieval")
    if not section:
        return None
    from safetensors.torch import load_file

    order = {"tr": 0, "ir": 1}
    first = section["clean"][0]["recall"] if section["clean"] else {}
    recall_keys = sorted(first, key=lambda k: (order[k.split("@")[0]], int(k.split("@")[1])))
    cells = section["cells"]
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    perturbations, examples, seen = [], [], set()
    for cell in cells:
        key = (cell["attack"]["label"], _eps_label(cell["threat"]), cell["source"])
        row = rows.setdefault(
            key, {"attack": key[0], "threat": key[1], "source": key[2], "by_target": {}}
        )
        row["by_target"][cell["target"]] = cell
        path = _run_file(run_dir, cell["perturbation"])
        if path is not None and cell["fit_id"] not in seen:
            seen.add(cell["fit_id"])
            delta = load_file(str(path))["delta"]
            eps = float(cell["threat"]["eps"]) or 1.0
            amplified = (delta / (2 * eps) + 0.5).clamp(0, 1)
            label = f"{cell['attack']['label']} on {cell['source']}, {_eps_label(cell['threat'])}"
            perturbations.append({"label": label, "image": png_data_uri(amplified)})
        images = _run_file(run_dir, cell.get("example_images"))
        if images is not None and len(examples) < EXAMPLES_TOTAL:
            stacks = load_file(str(images))
            for index, example in enumerate(cell["examples"][:EXAMPLES_PER_CELL]):
                examples.append(
                    dict(
                        example,
                        cell=f"{cell['source']} | {cell['attack']['label']} | {_eps_label(cell['threat'])}",
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
        "cells": [dict(c, eps_label=_eps_label(c["threat"])) for c in cells],
        "perturbations": perturbations,
        "examples": examples,
        "train_note": f"{train_n} images" if train_n else "all of it",
        "data_note": (
            f"{section['clean'][0]['n_images']} test images, {section['clean'][0]['n_captions']} captions"
            if section["clean"]
            else "-"
        ),
    }


def _llm(results: dict[str, Any]) -> list[dict[str, Any]]:
    examples: list[dict[str, Any]] = []
    for cell in results.get("jailbreak", {}).get("cells", []):
        examples += [
            dict(example, cell=f"{cell['pair']} | {cell['column']}")
            for example in cell["examples"][:2]
        ]
    return examples[: 2 * EXAMPLES_TOTAL]


def _jailbreak(results: dict[str, Any]) -> dict[str, Any] | None:
    section = results.get("jailbreak")
    if not section:
        return None
    by_pair: dict[str, dict[str, Any]] = {}
    for cell in section["cells"]:
        by_pair.setdefault(cell["clean_id"], {})[cell["column"]] = cell
    worst = {w["clean_id"]: w for w in section["worst_case"]}
    rows = [
        dict(pair, by_column=by_pair.get(pair["id"], {}), worst=worst.get(pair["id"]))
        for pair in section["pairs"]
    ]
    generation = section["cells"][0]["generation"] if section["cells"] else {}
    return {"rows": rows, "columns": section["columns"], "generation": generation}


def _screens(results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    section = results.get("screens")
    if not section:
        return None
    examples = []
    for entry in section["examples"]:
        for example in entry["examples"]:
            path = _run_file(run_dir, example["image"])
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
        "plots": [(r, plots.screen_tradeoff(section["rows"], r)) for r in routers],
        "examples": examples,
    }


def render_results(results: dict[str, Any], run_dir: str | Path | None = None) -> str:
    cells = {cell["id"]: cell for cell in results["cells"]}
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
        "examples": _examples(results, Path(run_dir)) if run_dir is not None else [],
        "privacy": _privacy(results),
        "generation": _generation(results, Path(run_dir) if run_dir is not None else None),
        "retrieval": _retrieval(results, Path(run_dir) if run_dir is not None else None),
        "llm": _llm(results),
        "jailbreak": _jailbreak(results),
        "screens": _screens(results, Path(run_dir) if run_dir is not None else None),
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


# ---------------------------------------------------------------------- comparing runs
def compare_results(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The same cells across runs, matched by (model, defense, attack, threat) display labels.

    ``rows`` hold one value per run (``None`` where a run lacks the cell) and the delta of each
    run against the first, in accuracy points.
    """
    keys: list[tuple[str, str]] = []
    order: dict[tuple[str, str], tuple[Any, ...]] = {}
    values: dict[tuple[str, str], list[float | None]] = {}
    pair_order: dict[str, int] = {}

    def put(key: tuple[str, str], index: int, value: float, sort: tuple[Any, ...]) -> None:
        if key not in values:
            keys.append(key)
            values[key] = [None] * len(runs)
            order[key] = (pair_order.setdefault(key[0], len(pair_order)), *sort, len(keys))
        values[key][index] = value

    for index, results in enumerate(runs):
        for pair in results["pairs"]:
            put((pair["label"], "clean"), index, pair["clean_accuracy"], (0,))
        for cell in results["cells"]:
            sort = (1, threat_sort_key(cell["threat"]), 0)
            put((cell["pair"], cell["column"]), index, cell["robust_accuracy"], sort)
        for pair in results["pairs"]:
            for worst in pair["worst_case"]:
                key = (pair["label"], f"worst case {worst['label']}")
                put(key, index, worst["robust_accuracy"], (1, threat_sort_key(worst["threat"]), 1))
    keys.sort(key=lambda key: order[key])
    rows = []
    for key in keys:
        row = values[key]
        first = row[0]
        deltas = [None if v is None or first is None else v - first for v in row]
        rows.append({"pair": key[0], "cell": key[1], "values": row, "deltas": deltas})
    return {
        "runs": [
            {
                "suite": r["run"]["suite"],
                "profile": r["run"]["profile"],
                "config_hash": r["run"]["config_hash"],
                "started": r["run"]["started"],
            }
            for r in runs
        ],
        "rows": rows,
    }


def write_comparison(
    run_dirs: list[str | Path], output: str | Path, names: list[str] | None = None
) -> tuple[Path, dict[str, Any]]:
    comparison = compare_results([load_results(d) for d in run_dirs])
    short = [Path(d).name for d in run_dirs]
    if len(set(short)) < len(short):  # same folder names: show the paths as given
        short = [str(d) for d in run_dirs]
    for run, default, name in zip(
        comparison["runs"], short, names or [None] * len(run_dirs), strict=True
    ):
        run["name"] = name or default
    html = _environment().get_template("compare.html.j2").render(comparison=comparison)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path, comparison
