"""The classification numbers of a run, derived from its records (never re-run, only counted):
clean accuracy and the cells per (model, defense), the worst case over the attacks of each
threat model, and the flags across cells (the eps curve, non-adaptive transfer, a weaker attack
that wins)."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from robustbench_cl.engine.metrics import wilson_interval
from robustbench_cl.engine.records import attack_entry, label
from robustbench_cl.engine.results_models import Flag
from robustbench_cl.engine.summary import RunSummary, threat_dict, threat_label, threat_sort_key
from robustbench_cl.tasks.classification import sanity
from robustbench_cl.tasks.classification.records import CellRecord, CleanRecord
from robustbench_cl.tasks.pairs import BROKEN, NOT_ATTACKED


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
    """One (model, defense) row: ``model`` and ``defense`` are display names; ``cells`` are its
    typed cell records, with the flags found across cells added to their own."""

    model: str
    defense: str
    clean_accuracy: float
    clean_ci95: tuple[float, float]
    n: int
    cells: list[CellRecord] = field(default_factory=list)
    worst_case: list[ThreatSummary] = field(default_factory=list)
    id: str = ""
    model_spec: str = ""
    defense_id: str = ""
    defense_params: dict[str, Any] = field(default_factory=dict)
    membership_skipped: list[dict[str, str]] = field(default_factory=list)
    #: the input normalisation inside the model ("none", "imagenet", "mean/std"), if probed
    normalization: str | None = None
    #: flags of the pair's clean pass (missing classes, a normalisation mismatch)
    flags: list[dict[str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model} / {self.defense}"


def column_label(cell: CellRecord) -> str:
    """A cell's matrix column: its attack's label and its threat model's."""
    return f"{label(cell.attack)} {threat_label(cell.threat)}"


def _access(cell: CellRecord) -> str:
    return cell.threat.access.value


def _uses_gradients(cell: CellRecord) -> bool:
    return cell.uses_gradients is None or cell.uses_gradients  # older records: gradient attacks


def _broken(cell: CellRecord) -> set[int]:
    return {i for i, outcome in enumerate(cell.outcomes) if outcome == BROKEN}


def pair_summaries(summary: RunSummary) -> list[PairSummary]:
    """One :class:`PairSummary` per clean record of the run, with its cells (flags added
    across cells: the eps curve, non-adaptive transfer, weaker attacks winning)."""
    cleans: dict[str, CleanRecord] = {r.id: r for r in summary.of("clean")}
    cells: list[CellRecord] = summary.of("cell")
    pairs: list[PairSummary] = []
    for pair_id, clean in cleans.items():
        pair_cells = [
            c.model_copy(update={"flags": list(c.flags)}) for c in cells if c.pair_id == pair_id
        ]
        _add_eps_curve_flags(pair_cells)
        if clean.defense_kind == "preprocessor":
            _add_non_adaptive_flags(pair_cells)
        _add_black_box_flags(pair_cells, clean)
        _add_autoattack_version_flags(pair_cells, clean)
        entry = PairSummary(
            model=label(clean.model),
            defense=label(clean.defense),
            clean_accuracy=clean.clean_accuracy,
            clean_ci95=tuple(clean.clean_ci95),
            n=clean.n,
            cells=pair_cells,
            id=pair_id,
            model_spec=clean.model.spec,
            defense_id=clean.defense.defense,
            defense_params=dict(clean.defense.params),
            membership_skipped=list(clean.membership_skipped or []),
            normalization=clean.normalization,
            flags=[f.model_dump() for f in clean.flags],
        )
        groups: dict[str, list[CellRecord]] = defaultdict(list)
        for cell in pair_cells:
            groups[cell.group_id].append(cell)
        for group in groups.values():
            entry.worst_case.append(_worst_case(group, clean))
        pairs.append(entry)
    return pairs


def _worst_case(group: list[CellRecord], clean: CleanRecord) -> ThreatSummary:
    n = clean.n
    robust = list(clean.correct)
    credits: dict[str, int] = defaultdict(int)
    for cell in group:
        name = label(cell.attack)
        for index, outcome in enumerate(cell.outcomes):
            if outcome == BROKEN and robust[index]:
                credits[name] += 1
            if outcome == BROKEN:
                robust[index] = 0
    count = sum(robust)
    names = [label(c.attack) for c in group]
    decisive = [name for name in names if credits.get(name, 0) > 0]
    threat = threat_dict(group[0].threat)
    return ThreatSummary(
        threat=threat,
        label=threat_label(threat),
        robust_accuracy=count / n,
        ci95=wilson_interval(count, n),
        best_known_attack=decisive[-1] if decisive else None,
        attacks=names,
        breaks={name: credits.get(name, 0) for name in names},
    )


def _add_non_adaptive_flags(cells: list[CellRecord]) -> None:
    """A preprocessor defense attacked only by transfer attacks at a threat (norm, eps) is not
    evaluated at that threat: flag those transfer cells."""
    adaptive = {_threat_key(cell) for cell in cells if _access(cell) != "transfer"}
    for cell in cells:
        if _access(cell) == "transfer" and _threat_key(cell) not in adaptive:
            cell.flags.append(Flag(**sanity.non_adaptive_flag()))


def _add_autoattack_version_flags(cells: list[CellRecord], clean: CleanRecord) -> None:
    """A randomized model (declared, or two clean passes that disagree) evaluated with an
    AutoAttack version other than ``rand``: the original refuses to trust that number either."""
    randomness = clean.probes.get("randomization") or {}
    if not (randomness.get("declared") or randomness.get("observed")):
        return
    for cell in cells:
        version = cell.attack.settings.get("version")
        if cell.attack.attack == "autoattack" and version != "rand":
            cell.flags.append(Flag(**sanity.autoattack_version_flag(version)))


def _add_black_box_flags(cells: list[CellRecord], clean: CleanRecord) -> None:
    """Gradient masking shows as weaker attacks winning. Per threat (norm, eps, targeted,
    space), the samples every white-box gradient attack left robust are compared with what each
    gradient-free or transfer attack broke."""
    tolerance = max(1, round(0.01 * clean.n))
    correct = {i for i, ok in enumerate(clean.correct) if ok}
    robust: dict[tuple[Any, ...], set[int]] = {}
    for cell in cells:
        if _access(cell) == "white-box" and _uses_gradients(cell):
            key = _threat_key(cell)
            robust[key] = robust.get(key, correct) - _broken(cell)
    for cell in cells:
        transfer = _access(cell) == "transfer"
        if not transfer and _uses_gradients(cell):
            continue
        survivors = robust.get(_threat_key(cell))
        if survivors is None:
            continue
        count = len(_broken(cell) & survivors)
        if count > tolerance:
            kind = "white-box" if transfer else "gradient"
            cell.flags.append(Flag(**sanity.black_box_flag(cell, kind, count)))


def _threat_key(cell: CellRecord) -> tuple[Any, ...]:
    threat = cell.threat
    return (threat.norm.value, threat.eps, bool(threat.targeted), threat.space.value)


def _add_eps_curve_flags(cells: list[CellRecord]) -> None:
    curves: dict[str, list[CellRecord]] = defaultdict(list)
    for cell in cells:
        threat = cell.threat
        key = json.dumps(
            [
                cell.attack.attack,
                cell.attack.name,
                cell.attack.params,
                threat.norm.value,
                threat.targeted,
                threat.access.value,
            ],
            sort_keys=True,
        )
        curves[key].append(cell)
    for curve in curves.values():
        if len(curve) < 2:
            continue
        points = [(c.threat.eps, c.robust_accuracy) for c in curve]
        flags = sanity.eps_curve_flags(points, curve[0].n)
        for cell in curve:
            if cell.threat.eps in flags:
                cell.flags.append(Flag(**flags[cell.threat.eps]))


def summarize(summary: RunSummary) -> dict[str, Any]:
    """``pairs`` (clean accuracy and worst case per threat) and ``cells``; always present."""
    pairs, cells = [], []
    for pair in pair_summaries(summary):
        pair_cells = [_cell_entry(cell, pair.label) for cell in pair.cells]
        cells.extend(pair_cells)
        pairs.append(
            {
                "id": pair.id,
                "label": pair.label,
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
                "normalization": pair.normalization,
                "flags": pair.flags,
                "worst_case": [
                    dict(asdict(w), ci95=list(w.ci95), label=w.label)
                    for w in sorted(pair.worst_case, key=lambda w: threat_sort_key(w.threat))
                ],
            }
        )
    return {"pairs": pairs, "cells": cells}


def _cell_entry(cell: CellRecord, pair_label: str) -> dict[str, Any]:
    threat = threat_dict(cell.threat)
    return {
        "id": cell.id,
        "pair_id": cell.pair_id,
        "group_id": cell.group_id,
        "pair": pair_label,
        "attack": attack_entry(cell.attack),
        "column": column_label(cell),
        "threat": threat,
        "threat_label": threat_label(threat),
        "adaptive": cell.adaptive if cell.adaptive is not None else _access(cell) != "transfer",
        "cascade": bool(cell.cascade),
        "n": cell.n,
        "attacked": cell.attacked,
        "broken": cell.broken,
        "robust_count": cell.robust_count,
        "clean_accuracy": cell.clean_accuracy,
        "robust_accuracy": cell.robust_accuracy,
        "robust_ci95": list(cell.robust_ci95),
        "attack_success_rate": cell.attack_success_rate,
        "broken_rate": _broken_rate(cell),
        "cost": {key: int(cell.cost.get(key, 0)) for key in ("forward", "backward", "queries")},
        # seconds attacking (records before the loop timed units: their wall_time was that)
        "wall_time": float(
            cell.attack_seconds if cell.attack_seconds is not None else cell.wall_time
        ),
        "flags": [{"code": f.code, "message": f.message} for f in cell.flags],
        "examples": cell.examples,
        **({"min_norm": min_norm_entry(cell)} if cell.min_norms is not None else {}),
    }


#: the most steps of a minimum-norm cell's security curve kept in results.json
CURVE_POINTS = 100


def min_norm_entry(cell: CellRecord) -> dict[str, Any]:
    """The median smallest norm and the security curve of a minimum-norm cell. Robust at eps:
    clean-correct and no adversarial example found at a norm <= eps. The curve is a step
    function: its points are 0, the norms found (every one, or 100 evenly spaced by rank when
    there are more), the cell's eps and the larger of twice it and the largest norm found."""
    attacked = [i for i, outcome in enumerate(cell.outcomes) if outcome != NOT_ATTACKED]
    norms = [cell.min_norms[i] for i in attacked]
    found = sorted(value for value in norms if value is not None)
    ranked = found + [math.inf] * (len(norms) - len(found))
    median = statistics.median(ranked) if ranked else None
    clean_correct = round(cell.clean_accuracy * cell.n)
    complete = len(attacked) == clean_correct
    curve = None
    if complete:
        steps = found
        if len(found) > CURVE_POINTS:
            steps = [
                found[round(i * (len(found) - 1) / (CURVE_POINTS - 1))] for i in range(CURVE_POINTS)
            ]
        eps_cell = float(cell.threat.eps)
        points = sorted({0.0, eps_cell, max([2 * eps_cell] + found), *steps})
        broken = 0
        curve = []
        for eps in points:  # found is sorted: count the norms at or below each point once
            while broken < len(found) and found[broken] <= eps:
                broken += 1
            curve.append([eps, (len(norms) - broken) / cell.n])
    return {
        "median": median if median is None or math.isfinite(median) else None,
        "attacked": len(norms),
        "found": len(found),
        "complete": complete,
        "curve": curve,
    }


def _broken_rate(cell: CellRecord) -> float:
    """Samples this attack broke first over the clean-correct ones (older records lack it)."""
    if cell.broken_rate is not None:
        return cell.broken_rate
    clean_correct = round(cell.clean_accuracy * cell.n)
    return cell.broken / clean_correct if clean_correct else 0.0
