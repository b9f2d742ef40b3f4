"""The audit data of a run (members, non-members, RMIA's population) and the reference models
of each pair, trained or loaded once and shared by the audits of the pair."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustbench_cl.data import TensorData
from robustbench_cl.defenses import make_defense
from robustbench_cl.errors import UserError
from robustbench_cl.privacy.epsilon import epsilon_lower_bound, one_run_epsilon, one_run_guesses
from robustbench_cl.privacy.membership import (
    OneRunAudit,
    ReferenceSet,
    make_membership_attack,
    one_run_target,
    one_run_training_set,
    reference_models,
    reference_signals,
)
from robustbench_cl.privacy.metrics import membership_metrics
from robustbench_cl.tasks.membership.results import MembershipRecord
from robustbench_cl.tasks.membership_plan import MembershipCell, reference_recipe
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
        self._references: dict[tuple[Any, ...], tuple[list[nn.Module], torch.Tensor, int]] = {}

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
        recipe = cell.config.recipe.model_dump() if cell.config.recipe else None
        key = (cell.pair_id, k, fraction, stable_hash(recipe))
        if key not in self._references:
            recipe = reference_recipe(cell.model, cell.defense, cell.config.recipe)
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

    def privacy_claim(self, cell: MembershipCell, n: int | None = None) -> dict[str, Any] | None:
        """The (epsilon, delta) the pair's defense claims for training on ``n`` examples (the
        members, by default), if it claims any."""
        built = make_defense(cell.defense.defense, **cell.defense.params)
        claim = getattr(built, "privacy_claim", None)
        return claim(n or len(self.train)).to_dict() if callable(claim) else None

    def run(self, cell: MembershipCell, model: nn.Module, progress) -> dict[str, Any]:  # noqa: ANN001
        attack = make_membership_attack(cell.config.attack, **cell.config.params)
        claim = self.privacy_claim(cell)
        delta = claim["delta"] if claim else 0.0
        if isinstance(attack, OneRunAudit):
            return self.run_one(cell, attack, claim, delta, progress)
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
            shifts = getattr(attack, "shifts", 0)
            references = reference_signals(
                models,
                inside,
                audited,
                self.x,
                self.y,
                z_index if use_z else None,
                views=attack.views if shifts else None,
            )
        population = None
        if attack.uses_population and len(z_index):
            population = (self.x[z_index].to(self.device), self.y[z_index].to(self.device))
        scores = attack.score(model, x, y, references, population, is_member.to(self.device))
        metrics = membership_metrics(scores, is_member, seed=self.seed)
        epsilon = dict(
            epsilon_lower_bound(scores.detach().cpu(), is_member, delta, seed=self.seed),
            method="two-split",
            certified=False,  # one model's examples on a fixed split are not independent trials
        )
        return _record(
            cell,
            attack,
            scores,
            is_member,
            metrics,
            epsilon,
            claim,
            reference_models=k,
            reference_in_fraction=fraction,
            offline=bool(k) and not getattr(attack, "online", True),
            references_trained=trained,
            population_z=len(z_index) if population is not None else 0,
        )

    def run_one(
        self,
        cell: MembershipCell,
        attack: OneRunAudit,
        claim: dict[str, Any] | None,
        delta: float,
        progress,  # noqa: ANN001
    ) -> MembershipRecord:
        """The one-run canary audit: train once with the canaries, guess, bound epsilon."""
        recipe = reference_recipe(cell.model, cell.defense, cell.config.recipe)
        assert recipe is not None  # checked when the config was expanded
        n_classes = int(self.y.max()) + 1
        index, labels, included = attack.draw(self.y, n_classes, self.seed)
        x, y = one_run_training_set(self.train.x, self.train.y, self.x, index, labels, included)
        claim = self.privacy_claim(cell, len(y))  # the model trained here, on len(y) examples
        delta = claim["delta"] if claim else delta
        progress.message(f"one-run audit: training {cell.model.label} + {cell.defense.label}")
        # a seed no reference model of this run has (they take seed * 1000 + 0..k-1)
        model, trained = one_run_target(recipe, x, y, self.seed * 1000 + 999, self.device)
        scores = attack.score(model, self.x[index].to(self.device), labels.to(self.device))
        scores = scores.detach().cpu()
        r, v = one_run_guesses(scores, included, attack.k_plus, attack.k_minus)
        metrics = membership_metrics(scores, included, seed=self.seed)
        epsilon_lb = one_run_epsilon(attack.canaries, r, v, delta, attack.p)
        epsilon = {
            "method": "one-run",
            "certified": True,  # every canary was included independently at random
            "epsilon_lb": epsilon_lb,
            "epsilon_point": None,
            "epsilon_interval": None,
            "delta": delta,
            "confidence": 1 - attack.p,
            "canaries": attack.canaries,
            "guesses": r,
            "correct": v,
            "max_certifiable": one_run_epsilon(attack.canaries, r, r, delta, attack.p),
        }
        return _record(
            cell,
            attack,
            scores,
            included,
            metrics,
            epsilon,
            claim,
            reference_models=0,
            reference_in_fraction=None,
            offline=False,
            references_trained=int(trained),
            population_z=0,
        )


def _record(
    cell: MembershipCell,
    attack: Any,
    scores: torch.Tensor,
    members: torch.Tensor,
    metrics: dict[str, Any],
    epsilon: dict[str, Any],
    claim: dict[str, Any] | None,
    **references: Any,
) -> MembershipRecord:
    """One audit's record: the pair, the attack as it ran, per-sample scores and membership,
    the metrics and the epsilon bound; ``references`` says how reference models were used."""
    return MembershipRecord(
        type="membership",
        id=cell.id,
        pair_id=cell.pair_id,
        model=cell.model.model_dump(),
        defense=cell.defense.model_dump(),
        attack=_attack_ref(cell, attack),
        **references,
        **metrics,
        scores=scores.detach().cpu().tolist(),
        members=members.int().tolist(),
        epsilon_audit=epsilon,
        privacy=claim,
    )


def _attack_ref(cell: MembershipCell, attack: Any) -> dict[str, Any]:
    """The column's attack as configured and as it ran (its settings after scoring: RMIA's
    tuned ``a``)."""
    return {
        "attack": cell.config.attack,
        "name": cell.config.name,
        "params": cell.config.params,
        "settings": attack.settings(),
    }
