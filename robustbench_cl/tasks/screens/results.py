"""The screens part of ``results.json``, its record in ``cells.jsonl`` and its sanity flags."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from robustbench_cl.engine.records import Flag, Rate, Record, flag, label
from robustbench_cl.engine.results_models import STRICT
from robustbench_cl.engine.summary import RunSummary


def screen_rows(records: list[ScreenRecord]) -> list[dict[str, Any]]:
    """One row per (protector, eps, router): the table of the results and the report."""
    rows = []
    for record in records:
        for name, entry in record.routers.items():
            rows.append(
                {
                    "id": record.id,
                    "label": record.label,
                    "protector": record.protector["protector"],
                    "name": label(record.protector),
                    "eps": record.eps,
                    "router": name,
                    "access": entry["access"],
                    "plr": entry["plr"],
                    "plr_exact": entry["plr_exact"],
                    "zero_leak": entry["zero_leak"],
                    "tsr": entry["tsr"],
                    "by_field": entry["by_field"],
                    "psnr": float(np.mean(record.psnr)),
                    "ssim": float(np.mean(record.ssim)),
                    "linf": record.linf,
                    "training_seconds": (record.training or {}).get("wall_time"),
                }
            )
    return rows


def _screens_section(summary: RunSummary) -> dict[str, Any]:
    """Rows per (protector, eps, router); per router the change of every row from clean."""
    from robustbench_cl.privacy.metrics import LEAK_RATIO

    records = summary.of("screen")
    rows = screen_rows(records)
    for row in rows:
        clean = next(
            (r for r in rows if r["protector"] == "clean" and r["router"] == row["router"]), None
        )
        for key in ("plr", "tsr"):
            rates = (row[key]["rate"], clean[key]["rate"] if clean else None)
            row[f"{key}_change"] = None if None in rates else rates[0] - rates[1]
    for row, flags in zip(rows, screens_flags(rows)):
        row["flags"] = flags
    first = records[0]
    return {
        "data": first.data,
        "routers": {
            name: {"access": entry["access"], "settings": entry["settings"]}
            for name, entry in first.routers.items()
        },
        "rules": {
            "leaked": f"SequenceMatcher ratio > {LEAK_RATIO} between the true value and the "
            "best-matching text the router read",
            "exact": "the normalised true value appears in the normalised reading",
            "task": "the normalised task keyword appears in the router's reading (with or "
            "without spaces), or all its content words do",
        },
        "rows": rows,
        "examples": [{"label": r.label, "examples": r.examples} for r in records if r.examples],
    }


def screens_flags(rows: list[dict[str, Any]]) -> list[list[Flag]]:
    """Per screens row (in order): a trained protector that leaks more than uniform noise of
    the same eps, read by the same router."""
    noise = {(row["router"], row["eps"]): row for row in rows if row["protector"] == "noise"}
    flags: list[list[Flag]] = []
    for row in rows:
        reference = noise.get((row["router"], row["eps"]))
        if row["protector"] in ("clean", "noise") or reference is None:
            flags.append([])
            continue
        plr, noise_plr = row["plr"]["rate"], reference["plr"]["rate"]
        if plr is not None and noise_plr is not None and plr > noise_plr:
            tsr, noise_tsr = (r["tsr"]["rate"] or 0.0 for r in (row, reference))
            flags.append(
                [
                    flag(
                        "weaker_than_noise",
                        f"{row['router']} still reads {plr:.0%} of the personal data under this "
                        f"protector but {noise_plr:.0%} under uniform noise of the same eps "
                        f"(task success {tsr:.0%} vs {noise_tsr:.0%}): on privacy alone it does "
                        "worse than no optimisation",
                    )
                ]
            )
        else:
            flags.append([])
    return flags


# ---------------------------------------------------------------------- results.json
class RouterAccess(Enum):
    WHITE_BOX = "white-box"
    BLACK_BOX = "black-box"


class ScreensRouter(BaseModel):
    access: RouterAccess
    settings: dict[str, Any]


class ProtectorKind(Enum):
    CLEAN = "clean"
    NOISE = "noise"
    PGD = "pgd"
    BLACKOUT = "blackout"
    DUALTAP = "dualtap"


class ScreensRow(BaseModel):
    model_config = STRICT
    id: str
    label: str
    protector: ProtectorKind
    name: str
    eps: float | None
    router: str
    access: RouterAccess
    plr: Rate
    plr_exact: Rate
    zero_leak: Rate
    tsr: Rate
    by_field: dict[str, Rate]
    psnr: float
    ssim: float
    linf: float = Field(..., ge=0.0)
    training_seconds: float | None
    plr_change: float | None
    tsr_change: float | None
    flags: list[Flag]
    """
    sanity flags (docs/sanity-checks.md)
    """


class ScreensSection(BaseModel):
    model_config = STRICT
    data: dict[str, Any]
    routers: dict[str, ScreensRouter]
    rules: dict[str, str]
    rows: list[ScreensRow]
    examples: list[dict[str, Any]]


# ---------------------------------------------------------------------- cells.jsonl
class ScreenRecord(Record):
    """One protector at one eps over the test screens: per-router, per-screen, per-field
    outcomes and the image quality of the protected screens."""

    type: Literal["screen"]
    protector: dict[str, Any]
    label: str
    eps: float | None
    data: dict[str, Any]
    screens: list[str]
    routers: dict[str, Any]
    psnr: list[float]
    ssim: list[float]
    linf: float
    training: dict[str, Any] | None
    examples: list[dict[str, Any]]
