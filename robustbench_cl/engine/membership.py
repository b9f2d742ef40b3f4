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
from typing import Any

import torch
from torch import nn

from robustbench_cl.data import TensorData, load_dataset
from robustbench_cl.engine.membership_plan import MembershipCell, reference_recipe
from robustbench_cl.engine.pairs import PairTask
from robustbench_cl.engine.task import Unit, register_task
from robustbench_cl.errors import UserError
from robustbench_cl.privacy.membership import (
    ReferenceSet,
    make_membership_attack,
    reference_models,
    reference_signals,
)
from robustbench_cl.privacy.metrics import membership_metrics


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

    record_types = ("membership",)
    template = "tasks/membership.html.j2"
    title = "Privacy"

    @classmethod
    def section(cls, config):  # noqa: ANN001, ANN206
        return config.membership if config.models else None

    def plan(self) -> list[Unit]:
        self._audit: MembershipAudit | None = None
        self.cells = {}
        units = []
        for pair in self.pairs:
            for cell in pair.membership:
                self.cells[cell.id] = cell
                label = (
                    f"{cell.model.label} | {cell.defense.label} | membership {cell.config.label}"
                )
                units.append(Unit(cell.id, label, "membership", cell.id, (pair.id,)))
        return units

    def audit(self) -> MembershipAudit:
        if self._audit is None:
            evaluation = load_dataset(self.config.data.name, split=self.config.data.split)
            self._audit = MembershipAudit(
                self.train_data(), evaluation, self.config.seed, self.device
            )
        return self._audit

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        cell = self.cells[unit.key]
        pair = self.by_pair[cell.pair_id]
        audit = self.audit()
        if self._model is not None and self._model[0] != pair.id:
            audit.release(self._model[0])  # the previous pair's reference models
        record = audit.run(cell, self.model(pair), self.progress)
        self.progress.batch_done()
        return record

    def close(self) -> None:
        super().close()
        self._audit = None
