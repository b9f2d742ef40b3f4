"""``export --format robustbench``: RobustBench leaderboard entries (``model_info`` JSON).

One file per (model, defense) pair that has a RobustBench-grade AutoAttack evaluation, at
``DATASET/THREAT/NAME.json`` as RobustBench's ``model_info`` folder lays them out. The fields are
RobustBench's (accuracies as strings in percent, ``eps`` as a string such as ``"8/255"``), plus
``n_examples`` (how many test samples the numbers are on) and ``threat_model``; what the run
cannot know (``link``, ``authors``, ``venue``, ``reported``, ``additional_data``) is left empty
or null for the user to fill in.

What counts as an AutoAttack number, as RobustBench's rules define it (anything else is a
one-line refusal naming why):

- the ``standard`` version at its full settings (100 iterations, 1 restart, 9 target classes,
  5,000 Square queries) and no ``budget`` override, on every clean-correct sample (first in its
  cascade, or no cascade), so its accuracy is AutoAttack's alone;
- white-box on the defended model (never a transfer or other non-adaptive cell), untargeted, in
  input space with bounds [0, 1], at the leaderboard's budget (cifar10 and cifar100: linf 8/255,
  l2 0.5; imagenet: linf 4/255);
- a deterministic model with gradients, checked by the run's sanity probes (a run without them
  is refused): a pair whose probes saw randomness or masked gradients is refused;
- on the leaderboard's test set size (10,000 for cifar, 5,000 for imagenet); a smaller
  evaluation is exported only with ``--allow-subset``, and its footnote says so.

Any other sanity flag of the pair or the cell marks the entry ``unreliable`` and is named in the
footnote; when another attack at the same threat model broke more, the worst case is
``external``, as RobustBench records the best known attack.
"""

from __future__ import annotations

from typing import Any

from robustbench_cl.engine.export import register_export
from robustbench_cl.engine.summary import in_255ths
from robustbench_cl.errors import UserError
from robustbench_cl.models.robustbench import THREAT_NAMES
from robustbench_cl.paths import slug

#: the standard version at the original's full settings
STANDARD = {"version": "standard", "steps": 100, "square_queries": 5000, "n_target_classes": 9}
#: the leaderboards: dataset -> (norm -> eps, test images RobustBench evaluates)
LEADERBOARDS = {
    "cifar10": ({"linf": 8 / 255, "l2": 0.5}, 10_000),
    "cifar100": ({"linf": 8 / 255}, 10_000),
    "imagenet": ({"linf": 4 / 255}, 5_000),
}
#: pair flags that make a number not RobustBench's (randomness, masked gradients)
REFUSING_FLAGS = (
    "randomized_without_eot",
    "nan_gradients",
    "zero_gradients",
    "autoattack_not_rand",
)


def _percent(rate: float) -> str:
    return f"{100 * rate:.2f}"


def _eps_string(threat: dict[str, Any]) -> str:
    """``"8/255"`` as RobustBench writes it, from the float (never the spelling the config
    used): whole 255ths for linf, else ``%g``."""
    return in_255ths(threat["eps"]) if threat["norm"] == "linf" else f"{threat['eps']:g}"


def _dataset(results: dict[str, Any], options: dict[str, str]) -> str:
    """``--dataset``, else the run's: ``cifar10:DIR`` is cifar10, a zoo spec names its own."""
    if options.get("dataset"):
        return options["dataset"]
    name = str((results["run"].get("data") or {}).get("name", ""))
    return name.partition(":")[0] if ":" in name else name


#: spec schemes whose target names an architecture, never a local path
_NAMED_SCHEMES = ("builtin", "torchvision", "timm")


def _architecture(spec: str) -> str:
    """The zoo's architecture for a ``robustbench:`` spec, ``scheme:name`` for a named one;
    else empty (a path-like spec is never written into an entry)."""
    from robustbench_cl.models.robustbench import find_entry
    from robustbench_cl.utils import parse_spec

    scheme, target, options = parse_spec(spec)
    entry = find_entry(target, options) if scheme == "robustbench" else None
    if entry is not None:
        return entry.architecture
    return f"{scheme}:{target}" if scheme in _NAMED_SCHEMES else ""


def _entry_name(pair: dict[str, Any], options: dict[str, str]) -> str:
    """The entry's name: ``--name``; the zoo entry's for a ``robustbench:`` spec; the model's
    config ``name``. A model known only by a path-like spec must be named."""
    from robustbench_cl.utils import parse_spec

    if options.get("name"):
        return options["name"]
    scheme, target, _ = parse_spec(pair["model_spec"])
    if scheme == "robustbench":
        model = target
    elif pair["model"] != pair["model_spec"] or scheme in _NAMED_SCHEMES:
        model = pair["model"]
    else:
        raise UserError(
            "--name",
            f"the model {scheme}:... has no name, and its spec may hold local paths",
            "give it a `name` in the config, or pass --name",
        )
    return model if pair["defense_id"] == "none" else f"{model} / {pair['defense']}"


def _why_not(cell: dict[str, Any], pair: dict[str, Any], dataset: str) -> str | None:
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
    budgets, _ = LEADERBOARDS[dataset]
    wanted = budgets.get(threat["norm"])
    if wanted is None:
        return f"RobustBench has no {dataset} {threat['norm']} leaderboard"
    if abs(float(threat["eps"]) - wanted) > 1e-9:
        return f"eps {_eps_string(threat)} is not the {dataset} {threat['norm']} leaderboard's"
    clean_correct = round(pair["clean_accuracy"] * pair["n"])
    if cell["attacked"] != clean_correct:
        return (
            f"AutoAttack attacked {cell['attacked']} of the {clean_correct} clean-correct "
            "samples (other attacks ran before it in a cascade), so its accuracy is not its own"
        )
    codes = [f["code"] for f in pair.get("flags", [])] + [f["code"] for f in cell["flags"]]
    refusing = [code for code in codes if code in REFUSING_FLAGS]
    if refusing:
        return f"the model is not a deterministic, gradient-bearing defense ({refusing[0]})"
    return None


def _test_set_note(data: dict[str, Any], n: int, leaderboard_n: int, dataset: str) -> str | None:
    """What makes the evaluated images other than the leaderboard's test set, or None."""
    split, selection = data.get("split", "test"), data.get("selection", "all")
    if split != "test":
        return f"evaluated on the {split} split, not the test set"
    if n != leaderboard_n or selection != "all":
        return f"evaluated on {n} of the {leaderboard_n} test images (selection: {selection})"
    if dataset == "imagenet":
        return "evaluated on 5000 imagenet images, not checked against RobustBench's list"
    return None


@register_export("robustbench")
def robustbench_entries(
    results: dict[str, Any], options: dict[str, str], config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """RobustBench leaderboard entries (`model_info` JSON), one per pair with a standard AutoAttack cell."""
    dataset = _dataset(results, options)
    if dataset not in LEADERBOARDS:
        raise UserError(
            "--dataset",
            f"RobustBench has no leaderboard for {dataset!r}",
            f"use one of {', '.join(LEADERBOARDS)} (--dataset names it when the run's data is a "
            "local copy under another name)",
        )
    if ((config or {}).get("engine") or {}).get("sanity_checks") is False:
        raise UserError(
            "--format",
            "the run had sanity_checks off: nothing checked that the model is deterministic and "
            "has gradients, as RobustBench requires",
            "rerun with the sanity checks on",
        )
    _, leaderboard_n = LEADERBOARDS[dataset]
    pairs = {pair["id"]: pair for pair in results.get("pairs", [])}
    data = results["run"].get("data") or {}
    files: dict[str, Any] = {}
    reasons: list[str] = []
    for cell in results.get("cells", []):
        if cell["attack"]["attack"] != "autoattack":
            continue
        pair = pairs[cell["pair_id"]]
        reason = _why_not(cell, pair, dataset)
        test_set = _test_set_note(data, cell["n"], leaderboard_n, dataset)
        if reason is None and test_set and not options.get("allow_subset"):
            reason = f"{test_set} (--allow-subset exports it with a footnote saying so)"
        if reason is not None:
            reasons.append(f"{pair['label']}, {cell['column']}: {reason}")
            continue
        threat = cell["threat"]
        group = [c for c in results["cells"] if c["group_id"] == cell["group_id"]]
        worst = min(c["robust_accuracy"] for c in group)
        notes = [f"{test_set}: not a leaderboard claim"] if test_set else []
        flags = [f["code"] for f in pair.get("flags", [])] + [f["code"] for f in cell["flags"]]
        flags += [f["code"] for c in group if c is not cell for f in c["flags"]]
        if flags:
            notes.append("robustbench-cl sanity flags: " + ", ".join(sorted(set(flags))))
        undefended = pair["defense_id"] == "none"
        entry = {
            "link": "",
            "name": _entry_name(pair, options),
            "authors": "",
            "additional_data": None,
            "number_forward_passes": 1 if undefended else None,
            "dataset": dataset,
            "venue": "",
            "architecture": _architecture(pair["model_spec"]),
            "eps": _eps_string(threat),
            "clean_acc": _percent(pair["clean_accuracy"]),
            "reported": "",
            "autoattack_acc": _percent(cell["robust_accuracy"]),
            "footnote": "; ".join(notes) or None,
            "unreliable": bool(flags),
            "threat_model": THREAT_NAMES[threat["norm"]],
            "n_examples": cell["n"],
            "evaluated_by": "robustbench-cl",
        }
        if worst < cell["robust_accuracy"]:
            entry["external"] = _percent(worst)
        name = slug(entry["name"]) if not options.get("name") else options["name"]
        path = f"{dataset}/{entry['threat_model']}/{name}.json"
        if path in files:
            raise UserError(
                "--name" if options.get("name") else "--format",
                f"two AutoAttack evaluations would both be written to {path}",
                "export one pair at a time with --name, or give the pairs distinct names",
            )
        files[path] = entry
    if not files:
        detail = reasons[0] if reasons else "the run has no AutoAttack cell"
        raise UserError(
            "--format",
            f"no RobustBench entry can be exported: {detail}",
            "evaluate with `attack: autoattack` at its defaults (version standard), white-box",
        )
    return files
