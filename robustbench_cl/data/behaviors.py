"""Jailbreak behaviours (``behaviors:FILE.csv``) and benign prompts (``benign:FILE.csv``) from
a user's CSV files.

One row per harmful behaviour: the request (``goal``; HarmBench's ``Behavior`` and ``prompt``
are accepted too) and the affirmative ``target`` the attacker forces (AdvBench's column), with
an optional category (``category``, HarmBench's ``SemanticCategory`` or ``FunctionalCategory``).

The field's files read as they are published:

- JailbreakBench's ``Index,Goal,Target,Behavior,Category,Source``: the request is ``Goal``, the
  behaviour's id ``Behavior`` and its category ``Category``;
- HarmBench's ``Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID``
  keeps its targets in a separate JSON object (BehaviorID -> target):
  ``behaviors:FILE.csv?targets=FILE.json``. Only its standard rows are supported: a file with
  contextual or copyright rows is refused unless ``&only=standard`` keeps the standard ones.
The rows become the test split's harmful prompts. The utility and over-refusal columns come
from the built-in benign and borderline prompts (built-in models), or from the user's own
``benign`` file (:func:`load_benign`).
"""

from __future__ import annotations

import csv
from pathlib import Path

from robustbench_cl.data.chat import REFUSAL, ChatExample
from robustbench_cl.errors import UserError

GOAL_COLUMNS = ("goal", "behavior", "prompt")
TARGET_COLUMNS = ("target",)
CATEGORY_COLUMNS = ("category", "semanticcategory", "functionalcategory")


def _column(header: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((header[name] for name in names if name in header), None)


def _read_csv(
    name: str, field: str, fix: str
) -> tuple[Path, list[dict[str, str]], list[str], dict[str, str]]:
    """A CSV file's path, rows, column names, and ``{lower-case name: column name}``."""
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(field, f"{path} does not exist", fix)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            fields = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(field, f"{path} is not a readable CSV file ({error})") from None
    return path, rows, fields, {column.strip().lower(): column for column in fields if column}


def split_spec(spec: str, prefix: str = "behaviors:") -> tuple[str, dict[str, str]]:
    """``behaviors:FILE.csv?targets=FILE.json&only=standard`` -> (file, options)."""
    path, _, query = spec.removeprefix(prefix).partition("?")
    options = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
    return path, options


def _harmbench_targets(name: str, field: str) -> dict[str, str]:
    import json

    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(
            field, f"targets file {path} does not exist", "give HarmBench's targets JSON"
        )
    try:
        targets = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(field, f"{path} is not JSON ({error})") from None
    if not isinstance(targets, dict) or not all(isinstance(v, str) for v in targets.values()):
        raise UserError(field, f"{path} is not an object of BehaviorID -> target string")
    return targets


def load_behaviors(spec: str, field: str = "jailbreak.data.behaviors") -> list[ChatExample]:
    """The harmful test examples of ``behaviors:FILE.csv[?targets=FILE.json&only=standard]`` (or
    a bare path), in file order."""
    name, options = split_spec(spec)
    unknown = sorted(set(options) - {"targets", "only"})
    if unknown:
        raise UserError(
            field, f"unknown option {unknown[0]!r}", "use targets=FILE.json, only=standard"
        )
    path, rows, fields, header = _read_csv(name, field, "give a CSV file with goal,target columns")
    goal, target = _column(header, GOAL_COLUMNS), _column(header, TARGET_COLUMNS)
    category = _column(header, CATEGORY_COLUMNS)
    # JailbreakBench: Goal is the request, Behavior the id; HarmBench: BehaviorID is the id
    identity = header.get("behaviorid") or (
        header.get("behavior") if goal != header.get("behavior") else None
    )
    if "semanticcategory" in header:
        category = header["semanticcategory"]
    targets = None
    if "targets" in options:
        if "behaviorid" not in header:
            raise UserError(
                field, f"{path} has no BehaviorID column for targets=", "use HarmBench's CSV"
            )
        targets = _harmbench_targets(options["targets"], field)
    elif "behaviorid" in header and target is None:
        raise UserError(
            field,
            f"{path} is HarmBench's layout without targets",
            "add ?targets=FILE.json (HarmBench's optimizer targets, BehaviorID -> target)",
        )
    if goal is None or (target is None and targets is None):
        missing = "goal" if goal is None else "target"
        raise UserError(
            field,
            f"{path} has no {missing} column (columns: {', '.join(fields)})",
            "name the columns goal and target (AdvBench's); HarmBench keeps targets in a "
            "separate file: behaviors:FILE.csv?targets=FILE.json",
        )
    if not rows:
        raise UserError(field, f"{path} has no rows", "one behaviour per row under a header")
    functional, tags = header.get("functionalcategory"), header.get("tags")
    only = options.get("only")
    if only not in (None, "standard"):
        raise UserError(field, f"only={only!r}", "use only=standard")
    examples = []
    skipped = 0
    for line, row in enumerate(rows, start=2):
        kind = (row.get(functional) or "").strip().lower() if functional else ""
        tag = (row.get(tags) or "").lower() if tags else ""
        if kind in ("contextual", "copyright") or "context" in tag or "hash_check" in tag:
            if only == "standard":
                skipped += 1
                continue
            raise UserError(
                field,
                f"{path} line {line} is a {kind or 'contextual/copyright'} behaviour, which is "
                "not supported yet",
                "add only=standard to the spec (behaviors:FILE.csv?only=standard) to keep the "
                "standard rows",
            )
        request = (row.get(goal) or "").strip()
        key = (row.get(identity) or "").strip() if identity else ""
        if targets is not None:
            if key not in targets:
                raise UserError(field, f"{path} line {line}: BehaviorID {key!r} has no target")
            forced = targets[key].strip()
        else:
            forced = (row.get(target) or "").strip()
        if not request or not forced:
            raise UserError(field, f"{path} line {line}: an empty goal or target", "fill it in")
        label = (row.get(category) or "").strip() if category else ""
        examples.append(
            ChatExample(
                "harmful",
                "harmful",
                request,
                REFUSAL,
                target=forced,
                behavior=key or label or request,
                category=label or None,
            )
        )
    if not examples:
        raise UserError(field, f"{path} has no standard rows ({skipped} skipped)")
    return examples


INSTRUCTION_COLUMNS = ("instruction", "prompt", "goal", "question")
ANSWER_COLUMNS = ("answer", "expected", "response", "output")


def load_benign(spec: str, field: str = "jailbreak.data.benign") -> list[ChatExample]:
    """The benign test prompts of ``benign:FILE.csv`` (or a bare path), in file order: an
    ``instruction`` and its expected ``answer`` per row, matched as the built-in tasks are
    (the whole answer, surrounding space and a final full stop aside), with an optional
    ``kind``: ``benign`` (the default; utility) or ``borderline`` (a benign request that sounds
    harmful; over-refusal), and an optional ``task`` that groups the utility by task."""
    path, rows, fields, header = _read_csv(
        spec.removeprefix("benign:"), field, "give a CSV file: instruction,answer"
    )
    instruction, answer = _column(header, INSTRUCTION_COLUMNS), _column(header, ANSWER_COLUMNS)
    kind_column, task_column = header.get("kind"), header.get("task")
    if instruction is None or answer is None:
        missing = "instruction" if instruction is None else "answer"
        raise UserError(
            field,
            f"{path} has no {missing} column (columns: {', '.join(fields)})",
            "name the columns instruction and answer (and optionally kind, task)",
        )
    if not rows:
        raise UserError(field, f"{path} has no rows", "one prompt per row under a header")
    examples = []
    for line, row in enumerate(rows, start=2):
        request, expected = (row.get(instruction) or "").strip(), (row.get(answer) or "").strip()
        kind = ((row.get(kind_column) or "").strip().lower() if kind_column else "") or "benign"
        if not request or not expected:
            raise UserError(field, f"{path} line {line}: an empty instruction or answer")
        if kind not in ("benign", "borderline"):
            raise UserError(field, f"{path} line {line}: kind {kind!r}", "use benign or borderline")
        task = ((row.get(task_column) or "").strip() if task_column else "") or kind
        examples.append(ChatExample(kind, task, request, expected))  # type: ignore[arg-type]
    return examples
