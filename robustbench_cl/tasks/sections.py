"""What the tasks with their own models, defenses and attack columns (jailbreak, textret) share:
validating those lists of a section into built defenses and (attack, threat) columns, with the
one-line errors that name the section's field."""

from __future__ import annotations

from typing import Any

from robustbench_cl.attacks import make_attack
from robustbench_cl.attacks.base import apply_budget
from robustbench_cl.errors import UserError, under_field


def check_models(section_name: str, models: list[Any]) -> None:
    from robustbench_cl.models import check_spec

    for index, model in enumerate(models):
        with under_field(f"{section_name}.models[{index}].spec", replace=True):
            check_spec(model.spec)


def build_defenses(
    section_name: str, defenses: list[Any], problem: str, fix: str
) -> list[tuple[Any, Any]]:
    """``(config, built)`` per defense; one that does not declare the task is refused."""
    from robustbench_cl.defenses import make_defense

    built_defenses = []
    for index, defense in enumerate(defenses):
        with under_field(f"{section_name}.defenses[{index}]"):
            built = make_defense(defense.defense, **defense.params)
        if built.kind != "none" and section_name not in getattr(built, "tasks", ()):
            raise UserError(
                f"{section_name}.defenses[{index}]", f"{defense.defense} {problem}", fix
            )
        built_defenses.append((defense, built))
    return built_defenses


def build_columns(
    section_name: str,
    attacks: list[Any],
    family: type,
    problem: str,
    fix: str,
    defaults: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
    """One ``{config, built, threat}`` per (attack entry, eps): the attack must be of ``family``,
    support the threat, and be able to spend its budget (set on the attack, shared by the
    entry's eps values)."""
    columns = []
    for index, attack in enumerate(attacks):
        field = f"{section_name}.attacks[{index}]"
        with under_field(field):
            built = make_attack(attack.attack, **attack.params)
        if not isinstance(built, family):
            raise UserError(field, f"{attack.attack} {problem}", fix)
        for threat in attack.threat_models(f"{field}.threat", defaults):
            reason = built.supports(threat, section_name)
            if reason is not None:
                raise UserError(f"{field}.threat", reason, "change the attack or its threat")
            with under_field(f"{field}.threat"):
                apply_budget(built, threat)
            columns.append({"config": attack, "built": built, "threat": threat})
    return columns
