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

import time
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from safetensors.torch import save_file
from torch import nn

from robustbench_cl.attacks import Attack, make_attack
from robustbench_cl.attacks.base import Cost, apply_budget, probe_model, step_hook
from robustbench_cl.data.subset import class_histogram
from robustbench_cl.engine import sanity
from robustbench_cl.engine.metrics import wilson_interval
from robustbench_cl.engine.records import AttackRef, DefenseRef, ModelRef, Record, ThreatRef
from robustbench_cl.engine.results import attack_entry
from robustbench_cl.engine.results_models import Flag
from robustbench_cl.engine.summary import RunSummary, column_label, threat_label, threat_sort_key
from robustbench_cl.engine.task import Unit, register_task
from robustbench_cl.errors import under_field
from robustbench_cl.paths import inside
from robustbench_cl.tasks.pairs import (
    BROKEN,
    NOT_ATTACKED,
    ROBUST,
    Cell,
    Pair,
    PairTask,
    _targets,
)
from robustbench_cl.utils import derive_seed


@dataclass
class ShardPart:
    """What one shard of one cell produced; the parts of all shards merge into its record."""

    outcomes: torch.Tensor  # (shard length,) on the CPU: ROBUST, BROKEN or NOT_ATTACKED
    attacked: int
    cost: Cost
    wall: float
    examples: dict[str, torch.Tensor] | None
    probe: dict[str, Any]  # the convergence probe on this shard's share of the probe size


@register_task("classification")
class ClassificationTask(PairTask):
    """Clean and robust accuracy of every (model, defense) pair under every attack."""

    order = 0

    record_types = ("clean", "cell")

    def plan(self) -> list[Unit]:
        units = []
        self.cells = {}
        for pair in self.pairs:
            units.append(
                Unit(
                    pair.id, f"{pair.model.label} | {pair.defense.label} | clean", "clean", pair.id
                )
            )
            previous: dict[str, str] = {}
            for cell in pair.cells:
                self.cells[cell.id] = cell
                needs = [pair.id]
                if self.config.engine.cascade and cell.group_id in previous:
                    needs.append(previous[cell.group_id])
                previous[cell.group_id] = cell.id
                label = f"{cell.model.label} | {cell.defense.label} | {cell.attack.label} | {cell.threat.describe()}"
                units.append(Unit(cell.id, label, "cell", cell.id, tuple(needs), len(self.shards)))
        return units

    def alive(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> torch.Tensor:
        """The samples this cell attacks: clean-correct, and robust after the previous cell."""
        cell = self.cells[unit.key]
        clean = inputs[cell.pair_id]
        if len(unit.needs) > 1:
            previous = torch.tensor(inputs[unit.needs[1]]["outcomes"], device=self.device)
            return previous == ROBUST
        return torch.tensor(clean["correct"], dtype=torch.bool, device=self.device)

    def batches(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> int:
        if unit.kind == "clean":
            return 1
        cell = self.cells[unit.key]
        alive = self.alive(unit, inputs)
        size = self.batch_size
        if cell.attack.attack == "autoattack":
            attack = self.build_attack(cell)
            n_classes = inputs[cell.pair_id]["probes"]["n_classes"]
            self.progress.message(f"AutoAttack settings: {attack.resolved_settings(n_classes)}")
        return sum(-(-int(alive[a:b].sum()) // size) for a, b in self.shards)

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        if unit.kind == "clean":
            pair = self.by_pair[unit.key]
            record = self.clean_record(pair, self.model(pair))
            self.progress.batch_done()
            return record
        cell = self.cells[unit.key]
        clean = inputs[cell.pair_id]
        model = self.model(self.by_pair[cell.pair_id])
        attack = self.build_attack(cell)
        labels = self.cell_labels(cell, clean["probes"]["n_classes"])
        return self.attack_shard(cell, attack, model, labels, self.alive(unit, inputs), shard)

    # ------------------------------------------------------------------ results
    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any]:
        """``pairs`` (clean accuracy and worst case per threat) and ``cells``; always present."""
        pairs, cells = [], []
        for pair in summary.pairs:
            label = pair.label
            pair_cells = [_cell_entry(cell, label) for cell in pair.cells]
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
                    "normalization": pair.normalization,
                    "flags": pair.flags,
                    "worst_case": [
                        dict(asdict(w), ci95=list(w.ci95), label=w.label)
                        for w in sorted(pair.worst_case, key=lambda w: threat_sort_key(w.threat))
                    ],
                }
            )
        return {"pairs": pairs, "cells": cells}

    @classmethod
    def threat_models(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        return [cell["threat"] for cell in results.get("cells", [])]

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """Clean accuracy, each cell's robust accuracy and each worst case, per pair."""
        rows = []
        cells = {cell["id"]: cell for cell in results.get("cells", [])}
        for pair in results.get("pairs", []):
            label = pair["label"]
            rows.append({"row": label, "cell": "clean", "value": pair["clean_accuracy"]})
            ordered = sorted(
                (cells[i] for i in pair["cell_ids"] if i in cells),
                key=lambda c: threat_sort_key(c["threat"]),
            )
            for cell in ordered:
                rows.append(
                    {"row": label, "cell": cell["column"], "value": cell["robust_accuracy"]}
                )
            for worst in pair["worst_case"]:
                rows.append(
                    {
                        "row": label,
                        "cell": f"worst case {worst['label']}",
                        "value": worst["robust_accuracy"],
                    }
                )
        return [dict(row, better="higher") for row in rows]

    @classmethod
    def table(cls, summary: RunSummary):  # noqa: ANN206
        from robustbench_cl.report.table import matrix_table

        return matrix_table(summary) if summary.pairs else None

    def merge(self, unit: Unit, inputs: dict[str, dict[str, Any]], parts: list[Any]) -> dict:
        if unit.kind == "clean":
            return parts[0]
        cell = self.cells[unit.key]
        return self.finish_cell(cell, self.build_attack(cell), inputs[cell.pair_id], parts)

    # ------------------------------------------------------------------ clean pass
    def clean_record(self, pair: Pair, model: nn.Module) -> dict[str, Any]:
        start = time.perf_counter()
        # a model that does not take these inputs: one line naming both, not a torch traceback
        with under_field(f"model {pair.model.label}", replace=True):
            probe_model(model, self.inputs(*self.shards[0]))
        logits = torch.cat([self._predict(model, self.inputs(*shard)) for shard in self.shards])
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
        count = int(correct.sum())
        return {
            "type": "clean",
            "normalization": sanity.normalization_inside(model),
            "flags": flags,
            "id": pair.id,
            "model": pair.model.model_dump(),
            "defense": pair.defense.model_dump(),
            "defense_kind": self._defense_kind.get(pair.id, "training"),
            "membership_skipped": pair.membership_skipped,
            "n": self.n,
            "correct": correct.int().tolist(),
            "clean_accuracy": count / self.n,
            "clean_ci95": list(wilson_interval(count, self.n)),
            "probes": probes,
            "wall_time": time.perf_counter() - start,
        }

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
        target_key = {
            k: v for k, v in cell.threat.to_dict().items() if k not in ("access", "budget")
        }
        seed = derive_seed(self.config.seed, cell.pair_id, target_key, "targets")
        return _targets(self.y, n_classes, seed).to(self.device)

    def attack_shard(
        self,
        cell: Cell,
        attack: Attack,
        model: nn.Module,
        labels: torch.Tensor,
        alive: torch.Tensor,
        index: int,
    ) -> ShardPart:
        """Attack the alive samples of shard ``index``, in batches, under the shard's own seed.

        Shard 0 takes the cell's seed, so an unsharded run is seeded as it always was; the
        seed of a shard depends only on the cell and the shard, so the same shard gives the
        same outcomes in any process, in any order.
        """
        config = self.config
        first, last = self.shards[index]
        torch.manual_seed(
            derive_seed(config.seed, cell.id)
            if index == 0
            else derive_seed(config.seed, cell.id, "shard", index)
        )
        x, y, target = self.inputs(first, last), self.y[first:last], labels[first:last]
        todo = alive[first:last].nonzero().flatten()
        size = self.batch_size
        automatic = config.engine.batch_size == "auto"
        outcomes = torch.full((last - first,), NOT_ATTACKED, dtype=torch.long, device=self.device)
        cost = Cost()
        wall = 0.0
        wanted = config.engine.examples if self.images else 0
        kept: list[tuple[torch.Tensor, torch.Tensor]] = []
        transfer = cell.threat.access == "transfer"
        source = self._bare.get(cell.pair_id, model) if transfer else model
        rejudge = transfer or config.engine.precision == "bf16"
        with step_hook(self.progress.step):
            start = 0
            while start < len(todo):
                batch = todo[start : start + size]
                try:
                    with self._autocast(attack):
                        # every attacked sample is clean-correct on the evaluated model
                        known = torch.ones(len(batch), dtype=torch.bool, device=x.device)
                        result = attack(
                            source, x[batch], target[batch], cell.threat, clean_correct=known
                        )
                except torch.OutOfMemoryError:
                    if not automatic or len(batch) == 1:
                        raise
                    size = self._auto_batch = max(1, len(batch) // 2)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    self.progress.message(f"out of memory at batch {len(batch)}; now {size}")
                    continue
                start += len(batch)
                success = result.success
                if rejudge:  # transfer: judged on the defended model; bf16: judged in fp32
                    with torch.no_grad():
                        predicted = model(result.adv).argmax(1)
                    if cell.threat.targeted:
                        success = predicted == target[batch]
                    else:
                        success = predicted != y[batch]
                    result.cost.forward += len(batch)
                outcomes[batch] = torch.where(success, BROKEN, ROBUST)
                cost = cost + result.cost
                wall += result.wall_time
                if wanted > 0:  # once per batch, outside the attack's step loop
                    hits = success.nonzero().flatten()[:wanted]
                    kept.append((batch[hits], result.adv[hits].detach()))
                    wanted -= len(hits)
                self.progress.batch_done()
        examples = self._examples(model, x, y, target, first, kept)
        probe: dict[str, Any] = {}
        if config.engine.sanity_checks and not transfer:
            # each shard probes its share of the probe size (all of it when unsharded)
            quota = -(-config.engine.sanity_probe_size * (last - first) // self.n)
            survivors = (outcomes == ROBUST).nonzero().flatten()
            # spread over the survivors: the subset is in dataset order, often class order
            spread = torch.linspace(0, len(survivors) - 1, min(quota, len(survivors)))
            probed = survivors[spread.round().long().to(survivors.device)]
            probe = sanity.convergence_probe(attack, model, x[probed], target[probed], cell.threat)
        return ShardPart(outcomes.cpu(), len(todo), cost, wall, examples, probe)

    def finish_cell(
        self, cell: Cell, attack: Attack, clean: dict[str, Any], parts: list[ShardPart]
    ) -> dict[str, Any]:
        """Merge the shards' parts (in shard order) into the cell's record."""
        config = self.config
        n_classes = clean["probes"]["n_classes"]
        transfer = cell.threat.access == "transfer"
        outcomes = torch.cat([part.outcomes for part in parts])
        cost = sum((part.cost for part in parts), Cost())
        examples_path = self._save_examples(cell, [p.examples for p in parts if p.examples])
        flags: list[dict[str, str]] = []
        probe: dict[str, Any] = {}
        robust = int((outcomes == ROBUST).sum())
        if config.engine.sanity_checks:
            if attack.uses_gradients:
                flags += sanity.pair_flags(clean["probes"], n_classes)
            if cell.threat.norm == "linf":
                flags += sanity.full_range_flag(
                    clean["probes"].get("full_range_accuracy"), n_classes
                )
            if not transfer:  # a transfer attack is non-adaptive by design; it is flagged so
                merged = sanity.merge_probes([part.probe for part in parts])
                more, probe = sanity.convergence_verdict(merged, self.n, robust)
                flags += more
        clean_correct = sum(clean["correct"])
        broken_here = int((outcomes == BROKEN).sum())
        # dataset rows of the first samples this attack broke
        examples = self.indices[(outcomes == BROKEN).nonzero().flatten()[:8]].tolist()
        return {
            "type": "cell",
            "id": cell.id,
            "pair_id": cell.pair_id,
            "group_id": cell.group_id,
            "model": cell.model.model_dump(),
            "defense": cell.defense.model_dump(),
            "attack": {
                **cell.attack.model_dump(exclude={"threat"}),
                "settings": attack.resolved_settings(n_classes),
            },
            "threat": cell.threat.to_dict(),
            "adaptive": not transfer,
            "uses_gradients": attack.uses_gradients,
            "cascade": config.engine.cascade,
            "n": self.n,
            "attacked": sum(part.attacked for part in parts),
            "broken": broken_here,
            "robust_count": robust,
            "clean_accuracy": clean["clean_accuracy"],
            "robust_accuracy": robust / self.n,
            "robust_ci95": list(wilson_interval(robust, self.n)),
            # cumulative down the cascade: broken by this attack or an earlier one of its group
            "attack_success_rate": (clean_correct - robust) / clean_correct
            if clean_correct
            else 0.0,
            # this attack alone: the samples it broke first, over the clean-correct ones
            "broken_rate": broken_here / clean_correct if clean_correct else 0.0,
            "cost": cost.to_dict(),
            "wall_time": sum(part.wall for part in parts),
            "flags": flags,
            "sanity_probe": probe,
            "example_indices": examples,
            "examples": examples_path,
            "outcomes": outcomes.tolist(),
        }

    def _examples(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor,
        first: int,
        kept: list[tuple[torch.Tensor, torch.Tensor]],
    ) -> dict[str, torch.Tensor] | None:
        """A shard's kept adversarial examples with their predictions, on the CPU."""
        kept = [(index, adv) for index, adv in kept if len(index)]
        if not kept:
            return None
        index = torch.cat([i for i, _ in kept])
        adv = torch.cat([a for _, a in kept])
        with torch.no_grad():
            clean_pred = model(x[index]).argmax(1)
            adv_pred = model(adv).argmax(1)
        tensors = {
            # the dataset row of each example (not its position in the evaluated subset)
            "index": self.indices[(index + first).cpu()].to(index.device),
            "clean": x[index],
            "adversarial": adv,
            "label": y[index],
            "target": target[index],
            "clean_prediction": clean_pred,
            "adversarial_prediction": adv_pred,
        }
        return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def _save_examples(self, cell: Cell, parts: list[dict[str, torch.Tensor]]) -> str | None:
        """Keep a few successful adversarial examples for the report, under ``artifacts/``."""
        if not parts:
            return None
        wanted = self.config.engine.examples
        tensors = {k: torch.cat([p[k] for p in parts])[:wanted] for k in parts[0]}
        relative = f"artifacts/examples/{cell.id}.safetensors"
        path = inside(self.run_dir, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))
        return relative


def _cell_entry(cell: dict[str, Any], pair_label: str) -> dict[str, Any]:
    attack = cell["attack"]
    entry = {
        "id": cell["id"],
        "pair_id": cell["pair_id"],
        "group_id": cell["group_id"],
        "pair": pair_label,
        "attack": attack_entry(attack),
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
        "broken_rate": _broken_rate(cell),
        "cost": {key: int(cell["cost"].get(key, 0)) for key in ("forward", "backward", "queries")},
        "wall_time": float(cell["wall_time"]),
        "flags": [{"code": f["code"], "message": f["message"]} for f in cell["flags"]],
        "examples": cell.get("examples"),
    }
    return entry


def _broken_rate(cell: dict[str, Any]) -> float:
    """Samples this attack broke first over the clean-correct ones (older records lack it)."""
    if cell.get("broken_rate") is not None:
        return cell["broken_rate"]
    clean_correct = round(cell["clean_accuracy"] * cell["n"])
    return cell["broken"] / clean_correct if clean_correct else 0.0


# ---------------------------------------------------------------------- cells.jsonl
class CleanRecord(Record):
    """A pair's clean pass: per-sample correctness and the gradient/randomisation probes."""

    type: Literal["clean"]
    model: ModelRef
    defense: DefenseRef
    defense_kind: str | None = None
    membership_skipped: list[dict[str, Any]] | None = None
    n: int = Field(..., ge=0)
    correct: list[int]
    clean_accuracy: float = Field(..., ge=0.0, le=1.0)
    clean_ci95: list[float]
    probes: dict[str, Any]
    normalization: str | None = None
    flags: list[Flag] = []


class CellRecord(Record):
    """One attack cell: per-sample outcomes (1 robust, 0 broken here, -1 not attacked: wrong
    when clean or broken earlier in the cascade)."""

    type: Literal["cell"]
    pair_id: str
    group_id: str
    model: ModelRef
    defense: DefenseRef
    attack: AttackRef
    threat: ThreatRef
    adaptive: bool | None = None
    uses_gradients: bool | None = None
    cascade: bool
    n: int = Field(..., ge=0)
    attacked: int = Field(..., ge=0)
    broken: int = Field(..., ge=0)
    robust_count: int = Field(..., ge=0)
    clean_accuracy: float = Field(..., ge=0.0, le=1.0)
    robust_accuracy: float = Field(..., ge=0.0, le=1.0)
    robust_ci95: list[float]
    attack_success_rate: float
    broken_rate: float | None = None
    cost: dict[str, int]
    flags: list[Flag]
    sanity_probe: dict[str, Any]
    example_indices: list[int]
    examples: str | None
    outcomes: list[Annotated[int, Field(ge=-1, le=1)]]


ClassificationTask.record_models = {"clean": CleanRecord, "cell": CellRecord}
