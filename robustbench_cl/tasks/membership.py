"""Membership-inference columns of the matrix: audit each (model, defense) for training-set leakage.

Members are drawn from the split the models were trained on (``data.train_split``), non-members
from the evaluation split (``data.split``), ``n`` of each, by a seeded permutation. The rest of the
evaluation split is RMIA's population z. Reference models (LiRA, RMIA) are trained like the pair's
model: the builtin recipe on a random subset of train + evaluation data, then the pair's training
defense on the same subset; they are cached, and shared by every attack of the pair with the same
number of reference models. By default each subset is as large as the target's training set
(``in_fraction`` = |train| / |train + evaluation|, 0.8 on digits), so that reference models
mimic the target: with LiRA's usual halves, the smaller reference training sets make online
LiRA miscalibrated against a target trained on 80% of the data (measured: AUC 0.479 with
halves vs 0.569 with matched subsets, undefended digits-cnn, 180 + 180 examples).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from rich.table import Table
from torch import nn

from robustbench_cl.data import TensorData, load_dataset
from robustbench_cl.engine import sanity
from robustbench_cl.engine.records import AttackRef, DefenseRef, ModelRef, Record
from robustbench_cl.engine.results import attack_entry
from robustbench_cl.engine.results_models import STRICT, Attack, Flag, Interval, Probability
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.engine.task import Unit, register_task
from robustbench_cl.errors import UserError
from robustbench_cl.privacy.membership import (
    ReferenceSet,
    make_membership_attack,
    reference_models,
    reference_signals,
)
from robustbench_cl.privacy.metrics import membership_metrics
from robustbench_cl.report import plots
from robustbench_cl.report.table import percent
from robustbench_cl.tasks.membership_plan import MembershipCell, reference_recipe
from robustbench_cl.tasks.pairs import PairTask
from robustbench_cl.utils import stable_hash


class MembershipAudit:
    """Runs a pair's membership columns; reference models are built once per pair and K."""

    def __init__(self, train: TensorData, evaluation: TensorData, seed: int, device) -> None:  # noqa: ANN001
        if train.split == evaluation.split:
            raise UserError(
                "data.train_split",
                "membership needs members and non-members from different splits",
                "set data.split to test and data.train_split to train",
            )
        self.train, self.evaluation, self.seed, self.device = train, evaluation, seed, device
        self.x = torch.cat([train.x, evaluation.x])
        self.y = torch.cat([train.y, evaluation.y])
        self._references: dict[tuple[str, int], tuple[list[nn.Module], torch.Tensor, int]] = {}

    def split(self, n: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Population indices of the audited examples, their membership, and RMIA's z."""
        generator = torch.Generator().manual_seed(self.seed)
        members = torch.randperm(len(self.train), generator=generator)
        outsiders = torch.randperm(len(self.evaluation), generator=generator) + len(self.train)
        n = n or len(self.evaluation) // 2
        n = min(n, len(members), len(outsiders))
        audited = torch.cat([members[:n], outsiders[:n]])
        is_member = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
        return audited, is_member, outsiders[n:]

    def release_all_but(self, pair_id: str) -> None:
        for held in {key[0] for key in self._references} - {pair_id}:
            self.release(held)

    def release(self, pair_id: str) -> None:
        for key in [k for k in self._references if k[0] == pair_id]:
            del self._references[key]

    @property
    def target_fraction(self) -> float:
        """The share of the population the target models were trained on (members)."""
        return len(self.train) / len(self.y)

    def references(
        self, cell: MembershipCell, k: int, fraction: float, progress
    ) -> tuple[list[nn.Module], torch.Tensor, int]:  # noqa: ANN001
        key = (cell.pair_id, k, fraction)
        if key not in self._references:
            recipe = reference_recipe(cell.model, cell.defense)
            assert recipe is not None  # checked when the config was expanded
            progress.message(f"reference models for {cell.model.label} + {cell.defense.label}")
            self._references[key] = reference_models(
                recipe,
                self.x,
                self.y,
                k,
                self.seed,
                self.device,
                on_model=lambda done, total: progress.step(done, total),
                in_fraction=fraction,
            )
        return self._references[key]

    def run(self, cell: MembershipCell, model: nn.Module, progress) -> dict[str, Any]:  # noqa: ANN001
        start = time.perf_counter()
        attack = make_membership_attack(cell.config.attack, **cell.config.params)
        audited, is_member, z_index = self.split(cell.config.n)
        x, y = self.x[audited].to(self.device), self.y[audited].to(self.device)
        references: ReferenceSet | None = None
        trained = 0
        k = int(getattr(attack, "reference_models", 0)) if attack.uses_references else 0
        fraction = None
        if k:
            fraction = getattr(attack, "in_fraction", None) or self.target_fraction
            models, inside, trained = self.references(cell, k, fraction, progress)
            fraction = float(inside[:, 0].float().mean())  # after clamping to >= 1 IN and OUT
            use_z = attack.uses_population and len(z_index) > 0
            references = reference_signals(
                models, inside, audited, self.x, self.y, z_index if use_z else None
            )
        population = None
        if attack.uses_population and len(z_index):
            population = (self.x[z_index].to(self.device), self.y[z_index].to(self.device))
        scores = attack.score(model, x, y, references, population, is_member.to(self.device))
        metrics = membership_metrics(scores, is_member, seed=self.seed)
        return {
            "type": "membership",
            "id": cell.id,
            "pair_id": cell.pair_id,
            "model": cell.model.model_dump(),
            "defense": cell.defense.model_dump(),
            "attack": {
                "attack": cell.config.attack,
                "name": cell.config.name,
                "params": cell.config.params,
                "settings": attack.settings(),
            },
            "reference_models": k,
            "reference_in_fraction": fraction,
            "offline": bool(k) and not getattr(attack, "online", True),
            "references_trained": trained,
            "population_z": len(z_index) if population is not None else 0,
            **metrics,
            "scores": scores.detach().cpu().tolist(),
            "members": is_member.int().tolist(),
            "wall_time": time.perf_counter() - start,
        }


@register_task("membership")
class MembershipTask(PairTask):
    """Membership-inference columns: does each (model, defense) leak its training set?"""

    order = 10

    record_types = ("membership_references", "membership")
    template = Path(__file__).parent / "templates" / "membership.html.j2"
    anchor = "privacy"
    title = "Privacy"

    @classmethod
    def section(cls, config):  # noqa: ANN001, ANN206
        return config.membership if config.models else None

    def plan(self) -> list[Unit]:
        """Per pair: one unit per set of reference models its attacks share (trained and
        cached once; a Ray task of its own), then one unit per membership attack."""
        self._audit: MembershipAudit | None = None
        self.cells = {}
        self.reference_sets: dict[str, tuple[MembershipCell, int, float]] = {}
        units = []
        for pair in self.pairs:
            pending: dict[tuple[int, float], str] = {}
            audits = []
            for cell in pair.membership:
                self.cells[cell.id] = cell
                label = (
                    f"{cell.model.label} | {cell.defense.label} | membership {cell.config.label}"
                )
                needs = [pair.id]
                k, fraction = self.reference_plan(cell)
                if k:
                    if (k, fraction) not in pending:
                        ref_id = stable_hash({"references": pair.id, "k": k, "fraction": fraction})
                        pending[(k, fraction)] = ref_id
                        self.reference_sets[ref_id] = (cell, k, fraction)
                        ref_label = (
                            f"{cell.model.label} | {cell.defense.label} | {k} reference models"
                        )
                        units.append(Unit(ref_id, ref_label, "references", ref_id))
                    needs.append(pending[(k, fraction)])
                audits.append(Unit(cell.id, label, "membership", cell.id, tuple(needs)))
            units += audits
        return units

    def reference_plan(self, cell: MembershipCell) -> tuple[int, float]:
        """How many reference models the cell's attack needs, and their IN fraction."""
        attack = make_membership_attack(cell.config.attack, **cell.config.params)
        if not attack.uses_references:
            return 0, 0.0
        k = int(getattr(attack, "reference_models", 0))
        fraction = getattr(attack, "in_fraction", None) or self.audit().target_fraction
        return k, float(fraction)

    def audit(self) -> MembershipAudit:
        if getattr(self, "_audit", None) is None:
            evaluation = load_dataset(self.config.data.name, split=self.config.data.split)
            self._audit = MembershipAudit(
                self.train_data(), evaluation, self.config.seed, self.device
            )
        return self._audit

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        audit = self.audit()
        if unit.kind == "references":
            cell, k, fraction = self.reference_sets[unit.key]
            self._release_other_pairs(cell.pair_id)
            _, _, trained = audit.references(cell, k, fraction, self.progress)
            self.progress.batch_done()
            return {
                "type": "membership_references",
                "id": unit.id,
                "pair_id": cell.pair_id,
                "k": k,
                "in_fraction": fraction,
                "references_trained": trained,
            }
        cell = self.cells[unit.key]
        pair = self.by_pair[cell.pair_id]
        self._release_other_pairs(pair.id)
        record = audit.run(cell, self.model(pair), self.progress)
        if len(unit.needs) > 1:  # trained by the references unit, loaded here
            record["references_trained"] = inputs[unit.needs[1]]["references_trained"]
        self.progress.batch_done()
        return record

    def _release_other_pairs(self, pair_id: str) -> None:
        """Reference models of the pairs before this one are no longer needed."""
        if self._audit is not None:
            self._audit.release_all_but(pair_id)

    def close(self) -> None:
        super().close()
        self._audit = None

    # ------------------------------------------------------------------ results
    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        audits = [_membership_entry(r, p.label) for p in summary.pairs for r in p.membership]
        return {"membership": audits} if audits else None

    @classmethod
    def data_fingerprint(
        cls, results: dict[str, Any], config: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """Members from the training split, non-members from the evaluation split, each audit's
        counts, and the seed (the draw): not the classification subset."""
        data = (config or {}).get("data") or results["run"].get("data") or {}
        audits = {
            e["attack"]["label"]: [e.get("n_members"), e.get("n_nonmembers")]
            for e in results.get("membership") or []
        }
        return {
            "seed": results["run"].get("seed"),
            "name": data.get("name"),
            "split": data.get("split"),
            "train_split": data.get("train_split", "train"),
            "audits": audits,
        }

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """AUC and TPR at 1% FPR of each audit (lower: less leakage)."""
        rows = []
        for entry in results.get("membership") or []:
            name = entry["attack"]["label"]
            rows.append({"row": entry["pair"], "cell": f"{name} AUC", "value": entry["auc"]})
            tpr = (entry.get("tpr_at_fpr") or {}).get("0.01")
            if tpr is not None:
                rows.append({"row": entry["pair"], "cell": f"{name} TPR@1%FPR", "value": tpr})
        return [dict(row, better="lower") for row in rows]

    @classmethod
    def flag_rows(cls, section: list[dict[str, Any]]) -> list[dict[str, str]]:
        return cls.rows_of(
            section, lambda entry: f"{entry['pair']} | membership {entry['attack']['label']}"
        )

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        return _privacy(results)

    @classmethod
    def table(cls, summary: RunSummary):  # noqa: ANN206
        return membership_table(summary)


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
        "attack": attack_entry(attack),
        **{key: record.get(key) for key in keys},
    }
    entry["flags"] = sanity.membership_flags(entry)
    return entry


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


def membership_table(summary: RunSummary) -> Table | None:
    """Membership inference per (model, defense): AUC, TPR at low FPR, advantage."""
    rows = [(pair, record) for pair in summary.pairs for record in pair.membership]
    if not rows:
        return None
    alphas = sorted({a for _, r in rows for a in r["tpr_at_fpr"]}, key=float, reverse=True)
    n_out = rows[0][1]["n_nonmembers"]
    table = Table(
        title=f"membership inference ({rows[0][1]['n_members']} members / {n_out} non-members; "
        f"FPR resolution {100 / max(n_out, 1):.2g}%)",
        title_justify="left",
    )
    for name in ("model / defense", "attack", "AUC", "95% CI"):
        table.add_column(name, justify="left" if name in ("model / defense", "attack") else "right")
    for alpha in alphas:
        table.add_column(f"TPR@{100 * float(alpha):g}%FPR", justify="right")
    table.add_column("advantage", justify="right")
    table.add_column("refs", justify="right")
    for pair, record in rows:
        low, high = record["auc_ci95"]
        refs = record["reference_models"]
        table.add_row(
            pair.label,
            record["attack"].get("name") or record["attack"]["attack"],
            f"{record['auc']:.3f}",
            f"{low:.3f}-{high:.3f}",
            *[percent(record["tpr_at_fpr"][a]) for a in alphas],
            f"{record['advantage']:.3f}",
            f"{refs}{' off' if record['offline'] else ''}" if refs else "-",
        )
    for pair in summary.pairs:
        for skipped in pair.membership_skipped:
            table.add_row(
                pair.label, skipped["attack"], "n/a", "no recipe", *[""] * (len(alphas) + 2)
            )
    return table


# ---------------------------------------------------------------------- results.json
class MembershipEntry(BaseModel):
    """
    one membership-inference column for one (model, defense)
    """

    model_config = STRICT
    id: str
    pair_id: str
    pair: str
    attack: Attack
    n_members: int = Field(..., ge=0)
    n_nonmembers: int = Field(..., ge=0)
    fpr_resolution: float = Field(..., ge=0.0, le=1.0)
    auc: float = Field(..., ge=0.0, le=1.0)
    auc_ci95: Interval
    advantage: float = Field(..., ge=0.0, le=1.0)
    advantage_ci95: Interval
    tpr_at_fpr: dict[str, Probability]
    tpr_at_fpr_ci95: dict[str, Interval]
    bootstrap: int = Field(..., ge=0)
    fpr: list[Probability]
    tpr: list[Probability]
    reference_models: int = Field(..., ge=0)
    offline: bool
    population_z: int = Field(..., ge=0)
    wall_time: float = Field(..., ge=0.0)
    reference_in_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    flags: list[Flag]
    """
    sanity flags (docs/sanity-checks.md)
    """


MembershipTask.section_model = list[MembershipEntry]


# ---------------------------------------------------------------------- cells.jsonl
class MembershipReferencesRecord(Record):
    """The reference models of one (pair, k, IN fraction), trained or found in the cache."""

    type: Literal["membership_references"]
    pair_id: str
    k: int = Field(..., ge=0)
    in_fraction: float | None
    references_trained: int = Field(..., ge=0)


class MembershipRecord(Record):
    """One membership-inference audit: per-sample scores and membership, ROC and intervals."""

    type: Literal["membership"]
    pair_id: str
    model: ModelRef
    defense: DefenseRef
    attack: AttackRef
    reference_models: int = Field(..., ge=0)
    reference_in_fraction: float | None
    offline: bool
    references_trained: int = Field(..., ge=0)
    population_z: int = Field(..., ge=0)
    n_members: int = Field(..., ge=0)
    n_nonmembers: int = Field(..., ge=0)
    auc: float
    auc_ci95: list[float]
    advantage: float
    advantage_ci95: list[float]
    tpr_at_fpr: dict[str, float]
    tpr_at_fpr_ci95: dict[str, list[float]]
    fpr_resolution: float
    bootstrap: int
    fpr: list[float]
    tpr: list[float]
    scores: list[float]
    members: list[int]


MembershipTask.record_models = {
    "membership_references": MembershipReferencesRecord,
    "membership": MembershipRecord,
}
