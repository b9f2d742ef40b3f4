"""The package's layers import one way: no two subpackages import each other (at module level or
inside a function), so privacy does not reach into defenses, nor data into models."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "robustbench_cl"


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        layer = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "robustbench_cl."
            ):
                target = node.module.split(".")[1]
                if target != layer:
                    edges[layer].add(target)
    return edges


def test_no_two_subpackages_import_each_other():
    edges = _edges()
    circles = sorted(
        {tuple(sorted((a, b))) for a in list(edges) for b in edges[a] if a in edges.get(b, ())}
    )
    assert circles == [], f"import circles between subpackages: {circles}"


def test_the_screens_domain_is_layered():
    edges = _edges()
    assert "defenses" not in edges["privacy"]  # protectors live in defenses, routers in privacy
    assert "models" not in edges["data"]  # screen and box helpers in data, the surrogate in models


def _module_edges(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same subpackage it imports (anywhere, even inside a
    function), leaving out imports made only for type checking."""
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for path in (PACKAGE / package).glob("*.py"):
        module = f"robustbench_cl.{package}.{path.stem}"
        tree = ast.parse(path.read_text())
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only or not isinstance(node, ast.ImportFrom):
                continue
            target = node.module or ""
            if target.startswith(f"robustbench_cl.{package}.") and target != module:
                edges[module].add(target)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
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


def test_no_import_circles_inside_the_engine_or_the_tasks():
    for package in ("engine", "tasks"):
        assert _cycle(_module_edges(package)) is None, f"circle in {package}/"


def test_the_engine_does_not_import_the_tasks_or_the_report():
    """Tasks build on the engine and the report; the engine names no task (a new task is one
    module) and the runner <-> executors circle is gone."""
    edges = _edges()
    assert "tasks" not in edges["engine"] and "report" not in edges["engine"]
    assert not _module_edges("engine").get("robustbench_cl.engine.executors")
