"""The membership task: plan one unit per reference-model set and per audit, run them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from robustbench_cl.data import load_dataset
from robustbench_cl.engine.config import MatrixConfig
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.engine.task import Unit, register_task
from robustbench_cl.privacy.membership import (
    make_membership_attack,
)
from robustbench_cl.tasks.membership.audit import MembershipAudit
from robustbench_cl.tasks.membership.report import _privacy, membership_table
from robustbench_cl.tasks.membership.results import (
    MembershipEntry,
    MembershipRecord,
    MembershipReferencesRecord,
    _membership_entry,
)
from robustbench_cl.tasks.membership_plan import MembershipCell, MembershipConfig
from robustbench_cl.tasks.pairs import PairTask, check_models, pair_labels
from robustbench_cl.utils import stable_hash


@dataclass(frozen=True)
class ReferenceSet:
    """The unit that trains (or loads) ``k`` reference models of a pair, shared by its attacks
    that need that many at that IN fraction."""

    cell: MembershipCell
    k: int
    in_fraction: float


@register_task("membership")
class MembershipTask(PairTask):
    """Membership-inference columns: does each (model, defense) leak its training set?"""

    order = 10

    record_types = ("membership_references", "membership")
    record_models: ClassVar[dict[str, Any]] = {
        "membership_references": MembershipReferencesRecord,
        "membership": MembershipRecord,
    }
    section_model: ClassVar[Any] = list[MembershipEntry]
    template = Path(__file__).parent.parent / "templates" / "membership.html.j2"
    anchor = "privacy"
    title = "Privacy"

    config_fields = {"membership": (list[MembershipConfig], Field(default_factory=list))}

    @classmethod
    def section(cls, config: MatrixConfig) -> Any:
        return (config.membership or None) if config.models else None

    @classmethod
    def check_config(cls, config: MatrixConfig) -> None:
        check_models(config, config.membership)

    def plan(self) -> list[Unit]:
        """Per pair: one unit per set of reference models its attacks share (trained and
        cached once; a Ray task of its own), then one unit per membership attack."""
        self._audit: MembershipAudit | None = None
        units = []
        for pair in self.pairs:
            pending: dict[tuple[int, float, str], str] = {}
            audits = []
            for cell in pair.membership:
                label = (
                    f"{cell.model.label} | {cell.defense.label} | membership {cell.config.label}"
                )
                needs = [pair.id]
                k, fraction = self.reference_plan(cell)
                # columns share reference models only when they train them the same way
                recipe = cell.config.recipe.model_dump() if cell.config.recipe else None
                if k:
                    shared = (k, fraction, stable_hash(recipe))
                    if shared not in pending:
                        key = {"references": pair.id, "k": k, "fraction": fraction}
                        if recipe is not None:  # (absent otherwise: earlier runs' ids hold)
                            key["recipe"] = recipe
                        ref_id = stable_hash(key)
                        pending[shared] = ref_id
                        ref_label = (
                            f"{cell.model.label} | {cell.defense.label} | {k} reference models"
                        )
                        units.append(Unit(ref_id, ref_label, key=ReferenceSet(cell, k, fraction)))
                    needs.append(pending[shared])
                audits.append(Unit(cell.id, label, key=cell, needs=tuple(needs)))
            units += audits
        return units

    def cost_kind(self, unit: Unit) -> str:
        """Training k reference models, or one attack's audit: a LiRA audit is never
        estimated from a LOSS one."""
        if isinstance(unit.key, ReferenceSet):
            return f"membership:references:{unit.key.k}"
        return f"membership:{unit.key.config.attack}"

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
        if isinstance(unit.key, ReferenceSet):
            cell, k, fraction = unit.key.cell, unit.key.k, unit.key.in_fraction
            self._release_other_pairs(cell.pair_id)
            _, _, trained = audit.references(cell, k, fraction, self.progress)
            self.progress.batch_done()
            return MembershipReferencesRecord(
                type="membership_references",
                id=unit.id,
                pair_id=cell.pair_id,
                k=k,
                in_fraction=fraction,
                references_trained=trained,
            )
        cell = unit.key
        pair = self.by_pair[cell.pair_id]
        self._release_other_pairs(pair.id)
        record = audit.run(cell, self.model(pair), self.progress)
        if len(unit.needs) > 1:  # trained by the references unit, loaded here
            record.references_trained = inputs[unit.needs[1]].references_trained
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
        labels = pair_labels(summary)
        records = summary.of("membership")
        audits = [
            _membership_entry(r, name)
            for pair_id, name in labels.items()
            for r in records
            if r.pair_id == pair_id
        ]
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
            rows.append({"row": entry["pair"], "measure": f"{name} AUC", "value": entry["auc"]})
            tpr = (entry.get("tpr_at_fpr") or {}).get("0.01")
            if tpr is not None:
                rows.append({"row": entry["pair"], "measure": f"{name} TPR@1%FPR", "value": tpr})
        return [dict(row, better="lower") for row in rows]

    @classmethod
    def flag_rows(cls, results: dict[str, Any]) -> list[dict[str, str]]:
        return cls.rows_of(
            results.get("membership") or [],
            lambda entry: f"{entry['pair']} | membership {entry['attack']['label']}",
        )

    @classmethod
    def summary_json(cls, summary: RunSummary) -> dict[str, Any] | None:
        """``membership``: per pair and attack, AUC, TPR at low FPR and the advantage."""
        entries = cls.summarize(summary, {}) or {}
        keys = ("auc", "auc_ci95", "tpr_at_fpr", "advantage")
        audits = [
            {"pair": e["pair"], "attack": e["attack"]["label"], **{k: e[k] for k in keys}}
            for e in entries.get("membership", [])
        ]
        return {"membership": audits} if audits else None

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        return _privacy(results)

    @classmethod
    def table(cls, summary: RunSummary):  # noqa: ANN206
        return membership_table(summary)
