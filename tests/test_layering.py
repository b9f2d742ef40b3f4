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
