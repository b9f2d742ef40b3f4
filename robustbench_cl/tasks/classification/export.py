"""``export --format robustbench``: RobustBench leaderboard entries (``model_info`` JSON).

One file per (model, defense) pair that has a standard AutoAttack evaluation, at
``DATASET/THREAT/NAME.json`` as RobustBench's ``model_info`` folder lays them out. The fields are
RobustBench's (accuracies as strings in percent, ``eps`` as a string such as ``"8/255"``), plus
``n_examples`` (how many test samples the numbers are on) and ``threat_model``.

What counts as an AutoAttack number, as RobustBench's rules define it:

- the ``standard`` version at its full settings (100 iterations, 1 restart, 9 target classes,
  5,000 Square queries) and no ``budget`` override;
- white-box on the defended model (never a transfer or other non-adaptive cell), untargeted, in
  input space with bounds [0, 1], linf or l2;
- a deterministic model: a pair whose probes saw randomness, or whose AutoAttack cell was
  flagged for it, is refused (RobustBench lists only deterministic defenses).

``autoattack_acc`` is the AutoAttack cell's robust accuracy. In a cascade it counts the samples
robust to AutoAttack *and* to every attack before it at that threat model (the footnote says
which); when another attack of the threat model broke more, the worst case is ``external``, as
RobustBench records the best known attack.
"""

from __future__ import annotations

from typing import Any

from robustbench_cl.engine.export import register_export
from robustbench_cl.engine.summary import eps_text
from robustbench_cl.errors import UserError
from robustbench_cl.paths import slug

#: the standard version at the original's full settings
STANDARD = {"version": "standard", "steps": 100, "square_queries": 5000, "n_target_classes": 9}
THREAT_NAMES = {"linf": "Linf", "l2": "L2"}
#: pair flags that make a number not RobustBench's (randomness, masked gradients)
REFUSING_PAIR_FLAGS = ("randomized_without_eot", "nan_gradients", "zero_gradients")


def _percent(rate: float) -> str:
    return f"{100 * rate:.2f}"


def _why_not(cell: dict[str, Any], pair: dict[str, Any]) -> str | None:
    """Why this AutoAttack cell is not a RobustBench AutoAttack number, or None."""
    settings = cell["attack"]["settings"]
    different = {k: settings.get(k) for k, v in STANDARD.items() if settings.get(k) != v}
    if different:
        return f"not the standard AutoAttack at full settings ({different})"
    threat = cell["threat"]
    if any(value is not None for value in (threat.get("budget") or {}).values()):
        return f"its threat model overrides the budget ({threat['budget']})"
    if threat["access"] != "white-box" or not cell.get("adaptive", True):
        return f"a non-adaptive evaluation ({threat['access']})"
    if threat["targeted"] or threat["space"] != "input" or threat["bounds"] != [0.0, 1.0]:
        return "not an untargeted input-space evaluation in bounds [0, 1]"
    if threat["norm"] not in THREAT_NAMES:
        return f"RobustBench has no {threat['norm']} leaderboard"
    codes = [f["code"] for f in pair.get("flags", [])] + [f["code"] for f in cell["flags"]]
    refusing = [c for c in codes if c in REFUSING_PAIR_FLAGS or c == "autoattack_not_rand"]
    if refusing:
        return f"the model is not a deterministic, gradient-bearing defense ({refusing[0]})"
    return None


@register_export("robustbench")
def robustbench_entries(results: dict[str, Any], options: dict[str, str]) -> dict[str, Any]:
    """RobustBench leaderboard entries (`model_info` JSON), one per pair with a standard AutoAttack cell."""
    pairs = {pair["id"]: pair for pair in results.get("pairs", [])}
    dataset = options.get("dataset") or (results["run"].get("data") or {}).get("name", "")
    files: dict[str, Any] = {}
    reasons: list[str] = []
    for cell in results.get("cells", []):
        if cell["attack"]["attack"] != "autoattack":
            continue
        pair = pairs[cell["pair_id"]]
        reason = _why_not(cell, pair)
        if reason is not None:
            reasons.append(f"{pair['label']}, {cell['column']}: {reason}")
            continue
        threat = cell["threat"]
        group = [c for c in results["cells"] if c["group_id"] == cell["group_id"]]
        worst = min(c["robust_accuracy"] for c in group)
        before = [c["column"] for c in group[: group.index(cell)]]
        notes = []
        if before:
            notes.append(
                "AutoAttack ran after " + ", ".join(before) + " in a cascade: its accuracy "
                "counts the samples robust to them too"
            )
        kept = [f["code"] for f in pair.get("flags", [])] + [f["code"] for f in cell["flags"]]
        if kept:
            notes.append("robustbench-cl flags: " + ", ".join(sorted(set(kept))))
        entry = {
            "link": "",
            "name": pair["model"] if pair["defense_id"] == "none" else pair["label"],
            "authors": "",
            "additional_data": False,
            "number_forward_passes": 1,
            "dataset": dataset,
            "venue": "",
            "architecture": pair["model_spec"],
            "eps": eps_text(threat),
            "clean_acc": _percent(pair["clean_accuracy"]),
            "reported": "",
            "autoattack_acc": _percent(cell["robust_accuracy"]),
            "footnote": "; ".join(notes) or None,
            "threat_model": THREAT_NAMES[threat["norm"]],
            "n_examples": cell["n"],
            "evaluated_by": "robustbench-cl",
        }
        if worst < cell["robust_accuracy"]:
            entry["external"] = _percent(worst)
        name = options.get("name") or slug(pair["label"])
        files[f"{slug(dataset or 'data')}/{entry['threat_model']}/{name}.json"] = entry
    if not files:
        detail = reasons[0] if reasons else "the run has no AutoAttack cell"
        raise UserError(
            "--format",
            f"no RobustBench entry can be exported: {detail}",
            "evaluate with `attack: autoattack` at its defaults (version standard), white-box",
        )
    if options.get("name") and len(files) > 1:
        raise UserError("--name", f"the run has {len(files)} entries", "drop --name")
    return files
