"""The package's layers import one way. Every import form counts (``import x``, ``from x import
y``, and imports inside functions), except those made only for type checking: a module may
import only modules of lower layers, and no group of modules imports itself in a circle.

The registry is a bottom layer: it learns the built-ins because the package's ``__init__``
imports them, never by importing its plugins."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "robustbench_cl"

#: bottom to top; a module imports only from strictly lower ranks (or its own subpackage)
RANKS = {
    "errors": 0,
    "_version": 0,
    "paths": 1,
    "shipped": 1,
    "utils": 2,
    "registry": 3,
    "threat": 3,
    "data": 4,
    "losses": 5,
    "models": 6,
    "attacks": 7,
    "privacy": 8,
    "defenses": 9,
    "engine": 10,
    "report": 11,
    "tasks": 12,
    "__init__": 13,  # the package root: the public API, and the built-ins' registration
    "cli": 14,
    "docs": 14,  # the generated parts of docs/: reads every task's config model
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_edges(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, resolving ``from pkg import submodule``
    to the submodule (relative imports included); type-checking-only imports left out."""
    package = root.name
    modules = {_module_name(path, root): path for path in root.rglob("*.py")}
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = {  # the body of `if TYPE_CHECKING:` only (its else runs)
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If)
            and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for statement in node.body
            for inner in ast.walk(statement)
        }
        base = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                    source = f"{anchor}.{node.module}" if node.module else anchor
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in modules else source)
            for target in targets:
                while target and target not in modules:  # import a.b.c of a module a.b
                    target = target.rpartition(".")[0]
                if target.split(".")[0] == package and target != module:
                    edges[module].add(target)
    return edges


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def arrows_up(edges: dict[str, set[str]]) -> list[str]:
    """Imports from a module's layer to a higher one (or an unranked layer)."""
    bad = []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            source_layer, target_layer = layer(module), layer(target)
            if source_layer == target_layer:
                continue
            if target_layer not in RANKS or source_layer not in RANKS:
                bad.append(f"{module} -> {target} (unranked layer)")
            elif RANKS[target_layer] >= RANKS[source_layer]:
                bad.append(f"{module} -> {target}")
    return bad


def circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle among the modules, or ``None``."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def _package_edges() -> dict[str, set[str]]:
    edges = import_edges()
    # the root imports every layer to register the built-ins: a module's implicit import of its
    # package's __init__ is Python's, not the module's, so the root's own edges close no circle
    return {m: t for m, t in edges.items() if m != "robustbench_cl"}


def test_every_layer_imports_only_lower_layers():
    assert arrows_up(import_edges()) == []


def test_no_import_circle_among_the_modules():
    assert circle(_package_edges()) is None


def test_every_top_level_module_and_subpackage_has_a_rank():
    names = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py"}
    names |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert names <= set(RANKS), names - set(RANKS)


def test_the_check_finds_planted_bad_imports(tmp_path):
    """A plain import up, a function-local import up and a circle, each found."""
    root = tmp_path / "robustbench_cl"
    for folder in ("engine", "registry", "tasks"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "engine" / "loop.py").write_text("import robustbench_cl.tasks.spam\n")
    (root / "registry" / "core.py").write_text(
        "def builtins():\n    from robustbench_cl.engine import loop\n"
    )
    (root / "tasks" / "spam.py").write_text("from robustbench_cl.tasks import eggs\n")
    (root / "tasks" / "eggs.py").write_text("from . import spam\n")
    edges = import_edges(root)
    assert sorted(arrows_up(edges)) == [
        "robustbench_cl.engine.loop -> robustbench_cl.tasks.spam",
        "robustbench_cl.registry.core -> robustbench_cl.engine.loop",
    ]
    found = circle(edges)
    assert found is not None and {"robustbench_cl.tasks.spam", "robustbench_cl.tasks.eggs"} <= set(
        found
    )


#: what the packaged tasks share (the (model, defense) pairs and the section helpers)
SHARED_TASK_MODULES = ("pairs", "sections", "membership_plan")


def cross_task_imports(edges: dict[str, set[str]]) -> list[str]:
    """Imports from one task package into another, or from a shared task module into any task
    package (a package's ``__init__`` counts as the package)."""
    bad = []
    for module, targets in sorted(edges.items()):
        parts = module.split(".")
        if len(parts) < 3 or parts[1] != "tasks":
            continue
        for target in sorted(targets):
            other = target.split(".")
            if len(other) < 3 or other[1] != "tasks" or other[2] in SHARED_TASK_MODULES:
                continue
            if other[2] != parts[2]:
                bad.append(f"{module} -> {target}")
    return bad


def test_the_cross_task_check_finds_planted_imports(tmp_path):
    root = tmp_path / "robustbench_cl"
    for folder in ("tasks", "tasks/spam", "tasks/eggs"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "tasks" / "spam" / "task.py").write_text("from robustbench_cl.tasks.eggs import x\n")
    (root / "tasks" / "eggs" / "__init__.py").write_text("from robustbench_cl.tasks import spam\n")
    (root / "tasks" / "pairs.py").write_text("import robustbench_cl.tasks.spam.task\n")
    assert cross_task_imports(import_edges(root)) == [
        "robustbench_cl.tasks.eggs -> robustbench_cl.tasks.spam",
        "robustbench_cl.tasks.pairs -> robustbench_cl.tasks.spam.task",
        "robustbench_cl.tasks.spam.task -> robustbench_cl.tasks.eggs",
    ]


def test_task_packages_do_not_import_each_other():
    """Peers: a task package uses the engine, the report frame and the shared pair modules,
    never another task's package (membership runs on classification's pairs through
    tasks/pairs.py, not through tasks/classification)."""
    assert cross_task_imports(import_edges()) == []


def test_the_type_checking_filter_keeps_runtime_imports(tmp_path):
    root = tmp_path / "robustbench_cl"
    (root / "engine").mkdir(parents=True)
    (root / "tasks").mkdir()
    for folder in (root, root / "engine", root / "tasks"):
        (folder / "__init__.py").write_text("")
    (root / "tasks" / "spam.py").write_text("")
    (root / "engine" / "loop.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import robustbench_cl.tasks.spam\n"
        "else:\n    from robustbench_cl.tasks import spam\n"
    )
    assert arrows_up(import_edges(root)) == [
        "robustbench_cl.engine.loop -> robustbench_cl.tasks.spam"
    ]


def test_the_screens_domain_is_layered():
    edges = import_edges()
    up = {(layer(m), layer(t)) for m, targets in edges.items() for t in targets}
    assert ("privacy", "defenses") not in up  # protectors live in defenses, routers in privacy
    assert ("data", "models") not in up  # screen and box helpers in data, the surrogate in models
