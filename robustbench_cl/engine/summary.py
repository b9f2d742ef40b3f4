"""Derive the matrix from a run directory's records: never re-run, only counted.

Worst case over attacks, the best-known attack and the eps-curve sanity flags all come from
the per-sample outcomes stored in ``cells.jsonl``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustbench_cl.engine import sanity
from robustbench_cl.engine.metrics import wilson_interval
from robustbench_cl.engine.store import ResultsStore
from robustbench_cl.errors import UserError

ROBUST, BROKEN = 1, 0


@dataclass
class ThreatSummary:
    """Worst case over the attacks that share one threat model, for one (model, defense).

    ``breaks`` credits each sample to the first attack (in cascade order) that broke it.
    ``best_known_attack`` is the last attack in that order that broke anything: the one whose
    result is the best-known (lowest) robust accuracy; without it the worst case would be higher.
    """

    threat: dict[str, Any]
    label: str
    robust_accuracy: float
    ci95: tuple[float, float]
    best_known_attack: str | None
    attacks: list[str]
    breaks: dict[str, int]


@dataclass
class PairSummary:
    """One (model, defense) row: ``model`` and ``defense`` are display names."""

    model: str
    defense: str
    clean_accuracy: float
    clean_ci95: tuple[float, float]
    n: int
    cells: list[dict[str, Any]] = field(default_factory=list)
    worst_case: list[ThreatSummary] = field(default_factory=list)
    id: str = ""
    model_spec: str = ""
    defense_id: str = ""
    defense_params: dict[str, Any] = field(default_factory=dict)
    membership: list[dict[str, Any]] = field(default_factory=list)
    generation: dict[str, Any] | None = None
    membership_skipped: list[dict[str, str]] = field(default_factory=list)
    #: the input normalisation inside the model ("none", "imagenet", "mean/std"), if probed
    normalization: str | None = None
    #: flags of the pair's clean pass (missing classes, a normalisation mismatch)
    flags: list[dict[str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model} / {self.defense}"


@dataclass
class RunSummary:
    run_dir: Path
    meta: dict[str, Any]
    pairs: list[PairSummary]
    columns: list[str]
    #: image-text retrieval: clean records per model and the universal-attack cells
    retrieval_clean: list[dict[str, Any]] = field(default_factory=list)
    retrieval: list[dict[str, Any]] = field(default_factory=list)
    #: chat LLMs: clean records per (model, defense) and the attack cells
    jailbreak_clean: list[dict[str, Any]] = field(default_factory=list)
    jailbreak: list[dict[str, Any]] = field(default_factory=list)
    #: screenshot privacy: one record per (protector, eps)
    screens: list[dict[str, Any]] = field(default_factory=list)
    #: every record of the run, for tasks that read their own record types
    records: list[dict[str, Any]] = field(default_factory=list)

    def of(self, *types: str) -> list[dict[str, Any]]:
        """The run's records of these types, in the order they were written."""
        return [r for r in self.records if r["type"] in types]

    @property
    def has_membership(self) -> bool:
        return any(pair.membership for pair in self.pairs)

    @property
    def flag_count(self) -> int:
        return sum(len(cell["flags"]) for pair in self.pairs for cell in pair.cells)


def threat_label(threat: dict[str, Any]) -> str:
    label = f"{threat['norm']} {threat['eps']:g}"
    label += " targeted" if threat.get("targeted") else ""
    access = threat.get("access", "white-box")
    return label + (f" {access}" if access != "white-box" else "")


NORM_ORDER = {"linf": 0, "l2": 1, "l1": 2, "l0": 3, "none": 4}


def threat_sort_key(threat: dict[str, Any]) -> tuple[Any, ...]:
    """Order threat models as a reader expects: linf before l2, untargeted first, eps rising."""
    return (
        threat.get("space", "input") != "input",
        NORM_ORDER.get(threat["norm"], 9),
        bool(threat.get("targeted")),
        threat["eps"],
        threat.get("access", "white-box") != "white-box",
    )


def column_label(cell: dict[str, Any]) -> str:
    name = cell["attack"].get("name") or cell["attack"]["attack"]
    return f"{name} {threat_label(cell['threat'])}"


def summarize_records(
    run_dir: Path, records: list[dict[str, Any]], meta: dict[str, Any]
) -> RunSummary:
    cleans = {r["id"]: r for r in records if r["type"] == "clean"}
    cells = [r for r in records if r["type"] == "cell"]
    audits = [r for r in records if r["type"] == "membership"]
    generations = {r["pair_id"]: r for r in records if r["type"] == "generation"}
    pairs: list[PairSummary] = []
    columns: list[str] = []
    for pair_id, clean in cleans.items():
        pair_cells = [dict(c, flags=list(c["flags"])) for c in cells if c["pair_id"] == pair_id]
        _add_eps_curve_flags(pair_cells)
        if clean.get("defense_kind") == "preprocessor":
            _add_non_adaptive_flags(pair_cells)
        _add_black_box_flags(pair_cells, clean)
        summary = PairSummary(
            model=clean["model"].get("name") or clean["model"]["spec"],
            defense=clean["defense"].get("name") or clean["defense"]["defense"],
            clean_accuracy=clean["clean_accuracy"],
            clean_ci95=tuple(clean["clean_ci95"]),
            n=clean["n"],
            cells=pair_cells,
            id=pair_id,
            model_spec=clean["model"]["spec"],
            defense_id=clean["defense"]["defense"],
            defense_params=dict(clean["defense"].get("params", {})),
            membership=[r for r in audits if r["pair_id"] == pair_id],
            generation=generations.get(pair_id),
            membership_skipped=list(clean.get("membership_skipped", [])),
            normalization=clean.get("normalization"),
            flags=[dict(f) for f in clean.get("flags", [])],
        )
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for cell in pair_cells:
            groups[cell["group_id"]].append(cell)
            if column_label(cell) not in columns:
                columns.append(column_label(cell))
        for group in groups.values():
            summary.worst_case.append(_worst_case(group, clean))
        pairs.append(summary)
    return RunSummary(
        run_dir=run_dir,
        meta=meta,
        pairs=pairs,
        columns=columns,
        retrieval_clean=[r for r in records if r["type"] == "retrieval_clean"],
        retrieval=[r for r in records if r["type"] == "retrieval"],
        jailbreak_clean=[r for r in records if r["type"] == "jailbreak_clean"],
        jailbreak=[r for r in records if r["type"] == "jailbreak"],
        screens=[r for r in records if r["type"] == "screen"],
        records=list(records),
    )


def _worst_case(group: list[dict[str, Any]], clean: dict[str, Any]) -> ThreatSummary:
    n = clean["n"]
    robust = list(clean["correct"])
    credits: dict[str, int] = defaultdict(int)
    for cell in group:
        name = cell["attack"].get("name") or cell["attack"]["attack"]
        for index, outcome in enumerate(cell["outcomes"]):
            if outcome == BROKEN and robust[index]:
                credits[name] += 1
            if outcome == BROKEN:
                robust[index] = 0
    count = sum(robust)
    names = [c["attack"].get("name") or c["attack"]["attack"] for c in group]
    decisive = [name for name in names if credits.get(name, 0) > 0]
    threat = group[0]["threat"]
    return ThreatSummary(
        threat=threat,
        label=threat_label(threat),
        robust_accuracy=count / n,
        ci95=wilson_interval(count, n),
        best_known_attack=decisive[-1] if decisive else None,
        attacks=names,
        breaks={name: credits.get(name, 0) for name in names},
    )


def _add_non_adaptive_flags(cells: list[dict[str, Any]]) -> None:
    """A preprocessor defense attacked only by transfer attacks at a threat (norm, eps) is not
    evaluated at that threat: flag those transfer cells."""
    adaptive = {
        _threat_key(cell["threat"])
        for cell in cells
        if cell["threat"].get("access", "white-box") != "transfer"
    }
    for cell in cells:
        if (
            cell["threat"].get("access") == "transfer"
            and _threat_key(cell["threat"]) not in adaptive
        ):
            cell["flags"].append(sanity.non_adaptive_flag())


def _add_black_box_flags(cells: list[dict[str, Any]], clean: dict[str, Any]) -> None:
    """Gradient masking shows as weaker attacks winning. Per threat (norm, eps, targeted,
    space), the samples every white-box gradient attack left robust are compared with what each
    gradient-free or transfer attack broke."""
    n = clean["n"]
    tolerance = max(1, round(0.01 * n))
    correct = {i for i, ok in enumerate(clean["correct"]) if ok}
    robust: dict[tuple[Any, ...], set[int]] = {}
    for cell in cells:
        threat = cell["threat"]
        if threat.get("access", "white-box") == "white-box" and cell.get("uses_gradients", True):
            key = _threat_key(threat)
            broken = {i for i, outcome in enumerate(cell["outcomes"]) if outcome == BROKEN}
            robust[key] = robust.get(key, correct) - broken
    for cell in cells:
        threat = cell["threat"]
        transfer = threat.get("access") == "transfer"
        if not transfer and cell.get("uses_gradients", True):
            continue
        survivors = robust.get(_threat_key(threat))
        if survivors is None:
            continue
        broken = {i for i, outcome in enumerate(cell["outcomes"]) if outcome == BROKEN}
        count = len(broken & survivors)
        if count > tolerance:
            kind = "white-box" if transfer else "gradient"
            cell["flags"].append(sanity.black_box_flag(cell, kind, count))


def _threat_key(threat: dict[str, Any]) -> tuple[Any, ...]:
    return (threat["norm"], threat["eps"], bool(threat.get("targeted")), threat.get("space"))


def _add_eps_curve_flags(cells: list[dict[str, Any]]) -> None:
    curves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        threat = cell["threat"]
        key = json.dumps(
            [
                cell["attack"]["attack"],
                cell["attack"].get("name"),
                cell["attack"]["params"],
                threat["norm"],
                threat["targeted"],
                threat.get("access", "white-box"),
            ],
            sort_keys=True,
        )
        curves[key].append(cell)
    for curve in curves.values():
        if len(curve) < 2:
            continue
        points = [(c["threat"]["eps"], c["robust_accuracy"]) for c in curve]
        flags = sanity.eps_curve_flags(points, curve[0]["n"])
        for cell in curve:
            if cell["threat"]["eps"] in flags:
                cell["flags"].append(flags[cell["threat"]["eps"]])


def load_run(run_dir: str | Path) -> RunSummary:
    run_dir = Path(run_dir)
    if not (run_dir / "cells.jsonl").exists():
        raise UserError(
            "RUN_DIR", f"{run_dir} has no cells.jsonl", "pass a directory written by `run`"
        )
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return summarize_records(run_dir, ResultsStore(run_dir / "cells.jsonl").read(), meta)
