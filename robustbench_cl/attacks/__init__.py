"""Attacks: one per file, all following ``attack(model, x, y, threat) -> AttackResult``."""

from __future__ import annotations

from typing import Any

from robustbench_cl.attacks import (  # noqa: F401  (registry)
    autoattack,
    cpgc,
    embedding,
    fgsm,
    gcg,
    jailbreak,
    minimum_norm,
    pgd,
    random_search,
    textret,
    universal,
)
from robustbench_cl.attacks.base import Attack, AttackResult, Cost
from robustbench_cl.registry import ATTACKS


def make_attack(name: str, **params: Any) -> Attack:
    """Build an attack by registry name (``pgd``) or external spec (``torchattacks:PGD``)."""
    if ":" in name:
        from robustbench_cl.attacks.external import make_external

        return make_external(name, params)
    return ATTACKS.create(name, **params)


__all__ = ["Attack", "AttackResult", "Cost", "make_attack"]
