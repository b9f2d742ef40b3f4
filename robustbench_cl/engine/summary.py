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
    """The records of a run directory (in the order they were written) and its ``meta.json``."""

    run_dir: Path
    meta: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    def of(self, *types: str) -> list[dict[str, Any]]:
        """The run's records of these types, in the order they were written."""
        return [r for r in self.records if r["type"] in types]


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


def load_run(run_dir: str | Path) -> RunSummary:
    run_dir = Path(run_dir)
    if not (run_dir / "cells.jsonl").exists():
        raise UserError(
            "RUN_DIR", f"{run_dir} has no cells.jsonl", "pass a directory written by `run`"
        )
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return RunSummary(run_dir, meta, ResultsStore(run_dir / "cells.jsonl").read())
