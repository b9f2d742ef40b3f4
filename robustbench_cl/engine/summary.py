"""A run directory's records and metadata, read once: what every task summarises from.

Results are never re-run, only counted: each task turns its own record types
(:meth:`RunSummary.of`) into its results section. Threat labels and their order are shared by
every task that reports threat models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustbench_cl.engine.store import ResultsStore
from robustbench_cl.errors import UserError


@dataclass
class RunSummary:
    """The records of a run directory (in the order they were written, as stored) and its
    ``meta.json``. A task reads its records with :meth:`of`."""

    run_dir: Path
    meta: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    _typed: dict[int, Any] = field(default_factory=dict, repr=False)

    def of(self, *types: str) -> list[Any]:
        """The run's records of these types, in the order they were written, each an instance
        of its task's record model (``Task.record_models``; as stored, a dict, for a task that
        declares none)."""
        from robustbench_cl.engine.task import typed

        found = []
        for index, record in enumerate(self.records):
            if record["type"] in types:
                if index not in self._typed:
                    self._typed[index] = typed(record)
                found.append(self._typed[index])
        return found


def threat_dict(threat: Any) -> dict[str, Any]:
    """A threat model as results hold it: a record's typed threat dumped to JSON values."""
    return threat if isinstance(threat, dict) else threat.model_dump(mode="json")


def in_255ths(eps: float) -> str:
    """``12/255`` when ``eps`` is a whole number of 255ths (the pixel budgets of the field),
    else ``%g``."""
    steps = float(eps) * 255
    return f"{round(steps)}/255" if abs(steps - round(steps)) < 1e-6 else f"{float(eps):g}"


def eps_text(threat: Any) -> str:
    """A budget as a reader sees it: the fraction the config wrote (``8/255``), else ``%g``."""
    threat = threat_dict(threat)
    return threat.get("eps_label") or f"{threat['eps']:g}"


def threat_label(threat: Any) -> str:
    threat = threat_dict(threat)
    label = f"{threat['norm']} {eps_text(threat)}"
    label += " targeted" if threat.get("targeted") else ""
    access = threat.get("access", "white-box")
    return label + (f" {access}" if access != "white-box" else "")


NORM_ORDER = {"linf": 0, "l2": 1, "l1": 2, "l0": 3, "none": 4}


def threat_sort_key(threat: Any) -> tuple[Any, ...]:
    """Order threat models as a reader expects: linf before l2, untargeted first, eps rising."""
    threat = threat_dict(threat)
    return (
        threat.get("space", "input") != "input",
        NORM_ORDER.get(threat["norm"], 9),
        bool(threat.get("targeted")),
        threat["eps"],
        threat.get("access", "white-box") != "white-box",
    )


def load_run(run_dir: str | Path) -> RunSummary:
    run_dir = Path(run_dir)
    if not (run_dir / "cells.jsonl").exists():
        raise UserError(
            "RUN_DIR", f"{run_dir} has no cells.jsonl", "pass a directory written by `run`"
        )
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return RunSummary(run_dir, meta, ResultsStore(run_dir / "cells.jsonl").read())
