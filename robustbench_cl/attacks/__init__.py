"""Attacks: one per file, all following ``attack(model, x, y, threat) -> AttackResult``."""

from __future__ import annotations

import inspect
from typing import Any

from robustbench_cl.attacks import autoattack, fgsm, pgd  # noqa: F401  (fill the registry)
from robustbench_cl.attacks.base import Attack, AttackResult, Cost
from robustbench_cl.errors import UserError
from robustbench_cl.registry import ATTACKS


def make_attack(name: str, **params: Any) -> Attack:
    """Build an attack by registry name (``pgd``) or external spec (``torchattacks:PGD``)."""
    if ":" in name:
        from robustbench_cl.attacks.external import make_external

        return make_external(name, params)
    cls = ATTACKS.get(name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise UserError(
            f"{name}.{unknown[0]}",
            f"unknown parameter for attack {name!r}",
            f"allowed: {', '.join(allowed) or 'none'}",
        )
    try:
        return cls(**params)
    except TypeError as error:  # a value of the wrong type that the constructor chokes on
        raise UserError(f"{name}.params", str(error), "check the parameter types") from None


__all__ = ["Attack", "AttackResult", "Cost", "make_attack"]
