"""Classification: the clean pass of every (model, defense) pair and the attack cascade.

A pair's clean outcome is computed once (its own unit). Cells that share a threat model (same
norm and eps) form a *group*; within a group, attacks run in config order and each only attacks
the samples still robust (the AutoAttack cascade): a cell's unit needs the pair's clean record
and the previous cell of its group, and attacks what that one left robust, so the last cell of a
group holds the worst case over its attacks. A cell records its per-sample outcomes: 1 robust,
0 broken by this attack, -1 not attacked (misclassified clean, or broken earlier in the
cascade). Its samples split into ``engine.shard_size`` shards, each attacked under its own seed
and each one Ray task; the driver merges them in shard order.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from robustbench_cl.attacks import Attack, make_attack
from robustbench_cl.attacks.base import apply_budget, probe_model
from robustbench_cl.data.subset import class_histogram
from robustbench_cl.defenses import make_defense
from robustbench_cl.engine.metrics import wilson_interval
from robustbench_cl.engine.summary import RunSummary, threat_sort_key
from robustbench_cl.engine.task import Unit, register_task
from robustbench_cl.tasks.classification import report, sanity
from robustbench_cl.tasks.classification.cells import AttackCells
from robustbench_cl.tasks.classification.records import CellRecord, CleanRecord
from robustbench_cl.tasks.classification.results import CellEntry, PairEntry
from robustbench_cl.tasks.classification.summary import pair_summaries, summarize
from robustbench_cl.tasks.pairs import (
    PAIR_FIELDS,
    ROBUST,
    Cell,
    Pair,
    PairTask,
    _targets,
    check_models,
)
from robustbench_cl.utils import derive_seed, stable_hash

if TYPE_CHECKING:
    from rich.table import Table

    from robustbench_cl.engine.config import MatrixConfig


@register_task("classification")
class ClassificationTask(AttackCells, PairTask):
    """Clean and robust accuracy of every (model, defense) pair under every attack."""

    order = 0

    record_types = ("clean", "cell")
    record_models: ClassVar[dict[str, Any]] = {"clean": CleanRecord, "cell": CellRecord}
    template = Path(__file__).parent.parent / "templates" / "classification.html.j2"
    title = "Robustness"
    anchor = "matrix"
    config_fields = PAIR_FIELDS
    section_hints = ("attacks",)

    @classmethod
    def requested(cls, config: MatrixConfig) -> bool:
        """Asked for by attacks; its clean pass also runs for membership and generation."""
        return bool(config.attacks)

    @classmethod
    def check_config(cls, config: MatrixConfig) -> None:
        check_models(config, config.attacks)

    def plan(self) -> list[Unit]:
        units = []
        for pair in self.pairs:
            units.append(
                Unit(pair.id, f"{pair.model.label} | {pair.defense.label} | clean", key=pair)
            )
            previous: dict[str, str] = {}
            for cell in pair.cells:
                needs = [pair.id]
                if self.config.engine.cascade and cell.group_id in previous:
                    needs.append(previous[cell.group_id])
                previous[cell.group_id] = cell.id
                label = f"{cell.model.label} | {cell.defense.label} | {cell.attack.label} | {cell.threat.describe()}"
                units.append(
                    Unit(cell.id, label, key=cell, needs=tuple(needs), shards=len(self.shards))
                )
        return units

    def alive(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> torch.Tensor:
        """The samples this cell attacks: clean-correct, and robust after the previous cell."""
        cell = unit.key
        clean = inputs[cell.pair_id]
        if len(unit.needs) > 1:
            previous = torch.tensor(inputs[unit.needs[1]].outcomes, device=self.device)
            return previous == ROBUST
        return torch.tensor(clean.correct, dtype=torch.bool, device=self.device)

    def cost_kind(self, unit: Unit) -> str:
        """The clean pass, or the attack with its settings and norm: one attack's cells cost
        about the same, and an AutoAttack cell is never estimated from an FGSM one."""
        if isinstance(unit.key, Pair):
            return "classification:clean"
        cell = unit.key
        settings = stable_hash({"params": cell.attack.params, "norm": cell.threat.norm})
        return f"classification:{cell.attack.attack}:{settings}"

    def batches(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> int:
        if isinstance(unit.key, Pair):
            return 1
        cell = unit.key
        alive = self.alive(unit, inputs)
        size = self.batch_size
        if cell.attack.attack == "autoattack":
            attack = self.build_attack(cell)
            n_classes = inputs[cell.pair_id].probes["n_classes"]
            self.progress.message(f"AutoAttack settings: {attack.resolved_settings(n_classes)}")
        return sum(-(-int(alive[a:b].sum()) // size) for a, b in self.shards)

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        if isinstance(unit.key, Pair):
            pair = unit.key
            record = self.clean_record(pair, self.model(pair))
            self.progress.batch_done()
            return record
        cell = unit.key
        clean = inputs[cell.pair_id]
        model = self.model(self.by_pair[cell.pair_id])
        attack = self.build_attack(cell)
        labels = self.cell_labels(cell, clean.probes["n_classes"])
        return self.attack_shard(cell, attack, model, labels, self.alive(unit, inputs), shard)

    # ------------------------------------------------------------------ results
    @classmethod
    def result_fields(cls) -> dict[str, tuple[Any, Any]]:
        """Two keys, kept at the top level of results.json since schema 1.0 (every reader of
        ``results["pairs"]`` and ``results["cells"]`` keeps working)."""
        return {"pairs": (list[PairEntry], ...), "cells": (list[CellEntry], ...)}

    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any]:
        return summarize(summary)

    @classmethod
    def threat_models(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        return [cell["threat"] for cell in results.get("cells", [])]

    @classmethod
    def flag_rows(cls, results: dict[str, Any]) -> list[dict[str, str]]:
        return report.flag_rows(results)

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        return report.render(results, run_dir)

    @classmethod
    def table(cls, summary: RunSummary) -> Table | None:
        pairs = pair_summaries(summary)
        return report.matrix_table(summary, pairs) if pairs else None

    @classmethod
    def summary_json(cls, summary: RunSummary) -> dict[str, Any] | None:
        return report.summary_json(pair_summaries(summary))

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """Clean accuracy, each cell's robust accuracy and each worst case, per pair."""
        rows = []
        cells = {cell["id"]: cell for cell in results.get("cells", [])}
        for pair in results.get("pairs", []):
            name = pair["label"]
            rows.append({"row": name, "measure": "clean", "value": pair["clean_accuracy"]})
            ordered = sorted(
                (cells[i] for i in pair["cell_ids"] if i in cells),
                key=lambda c: threat_sort_key(c["threat"]),
            )
            for cell in ordered:
                rows.append(
                    {"row": name, "measure": cell["column"], "value": cell["robust_accuracy"]}
                )
            for worst in pair["worst_case"]:
                rows.append(
                    {
                        "row": name,
                        "measure": f"worst case {worst['label']}",
                        "value": worst["robust_accuracy"],
                    }
                )
        return [dict(row, better="higher") for row in rows]

    def merge(self, unit: Unit, inputs: dict[str, dict[str, Any]], parts: list[Any]) -> dict:
        if isinstance(unit.key, Pair):
            return parts[0]
        cell = unit.key
        return self.finish_cell(cell, self.build_attack(cell), inputs[cell.pair_id], parts)

    # ------------------------------------------------------------------ clean pass
    def clean_record(self, pair: Pair, model: nn.Module) -> dict[str, Any]:
        # a model that does not take these inputs: one line naming both, not a torch traceback
        probe_model(model, self.inputs(*self.shards[0]), field=f"model {pair.model.label}")
        bare = self._bare.get(pair.id)
        defended = self._defense_kind.get(pair.id, "none") != "none"
        # the same model without its defense on the same samples, read once with the defended
        compare = self.config.engine.sanity_checks and bare is not None and defended
        outputs, plain = [], []
        for shard in self.shards:
            x = self.inputs(*shard)
            outputs.append(self._predict(model, x))
            if compare:
                plain.append(self._predict(bare, x))
        logits = torch.cat(outputs)
        n_classes = logits.shape[1]
        correct = logits.argmax(1) == self.y
        probes: dict[str, Any] = {"n_classes": n_classes}
        if self.config.engine.sanity_checks:
            positions, probe_x, probe_y = self.probe_inputs(self.config.engine.sanity_probe_size)
            probes["gradients"] = sanity.gradient_health(model, probe_x, probe_y)
            probes["randomization"] = sanity.randomization(model, probe_x)
            if any(c.threat.norm == "linf" and c.threat.bounds is not None for c in pair.cells):
                keep = correct[positions]
                bounds = next(c.threat.bounds for c in pair.cells if c.threat.bounds is not None)
                probes["full_range_accuracy"] = (
                    sanity.full_range_accuracy(model, probe_x[keep], probe_y[keep], bounds)
                    if bool(keep.any())
                    else None
                )
        flags = sanity.missing_classes_flag(class_histogram(self.y, int(self.data.n_classes)))
        if self.config.engine.sanity_checks and self.images:
            size = max(
                self.config.engine.sanity_probe_size,
                sanity.NORMALIZATION_PROBE_MIN,
                min(self.n, sanity.NORMALIZATION_PROBE_MAX),
            )
            if self.n >= sanity.NORMALIZATION_PROBE_MIN:  # else it would read inputs for nothing
                _, norm_x, norm_y = self.probe_inputs(size)
            else:
                norm_x, norm_y = probe_x[:0], probe_y[:0]
            probes["normalization"] = sanity.normalization_probe(model, norm_x, norm_y)
            flags += sanity.normalization_flag(probes["normalization"])
        if compare:
            undefended = int((torch.cat(plain).argmax(1) == self.y).sum()) / self.n
            probes["undefended_accuracy"] = undefended
            built = make_defense(pair.defense.defense, **pair.defense.params)
            name, settings, kind = pair.defense.label, built.settings(), built.kind
            if hasattr(built, "privacy_claim"):  # DP training: utility for privacy
                kind = "privacy"
            if pair.defense.defense == "none":  # a wrapped: model: its preprocessor
                name, settings, kind = "the wrapped preprocessor", {"spec": pair.model.spec}, ""
            flags += sanity.defense_degrades_clean_flag(
                int(correct.sum()) / self.n, undefended, name, settings, kind
            )
        count = int(correct.sum())
        return CleanRecord(
            type="clean",
            normalization=sanity.normalization_inside(model),
            flags=flags,
            id=pair.id,
            model=pair.model.model_dump(),
            defense=pair.defense.model_dump(),
            defense_kind=self._defense_kind.get(pair.id, "training"),
            membership_skipped=pair.membership_skipped,
            n=self.n,
            correct=correct.int().tolist(),
            clean_accuracy=count / self.n,
            clean_ci95=list(wilson_interval(count, self.n)),
            probes=probes,
        )

    # ------------------------------------------------------------------ one cell
    def build_attack(self, cell: Cell) -> Attack:
        attack: Attack = apply_budget(
            make_attack(cell.attack.attack, **cell.attack.params), cell.threat
        )
        if cell.threat.access == "transfer" and getattr(attack, "keep_best", False):
            # keep-best returns the first iterate that fools the source: barely adversarial,
            # it transfers poorly. A transfer attack uses the final, highest-loss iterate.
            attack.keep_best = False
        return attack

    def cell_labels(self, cell: Cell, n_classes: int) -> torch.Tensor:
        """The true labels, or for a targeted threat one target per sample, shared by every
        attack (white-box and transfer) of the threat, so its worst case compares like with like."""
        if not cell.threat.targeted:
            return self.y
        target_key = {k: v for k, v in cell.threat.key().items() if k not in ("access", "budget")}
        seed = derive_seed(self.config.seed, cell.pair_id, target_key, "targets")
        return _targets(self.y, n_classes, seed).to(self.device)
