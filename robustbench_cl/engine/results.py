"""``results.json``: the versioned, machine-readable result of a run.

Derived from ``cells.jsonl`` and ``meta.json`` (never by running a model), validated against
``results.schema.json`` beside this file and documented in ``docs/results-schema.md``. The HTML
report and ``compare`` read this dict, so anything a report shows is in the JSON too.

Per-sample outcomes stay in ``cells.jsonl``; ``results.json`` carries the aggregates.
Bump ``SCHEMA_VERSION`` (major for a removed or renamed field, minor for an added one) whenever
the shape changes, and update the schema file and the doc with it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

from robustbench_cl.engine import sanity
from robustbench_cl.engine.metrics import rate_entry
from robustbench_cl.engine.store import write_json_atomic
from robustbench_cl.engine.summary import (
    RunSummary,
    column_label,
    load_run,
    threat_label,
    threat_sort_key,
)

SCHEMA_VERSION = "1.1"
SCHEMA_PATH = Path(__file__).with_name("results.schema.json")

#: optional sections that tasks beyond classification attach to their cell records


@cache
def results_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _threat_id(threat: dict[str, Any]) -> str:
    return json.dumps(threat, sort_keys=True)


def _attack_entry(attack: dict[str, Any]) -> dict[str, Any]:
    return {
        "attack": attack["attack"],
        "label": attack.get("name") or attack["attack"],
        "params": attack.get("params", {}),
        "settings": attack.get("settings", {}),
    }


def _cell_entry(cell: dict[str, Any], pair_label: str) -> dict[str, Any]:
    attack = cell["attack"]
    entry = {
        "id": cell["id"],
        "pair_id": cell["pair_id"],
        "group_id": cell["group_id"],
        "pair": pair_label,
        "attack": _attack_entry(attack),
        "column": column_label(cell),
        "threat": cell["threat"],
        "threat_label": threat_label(cell["threat"]),
        "adaptive": cell.get("adaptive", cell["threat"].get("access") != "transfer"),
        "cascade": bool(cell.get("cascade", True)),
        "n": cell["n"],
        "attacked": cell["attacked"],
        "broken": cell["broken"],
        "robust_count": cell["robust_count"],
        "clean_accuracy": cell["clean_accuracy"],
        "robust_accuracy": cell["robust_accuracy"],
        "robust_ci95": list(cell["robust_ci95"]),
        "attack_success_rate": cell["attack_success_rate"],
        "cost": {key: int(cell["cost"].get(key, 0)) for key in ("forward", "backward", "queries")},
        "wall_time": float(cell["wall_time"]),
        "flags": [{"code": f["code"], "message": f["message"]} for f in cell["flags"]],
        "examples": cell.get("examples"),
    }
    return entry


def build_results(summary: RunSummary) -> dict[str, Any]:
    """The ``results.json`` dict of a run summary (schema ``SCHEMA_VERSION``)."""
    meta = dict(summary.meta)
    threats: dict[str, dict[str, Any]] = {}
    pairs, cells = [], []
    for pair in summary.pairs:
        label = pair.label
        pair_cells = [_cell_entry(cell, label) for cell in pair.cells]
        for cell in pair_cells:
            threats.setdefault(_threat_id(cell["threat"]), cell["threat"])
        cells.extend(pair_cells)
        pairs.append(
            {
                "id": pair.id,
                "label": label,
                "model": pair.model,
                "model_spec": pair.model_spec,
                "defense": pair.defense,
                "defense_id": pair.defense_id,
                "defense_params": pair.defense_params,
                "n": pair.n,
                "clean_accuracy": pair.clean_accuracy,
                "clean_ci95": list(pair.clean_ci95),
                "cell_ids": [cell["id"] for cell in pair_cells],
                "membership_skipped": pair.membership_skipped,
                "worst_case": [
                    dict(asdict(w), ci95=list(w.ci95), label=w.label)
                    for w in sorted(pair.worst_case, key=lambda w: threat_sort_key(w.threat))
                ],
            }
        )
    results: dict[str, Any] = {
        "schema": "robustbench_cl.results",
        "schema_version": SCHEMA_VERSION,
        "run": {
            "suite": meta.get("suite"),
            "profile": meta.get("profile"),
            "config_hash": meta.get("config_hash"),
            "seed": meta.get("seed"),
            "command": meta.get("command"),
            "started": meta.get("started"),
            "finished": meta.get("finished"),
            "wall_time": meta.get("wall_time"),
            "device": meta.get("device"),
            "device_name": meta.get("device_name"),
            "git_commit": meta.get("git_commit"),
            "versions": meta.get("versions", {}),
            "data": meta.get("data"),
            "complete": meta.get("finished") is not None,
            "threads": meta.get("threads"),
            "artifacts": meta.get("artifacts", {}),
        },
        "threat_models": sorted(
            {
                **threats,
                **{_threat_id(r["threat"]): r["threat"] for r in summary.retrieval},
            }.values(),
            key=threat_sort_key,
        ),
        "pairs": pairs,
        "cells": cells,
        "flag_count": sum(len(cell["flags"]) for cell in cells),
    }
    audits = [_membership_entry(r, pair.label) for pair in summary.pairs for r in pair.membership]
    if audits:
        results["membership"] = audits
    generations = [
        _generation_entry(pair.generation, pair.label) for pair in summary.pairs if pair.generation
    ]
    if generations:
        results["generation"] = generations
    if summary.retrieval_clean or summary.retrieval:
        results["retrieval"] = _retrieval_section(summary)
    if summary.jailbreak_clean or summary.jailbreak:
        results["jailbreak"] = _jailbreak_section(summary)
    if summary.screens:
        results["screens"] = _screens_section(summary)
    # every task's flags count: classification cells, and the flagged entries of the others
    results["flag_count"] += sum(len(entry["flags"]) for entry in task_entries(results))
    return results


def task_flag_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per flag of the non-classification tasks: ``task``, ``where``, ``code``,
    ``message`` (the report's and the terminal's sanity tables). Schema 1.0 results have none."""
    rows = []
    for entry in results.get("membership", []):
        where = f"{entry['pair']} | membership {entry['attack']['label']}"
        rows += [{"task": "membership", "where": where, **f} for f in entry.get("flags", [])]
    for cell in results.get("retrieval", {}).get("cells", []):
        where = f"{cell['source']} -> {cell['target']} | {cell['attack']['label']}"
        rows += [{"task": "retrieval", "where": where, **f} for f in cell.get("flags", [])]
    for cell in results.get("jailbreak", {}).get("cells", []):
        where = f"{cell['pair']} | {cell['column']}"
        rows += [{"task": "jailbreak", "where": where, **f} for f in cell.get("flags", [])]
    for row in results.get("screens", {}).get("rows", []):
        where = f"{row['label']} | {row['router']}"
        rows += [{"task": "screens", "where": where, **f} for f in row.get("flags", [])]
    return rows


def task_entries(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries of the non-classification tasks that carry ``flags``."""
    return [
        *results.get("membership", []),
        *results.get("retrieval", {}).get("cells", []),
        *results.get("jailbreak", {}).get("cells", []),
        *results.get("screens", {}).get("rows", []),
    ]


def _screens_section(summary: RunSummary) -> dict[str, Any]:
    """Rows per (protector, eps, router); per router the change of every row from clean."""
    from robustbench_cl.engine.screens import screen_rows
    from robustbench_cl.privacy.metrics import LEAK_RATIO

    rows = screen_rows(summary.screens)
    for row in rows:
        clean = next(
            (r for r in rows if r["protector"] == "clean" and r["router"] == row["router"]), None
        )
        for key in ("plr", "tsr"):
            rates = (row[key]["rate"], clean[key]["rate"] if clean else None)
            row[f"{key}_change"] = None if None in rates else rates[0] - rates[1]
    for row, flags in zip(rows, sanity.screens_flags(rows)):
        row["flags"] = flags
    first = summary.screens[0]
    return {
        "data": first["data"],
        "routers": {
            name: {"access": entry["access"], "settings": entry["settings"]}
            for name, entry in first["routers"].items()
        },
        "rules": {
            "leaked": f"SequenceMatcher ratio > {LEAK_RATIO} between the true value and the "
            "best-matching text the router read",
            "exact": "the normalised true value appears in the normalised reading",
            "task": "the normalised task keyword appears in the router's reading (with or "
            "without spaces), or all its content words do",
        },
        "rows": rows,
        "examples": [
            {"label": r["label"], "examples": r["examples"]}
            for r in summary.screens
            if r["examples"]
        ],
    }


def jailbreak_label(threat: dict[str, Any], attack: str) -> str:
    """``embedding l2 0.3 (relative)``, ``gcg``: the column header of a jailbreak cell."""
    if threat["norm"] == "none":
        return attack + (" (unbounded)" if threat.get("space") == "embedding" else "")
    relative = " rel." if threat.get("eps_relative") else ""
    return f"{attack} {threat['norm']} {threat['eps']:g}{relative}"


def _jailbreak_section(summary: RunSummary) -> dict[str, Any]:
    """Per (model, defense): utility, over-refusal and training compute; per attack cell: forced
    and judged ASR. ``worst_case``: a prompt counts when any attack's judged outcome is 1
    (``bounded``: any attack but the unbounded embedding suffix). The
    compute ratio of each defense is relative to C-AdvUL on the same model, when it ran."""

    def pair_label(record: dict[str, Any]) -> str:
        defense = record["defense"].get("name") or record["defense"]["defense"]
        return f"{_model_label(record['model'])} / {defense}"

    pairs = []
    for r in summary.jailbreak_clean:
        training = r["training"]
        total = None
        if training and training.get("cost"):
            total = training["cost"]["forward"] + training["cost"]["backward"]
        pairs.append(
            {
                "id": r["id"],
                "label": pair_label(r),
                "model": _model_label(r["model"]),
                "defense": r["defense"].get("name") or r["defense"]["defense"],
                "defense_kind": r["defense"]["defense"],
                "utility": r["utility"],
                "utility_by_task": r["utility_by_task"],
                "over_refusal": r["over_refusal"],
                "borderline_correct": r["borderline_correct"],
                "training": training,
                "training_passes": total,
                "embedding_scale": r["embedding_scale"],
                "examples": r["examples"],
            }
        )
    reference = {
        p["model"]: p["training_passes"]
        for p in pairs
        if p["defense_kind"] == "cadv-ul" and p["training_passes"]
    }
    for p in pairs:
        base = reference.get(p["model"])
        p["compute_vs_cadv_ul"] = (
            p["training_passes"] / base if base and p["training_passes"] else None
        )
    labels = {p["id"]: p["label"] for p in pairs}
    cells = []
    worst: dict[str, list[int]] = {}
    # without the unbounded embedding suffix, which forces any string (no threat model bounds it)
    worst_bounded: dict[str, list[int]] = {}
    for r in summary.jailbreak:
        label = jailbreak_label(r["threat"], r["attack"].get("name") or r["attack"]["attack"])
        cells.append(
            {
                "id": r["id"],
                "clean_id": r["clean_id"],
                "pair": labels.get(r["clean_id"], pair_label(r)),
                "attack": _attack_entry(r["attack"]),
                "column": label,
                "threat": r["threat"],
                "n": r["n"],
                "forced_asr": r["forced_asr"],
                "judged_asr": r["judged_asr"],
                "refused": r["refused"],
                "undetermined": r["undetermined"],
                # the keyword-only judge of llm-attacks: jailbroken = no refusal prefix
                "not_refused": rate_entry(r["n"] - r["refused"], r["n"]),
                "suffix_retokenizes": r["suffix_retokenizes"],
                "generation": r["generation"],
                "cost": r["cost"],
                "examples": r["examples"],
                "wall_time": r["wall_time"],
            }
        )
        cells[-1]["flags"] = sanity.jailbreak_flags(cells[-1], r.get("loss_history"))
        hits = [1 if j == 1 else 0 for j in r["judged"]]
        unbounded = r["threat"]["norm"] == "none" and r["threat"]["space"] == "embedding"
        for table, keep in ((worst, True), (worst_bounded, not unbounded)):
            if not keep:
                continue
            previous = table.get(r["clean_id"])
            table[r["clean_id"]] = (
                hits if previous is None else [max(a, b) for a, b in zip(previous, hits)]
            )
    worst_case = [
        {"pair": labels.get(clean_id, clean_id), "clean_id": clean_id}
        | rate_entry(sum(hits), len(hits))
        | {
            "bounded": rate_entry(sum(worst_bounded[clean_id]), len(hits))
            if clean_id in worst_bounded
            else None  # only the unbounded suffix ran
        }
        for clean_id, hits in worst.items()
    ]
    columns = list(dict.fromkeys(c["column"] for c in cells))
    return {"pairs": pairs, "cells": cells, "columns": columns, "worst_case": worst_case}


def _model_label(model: dict[str, Any]) -> str:
    return model.get("name") or model["spec"]


def _retrieval_section(summary: RunSummary) -> dict[str, Any]:
    """Clean R@K per model and one entry per (source, attack, eps, target); the per-query
    outcomes stay in cells.jsonl."""
    clean = [
        {
            "id": r["id"],
            "model": _model_label(r["model"]),
            "model_spec": r["model"]["spec"],
            "n_images": r["n_images"],
            "n_captions": r["n_captions"],
            "recall": r["recall"],
        }
        for r in summary.retrieval_clean
    ]
    keys = (
        "access",
        "recall",
        "asr",
        "delta_linf",
        "word",
        "fit",
        "perturbation",
        "examples",
        "example_images",
    )
    cells = [
        {
            "id": r["id"],
            "fit_id": r["fit_id"],
            "source": _model_label(r["source"]),
            "target": _model_label(r["target"]),
            "attack": _attack_entry(r["attack"]),
            "threat": r["threat"],
            "threat_label": threat_label(r["threat"]),
        }
        | {key: r[key] for key in keys}
        for r in summary.retrieval
    ]
    flags = sanity.retrieval_flags(cells)
    for cell in cells:
        cell["flags"] = flags[cell["id"]]
    return {"clean": clean, "cells": cells}


def _generation_entry(record: dict[str, Any], pair_label: str) -> dict[str, Any]:
    keys = (
        "judge",
        "n_samples",
        "steps",
        "step_size",
        "intended_class_accuracy",
        "mini_fid",
        "fid_train_vs_eval",
        "fid_seeds_vs_eval",
        "ood_auroc",
        "ood_auroc_by_kind",
        "samples_in_bounds",
        "training",
        "grid",
        "wall_time",
    )
    return {"id": record["id"], "pair_id": record["pair_id"], "pair": pair_label} | {
        key: record[key] for key in keys
    }


def _membership_entry(record: dict[str, Any], pair_label: str) -> dict[str, Any]:
    attack = record["attack"]
    keys = (
        "n_members",
        "n_nonmembers",
        "fpr_resolution",
        "auc",
        "auc_ci95",
        "advantage",
        "advantage_ci95",
        "tpr_at_fpr",
        "tpr_at_fpr_ci95",
        "bootstrap",
        "fpr",
        "tpr",
        "reference_models",
        "reference_in_fraction",
        "offline",
        "population_z",
        "wall_time",
    )
    entry = {
        "id": record["id"],
        "pair_id": record["pair_id"],
        "pair": pair_label,
        "attack": _attack_entry(attack),
        **{key: record.get(key) for key in keys},
    }
    entry["flags"] = sanity.membership_flags(entry)
    return entry


def validate_results(results: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``results`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(results, results_schema())


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Results of a run directory, always re-derived from its records (so never stale)."""
    return build_results(load_run(run_dir))


def write_results(run_dir: str | Path) -> Path:
    path = Path(run_dir) / "results.json"
    write_json_atomic(path, load_results(run_dir))
    return path
