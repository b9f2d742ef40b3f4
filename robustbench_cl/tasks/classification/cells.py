"""One attack cell: its shards attacked in batches, and the merge of the shards' parts into the
cell's record (per-sample outcomes, cost, sanity flags and kept examples)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import nn

from robustbench_cl.attacks import Attack
from robustbench_cl.attacks.base import Cost, step_hook
from robustbench_cl.attacks.journal import ComponentJournal, forget
from robustbench_cl.attacks.minimum_norm import MinimumNormAttack
from robustbench_cl.engine.metrics import wilson_interval
from robustbench_cl.paths import inside
from robustbench_cl.tasks.classification import sanity
from robustbench_cl.tasks.classification.records import CellRecord
from robustbench_cl.tasks.pairs import BROKEN, NOT_ATTACKED, ROBUST, Cell
from robustbench_cl.utils import derive_seed, seeded

if TYPE_CHECKING:
    from robustbench_cl.tasks.pairs import PairTask

    _Base = PairTask
else:
    _Base = object


@dataclass
class ShardPart:
    """What one shard of one cell produced; the parts of all shards merge into its record."""

    outcomes: torch.Tensor  # (shard length,) on the CPU: ROBUST, BROKEN or NOT_ATTACKED
    attacked: int
    cost: Cost
    seconds: float  # in the attack's calls (what the report's cost table shows)
    examples: dict[str, torch.Tensor] | None
    probe: dict[str, Any]  # the convergence probe on this shard's share of the probe size
    #: a minimum-norm attack's smallest adversarial norm per sample (NaN: not attacked; inf:
    #: none found), else None
    min_norms: torch.Tensor | None = None


class AttackCells(_Base):
    """The attack side of the classification task (mixed into it): a shard of a cell, and the
    merge of a cell's shards into its record."""

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
        # shard 0 takes the cell's seed, so an unsharded cell is seeded as it always was
        seed = (
            derive_seed(config.seed, cell.id)
            if index == 0
            else derive_seed(config.seed, cell.id, "shard", index)
        )
        with seeded(seed):
            x, y, target = self.inputs(first, last), self.y[first:last], labels[first:last]
            todo = alive[first:last].nonzero().flatten()
            size = self.batch_size
            automatic = config.engine.batch_size == "auto"
            outcomes = torch.full(
                (last - first,), NOT_ATTACKED, dtype=torch.long, device=self.device
            )
            cost = Cost()
            seconds = 0.0
            wanted = config.engine.examples if self.images else 0
            kept: list[tuple[torch.Tensor, torch.Tensor]] = []
            transfer = cell.threat.access == "transfer"
            source = self._bare.get(cell.pair_id, model) if transfer else model
            # bf16: only an attack that ran under autocast is judged again in fp32 (AutoAttack
            # never does, and keeps its own verdict)
            rejudge = transfer or (config.engine.precision == "bf16" and attack.supports_bf16)
            # the norms are the attacked model's: a transfer (or bf16-rejudged) cell keeps none
            minimum_norm = isinstance(attack, MinimumNormAttack) and not rejudge
            min_norms = (
                torch.full((last - first,), float("nan"), dtype=torch.float64)
                if minimum_norm
                else None
            )
            with step_hook(self.progress.step):
                start = 0
                while start < len(todo):
                    batch = todo[start : start + size]
                    if hasattr(attack, "journal"):  # an ensemble: its components' outcomes kept
                        attack.journal = ComponentJournal(self._journal(cell), first + batch)
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
                    if min_norms is not None:  # once per batch, outside the step loop
                        min_norms[batch.cpu()] = attack.last_norms.detach().double().cpu()
                    cost = cost + result.cost
                    # with the seconds of components a resumed AutoAttack took from its journal
                    seconds += result.wall_time + getattr(attack, "journaled_seconds", 0.0)
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
                probe = sanity.convergence_probe(
                    attack, model, x[probed], target[probed], cell.threat
                )
            return ShardPart(outcomes.cpu(), len(todo), cost, seconds, examples, probe, min_norms)

    def finish_cell(
        self, cell: Cell, attack: Attack, clean: dict[str, Any], parts: list[ShardPart]
    ) -> dict[str, Any]:
        """Merge the shards' parts (in shard order) into the cell's record."""
        config = self.config
        n_classes = clean.probes["n_classes"]
        transfer = cell.threat.access == "transfer"
        outcomes = torch.cat([part.outcomes for part in parts])
        cost = sum((part.cost for part in parts), Cost())
        examples_path = self._save_examples(cell, [p.examples for p in parts if p.examples])
        forget(self._journal(cell))  # its record is about to be kept
        flags: list[dict[str, str]] = []
        probe: dict[str, Any] = {}
        robust = int((outcomes == ROBUST).sum())
        if config.engine.sanity_checks:
            if attack.uses_gradients:
                flags += [
                    f
                    for f in sanity.pair_flags(clean.probes, n_classes)
                    # an attack that averages its gradients over draws (AutoAttack rand) is EOT
                    if not (f["code"] == "randomized_without_eot" and attack.averages_draws)
                ]
            if cell.threat.norm == "linf":
                flags += sanity.full_range_flag(clean.probes.get("full_range_accuracy"), n_classes)
            if not transfer:  # a transfer attack is non-adaptive by design; it is flagged so
                merged = sanity.merge_probes([part.probe for part in parts])
                more, probe = sanity.convergence_verdict(merged, self.n, robust)
                flags += more
        clean_correct = sum(clean.correct)
        broken_here = int((outcomes == BROKEN).sum())
        # dataset rows of the first samples this attack broke
        examples = self.indices[(outcomes == BROKEN).nonzero().flatten()[:8]].tolist()
        return CellRecord(
            type="cell",
            id=cell.id,
            pair_id=cell.pair_id,
            group_id=cell.group_id,
            model=cell.model.model_dump(),
            defense=cell.defense.model_dump(),
            attack={
                **cell.attack.model_dump(exclude={"threat"}),
                "settings": attack.resolved_settings(n_classes, cell.threat),
            },
            threat=cell.threat.to_dict(),
            adaptive=not transfer,
            uses_gradients=attack.uses_gradients,
            cascade=config.engine.cascade,
            n=self.n,
            attacked=sum(part.attacked for part in parts),
            broken=broken_here,
            robust_count=robust,
            clean_accuracy=clean.clean_accuracy,
            robust_accuracy=robust / self.n,
            robust_ci95=list(wilson_interval(robust, self.n)),
            # cumulative down the cascade: broken by this attack or an earlier one of its group
            attack_success_rate=(clean_correct - robust) / clean_correct if clean_correct else 0.0,
            # this attack alone: the samples it broke first, over the clean-correct ones
            broken_rate=broken_here / clean_correct if clean_correct else 0.0,
            cost=cost.to_dict(),
            attack_seconds=sum(part.seconds for part in parts),
            flags=flags,
            sanity_probe=probe,
            example_indices=examples,
            examples=examples_path,
            outcomes=outcomes.tolist(),
            min_norms=_norms_list(parts),
        )

    def _journal(self, cell: Cell) -> Path:
        """Where an ensemble keeps its finished components' outcomes until the cell's record
        is kept (``partial/<cell id>/`` in the run directory)."""
        return inside(self.run_dir, "partial", cell.id)

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


def _norms_list(parts: list[ShardPart]) -> list[float | None] | None:
    """A minimum-norm cell's per-sample smallest norms, as the record keeps them: ``None``
    where the sample was not attacked or no adversarial example was found (its outcome says
    which)."""
    if any(part.min_norms is None for part in parts):
        return None
    norms = torch.cat([part.min_norms for part in parts])
    return [value if math.isfinite(value) else None for value in norms.tolist()]
