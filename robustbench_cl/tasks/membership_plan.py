"""Planning the membership columns of a (model, defense) pair: which attacks apply, their ids.

Kept apart from the audit (:mod:`robustbench_cl.tasks.membership`) so that the pair
expansion (:mod:`robustbench_cl.tasks.pairs`) can use it without importing the audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import nn

from robustbench_cl.data import TensorData
from robustbench_cl.defenses import make_defense
from robustbench_cl.engine.config import DefenseConfig, ModelConfig, StrictConfig
from robustbench_cl.errors import UserError, under_field
from robustbench_cl.models import parse_spec
from robustbench_cl.models.wrappers import Frozen
from robustbench_cl.privacy.membership import ReferenceRecipe, make_membership_attack
from robustbench_cl.utils import stable_hash, tensor_digest

#: bump when the audit's protocol changes, so that resumed runs do not reuse stale records
MEMBERSHIP_VERSION = 2


class MembershipConfig(StrictConfig):
    """A membership-inference column: ``loss``, ``lira``, ``rmia`` or ``art-blackbox``.

    ``n`` members (from ``data.train_split``) and ``n`` non-members (from ``data.split``) are
    audited; by default half the evaluation split, the other half being RMIA's population z.
    """

    attack: str
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    n: int | None = Field(default=None, ge=2)

    @property
    def label(self) -> str:
        return self.name or self.attack


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
