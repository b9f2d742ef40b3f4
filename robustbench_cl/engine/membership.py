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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustbench_cl.data import TensorData
from robustbench_cl.defenses import make_defense
from robustbench_cl.engine.config import DefenseConfig, MembershipConfig, ModelConfig
from robustbench_cl.errors import UserError, under_field
from robustbench_cl.models import parse_spec
from robustbench_cl.models.wrappers import Frozen
from robustbench_cl.privacy.membership import (
    ReferenceRecipe,
    ReferenceSet,
    make_membership_attack,
    reference_models,
    reference_signals,
)
from robustbench_cl.privacy.metrics import membership_metrics
from robustbench_cl.utils import stable_hash, tensor_digest

#: bump when the audit's protocol changes, so that resumed runs do not reuse stale records
MEMBERSHIP_VERSION = 2


@dataclass
class MembershipCell:
    id: str
    pair_id: str
    model: ModelConfig
    defense: DefenseConfig
    config: MembershipConfig


def reference_recipe(model: ModelConfig, defense: DefenseConfig) -> ReferenceRecipe | None:
    """How to train a reference model like this pair's, or None when we do not know how."""
    from robustbench_cl.models.builtin import REFERENCE_RECIPES

    scheme, name = parse_spec(model.spec)[:2]
    if scheme != "builtin" or name not in REFERENCE_RECIPES:
        return None
    architecture, train_base, recipe = REFERENCE_RECIPES[name]
    built = make_defense(defense.defense, **defense.params)
    if built.kind not in ("none", "training"):
        return None

    def train(x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        base = train_base(x, y, seed)
        if built.kind == "none":
            return base
        subset = TensorData(
            f"reference-{seed}-{tensor_digest(x, y)}", "train", x, y, int(y.max()) + 1
        )
        return built.build(Frozen(base), f"{model.spec}#reference{seed}", subset)

    key = {
        "model": model.spec,
        "recipe": recipe,
        "defense": defense.defense,
        "version": built.version,
        "settings": built.settings(),
    }
    return ReferenceRecipe(key=key, architecture=architecture, train=train)


def expand_membership(
    configs: list[MembershipConfig],
    model: ModelConfig,
    defense: DefenseConfig,
    pair_id: str,
    seed: int,
) -> tuple[list[MembershipCell], list[dict[str, str]]]:
    """Validate every membership column for this pair and give each a stable id.

    A reference-model attack (LiRA, RMIA) on a pair without a reference recipe (a user model, a
    preprocessor defense) is not run; it is returned in the second list with the reason, so that
    reports show it as not applicable. :func:`check_membership_coverage` refuses a config where
    such an attack applies to no pair at all.
    """
    cells, skipped = [], []
    for index, config in enumerate(configs):
        with under_field(f"membership[{index}]"):
            attack = make_membership_attack(config.attack, **config.params)
        if attack.uses_references and reference_recipe(model, defense) is None:
            skipped.append(
                {
                    "attack": config.label,
                    "index": str(index),
                    "reason": f"no reference-model recipe for {model.spec} + {defense.defense}",
                }
            )
            continue
        key = {
            "pair": pair_id,
            "attack": config.attack,
            "settings": attack.settings(),
            "n": config.n,
            "version": MEMBERSHIP_VERSION,
        }
        cells.append(
            MembershipCell(stable_hash({**key, "seed": seed}), pair_id, model, defense, config)
        )
    return cells, skipped


def check_membership_coverage(configs: list[MembershipConfig], pairs: list) -> None:  # noqa: ANN001
    """Every membership column must run on at least one pair."""
    for index, config in enumerate(configs):
        if not any(cell.config is config for pair in pairs for cell in pair.membership):
            raise UserError(
                f"membership[{index}]",
                f"{config.attack} needs reference models trained like the audited model, and "
                "only builtin models with a training defense have a recipe",
                "use the loss or art-blackbox attack for these models",
            )


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
