"""Every packaged task is a peer of a task written outside the package: the engine and the
report frame name no task. The word list is built from the registry itself (task names, the
config keys and results keys each task owns, its record types and its model classes); the scan
reads identifiers and string constants (docstrings aside) and the Jinja expressions of the
frame's templates."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import robustbench_cl  # noqa: F401  (registers the packaged tasks)
from robustbench_cl.engine.task import task_classes

PACKAGE = Path(robustbench_cl.__file__).resolve().parent
FRAME = ("engine", "report")


#: the library's layers (``robustbench_cl.data``, ``.models``...): every task's section has its own
#: ``data``, ``models``, ``defenses`` and ``attacks`` keys, so these name no one task
LAYERS = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


def task_words() -> dict[str, str]:
    """word -> the task it belongs to."""
    words: dict[str, str] = {}
    for task in task_classes():
        owned = {task.name, *task.record_types, *task.config_fields, *task.result_fields()}
        owned |= {model.__name__ for model in task.record_models.values()}
        kinds = [task.section_type, task.section_model]
        kinds += [spec[0] for spec in task.config_fields.values()]
        kinds += [spec[0] for spec in task.result_fields().values()]
        for kind in kinds:
            kind = getattr(kind, "__args__", (kind,))[0]  # X | None, list[X]
            if isinstance(kind, type) and kind.__module__.startswith("robustbench_cl.tasks"):
                owned.add(kind.__name__)
        for word in owned - LAYERS:
            words.setdefault(word, task.name)
    return words


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def python_names(source: str) -> list[tuple[int, str]]:
    """(line, identifier or string constant) of a module, docstrings aside."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    names = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Name):
            names.append((line, node.id))
        elif isinstance(node, ast.Attribute):
            names.append((line, node.attr))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append((line, node.name))
        elif isinstance(node, ast.arg):
            names.append((line, node.arg))
        elif isinstance(node, ast.keyword) and node.arg:
            names.append((line, node.arg))
        elif isinstance(node, ast.alias):
            names += [(line, part) for part in (node.asname or node.name).split(".")]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names += [(line, part) for part in node.module.split(".")]
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
        ):
            names.append((line, node.value))
            # and every word inside it ("the classification cells"), file names aside: the
            # store is cells.jsonl whatever the task
            text = re.sub(r"[\w.]+\.jsonl", "", node.value)
            names += [(line, word) for word in re.findall(r"[A-Za-z_]+", text)]
    return names


def template_names(source: str) -> list[tuple[int, str]]:
    """The words inside ``{{ }}`` and ``{% %}`` of a Jinja template."""
    names = []
    for match in re.finditer(r"\{\{.*?\}\}|\{%.*?%\}", source, re.S):
        line = source.count("\n", 0, match.start()) + 1
        names += [(line, word) for word in re.findall(r"\w+", match.group())]
    return names


#: the CLI commands every task shares (and the helpers they call): they name no task either
SHARED_COMMANDS = (
    "run",
    "show",
    "report",
    "compare",
    "_print_summary",
    "_summary_json",
    "_write_report",
    "weight_differences",
)


def cli_hits(words: dict[str, str]) -> list[str]:
    path = PACKAGE / "cli" / "main.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hits = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in SHARED_COMMANDS:
            for _, name in python_names(ast.unparse(node)):
                if name in words:
                    hits.append(f"cli/main.py {node.name}(): {name!r} ({words[name]})")
    return hits


def scan(root: Path, words: dict[str, str]) -> list[str]:
    hits = []
    for path in sorted(root.rglob("*")):
        if path.suffix == ".py":
            names = python_names(path.read_text(encoding="utf-8"))
        elif path.suffix == ".j2":
            names = template_names(path.read_text(encoding="utf-8"))
        else:
            continue
        for line, name in names:
            if name in words:
                hits.append(f"{path.relative_to(root.parent)}:{line}: {name!r} ({words[name]})")
    return hits


def test_the_word_list_covers_every_packaged_task():
    words = task_words()
    for name in ("classification", "membership", "generation", "retrieval", "jailbreak"):
        assert name in words
    for word in ("screens", "textret", "clean", "cell", "pairs", "cells", "jailbreak_clean"):
        assert word in words, word
    for word in ("PairEntry", "CellRecord", "RetrievalConfig", "TextRetConfig", "JailbreakSection"):
        assert word in words, word


def test_the_scan_finds_a_planted_task_name(tmp_path):
    frame = tmp_path / "engine"
    frame.mkdir()
    (frame / "results.py").write_text(
        '"""A docstring may say classification."""\n'
        "def build(task, results):\n"
        '    if task.name == "classification":\n'
        '        return results["pairs"]\n'
        "    return results.jailbreak\n"
        "LOG = 'no screens yet, see cells.jsonl'\n"
    )
    (frame / "report.html.j2").write_text("<p>{% for c in results.cells %}{{ c }}{% endfor %}</p>")
    hits = scan(frame, task_words())
    # "classification" and "pairs" twice each (the constant and its word), jailbreak, screens
    # and the template's cells; cells.jsonl (the store, whatever the task) is no hit, nor is
    # the docstring
    assert len(hits) == 7, hits
    assert not any(":1:" in hit for hit in hits if hit.startswith("engine/results.py"))


def test_the_engine_the_report_frame_and_the_shared_commands_name_no_task():
    words = task_words()
    hits = [hit for part in FRAME for hit in scan(PACKAGE / part, words)]
    hits += cli_hits(words)
    assert hits == [], "\n".join(hits)
