"""The retrieval part of ``results.json``, its records in ``cells.jsonl`` and its sanity flags."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field

from robustbench_cl.engine.records import (
    AttackRef,
    Flag,
    ModelRef,
    Record,
    Threat,
    as_json,
    attack_entry,
    flag,
    label,
)
from robustbench_cl.engine.results_models import STRICT
from robustbench_cl.engine.summary import RunSummary, threat_dict, threat_label


def _retrieval_section(summary: RunSummary) -> dict[str, Any]:
    """Clean R@K per model and one entry per (source, attack, eps, target); the per-query
    outcomes stay in cells.jsonl."""
    clean = [
        {
            "id": r.id,
            "model": label(r.model),
            "model_spec": r.model.spec,
            "n_images": r.n_images,
            "n_captions": r.n_captions,
            "recall": r.recall,
        }
        for r in summary.of("retrieval_clean")
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
            "id": r.id,
            "fit_id": r.fit_id,
            "source": label(r.source),
            "target": label(r.target),
            "attack": attack_entry(r.attack),
            "threat": threat_dict(r.threat),
            "threat_label": threat_label(r.threat),
        }
        | {key: as_json(getattr(r, key)) for key in keys}
        for r in summary.of("retrieval")
    ]
    flags = retrieval_flags(cells)
    for cell in cells:
        cell["flags"] = flags[cell["id"]]
    return {"clean": clean, "cells": cells}


#: a universal perturbation's fit still improving this much in its last epoch is not converged
UAP_LAST_EPOCH_DROP = 0.05


def retrieval_flags(cells: list[dict[str, Any]]) -> dict[str, list[Flag]]:
    """Per retrieval cell id: a fit whose loss still fell in its last epoch (on its white-box
    cell), and an attack that uniform noise of the same size beats on every ASR@1 for the same
    source and target."""
    flags: dict[str, list[Flag]] = {cell["id"]: [] for cell in cells}
    noise = {
        (c["source"], c["target"], c["threat_label"]): c["asr"]
        for c in cells
        if c["attack"]["attack"] == "uniform-noise"
    }
    for cell in cells:
        if cell["attack"]["attack"] == "uniform-noise":
            continue
        history = (cell.get("fit") or {}).get("history") or []
        if len(history) >= 2 and cell["access"] == "white-box":  # once per fit, not per target
            before, last = history[-2], history[-1]
            if before - last > UAP_LAST_EPOCH_DROP * max(abs(before), 1e-12):
                flags[cell["id"]].append(
                    flag(
                        "uap_not_converged",
                        f"the fit's loss still fell by {(before - last) / abs(before):.0%} in "
                        f"its last epoch ({before:.4g} to {last:.4g}): more epochs would likely "
                        "make the perturbation stronger, so its ASR (and that of its transfer "
                        "cells) is a lower bound",
                    )
                )
        reference = noise.get((cell["source"], cell["target"], cell["threat_label"])) or {}
        # ASR@1 per side where both are defined (null when no query was correct before)
        pairs = [
            (reference[key]["asr"], entry["asr"])
            for key, entry in cell["asr"].items()
            if key.endswith("@1")
            and key in reference
            and None not in (reference[key]["asr"], entry["asr"])
        ]
        if pairs and all(noise_asr >= attack_asr for noise_asr, attack_asr in pairs):
            flags[cell["id"]].append(
                flag(
                    "noise_beats_attack",
                    "uniform noise of the same size fools retrieval at least as often on every "
                    "ASR@1: the attack is failing (step size, epochs, or a wrong loss sign)",
                )
            )
    return flags


# ---------------------------------------------------------------------- results.json
class RetrievalClean(BaseModel):
    model_config = STRICT
    id: str
    model: str
    model_spec: str
    n_images: int
    n_captions: int
    recall: dict[str, float]


class RetrievalAccess(Enum):
    WHITE_BOX = "white-box"
    TRANSFER = "transfer"


class RetrievalAsr(BaseModel):
    asr: float | None
    broken: int
    previously_correct: int
    ci95: list[Any] | None


class RetrievalCell(BaseModel):
    model_config = STRICT
    id: str
    fit_id: str
    source: str
    target: str
    attack: dict[str, Any]
    threat: dict[str, Any]
    threat_label: str
    access: RetrievalAccess
    recall: dict[str, float]
    asr: dict[str, RetrievalAsr]
    delta_linf: float
    word: str | None
    fit: dict[str, Any]
    perturbation: str
    examples: list[dict[str, Any]]
    example_images: str | None
    flags: list[Flag]
    """
    sanity flags (docs/sanity-checks.md)
    """


class RetrievalSection(BaseModel):
    """
    Image-text retrieval under universal perturbations: clean R@K per model, and per (source, attack, eps, target) R@K and ASR@K over the previously-correct queries.
    """

    model_config = STRICT
    clean: list[RetrievalClean]
    cells: list[RetrievalCell]


# ---------------------------------------------------------------------- cells.jsonl
class RetrievalCleanRecord(Record):
    """A target model's clean image-text retrieval: R@K and per-query correctness."""

    type: Literal["retrieval_clean"]
    model: ModelRef
    n_images: int = Field(..., ge=0)
    n_captions: int = Field(..., ge=0)
    recall: dict[str, float]
    correct: dict[str, dict[str, list[int]]]
    """per direction (``tr``, ``ir``) and k: 1 where the query retrieves a match in its top k"""


class RetrievalFitRecord(Record):
    """A universal perturbation fitted on one source model, saved in the run directory."""

    type: Literal["retrieval_fit"]
    perturbation: str
    word: str | None
    forward: int = Field(..., ge=0)
    backward: int = Field(..., ge=0)


class RetrievalRecord(Record):
    """One fitted perturbation judged on one target: R@K and ASR@K over the correct queries."""

    type: Literal["retrieval"]
    fit_id: str
    source: ModelRef
    target: ModelRef
    attack: AttackRef
    threat: Threat
    access: Literal["white-box", "transfer"]
    recall: dict[str, float]
    asr: dict[str, dict[str, Any]]
    outcomes: dict[str, dict[str, list[int]]]
    delta_linf: float
    word: str | None
    fit: dict[str, Any]
    perturbation: str
    examples: list[dict[str, Any]]
    example_images: str | None
