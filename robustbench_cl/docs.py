"""The generated parts of ``docs/``: every config key of a task, from its config model, and the
task's example config, from its file; so neither can drift from the code.

A page marks each generated region; ``python -m robustbench_cl.docs`` (``make docs``) rewrites
them, and ``--check`` (run by the tests) says which pages are stale::

    <!-- BEGIN GENERATED: keys jailbreak -->
    ...
    <!-- END GENERATED -->
    <!-- BEGIN GENERATED: config configs/jailbreak.yaml -->
    ...
    <!-- END GENERATED -->

A key's meaning is its field's ``description`` or the ``#:`` comment above the field in the
config model's source.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"

_REGION = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<kind>\w+) (?P<arg>\S+) -->\n)(?P<body>.*?)(<!-- END GENERATED -->)",
    re.DOTALL,
)


# ------------------------------------------------------------------ meanings from the source
@cache
def _comments(model: type) -> dict[str, str]:
    """``{field: text}`` of the ``#:`` comment lines right above each field of ``model``."""
    try:
        lines = inspect.getsource(model).splitlines()
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        field = re.match(r"^    (\w+)\s*:", line)
        if field and pending:
            found[field.group(1)] = " ".join(pending)
        if stripped:
            pending = []
    return found


def meaning(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    if info.description:
        return info.description
    for owner in model.__mro__:
        if isinstance(owner, type) and issubclass(owner, BaseModel) and name in _comments(owner):
            return _comments(owner)[name].replace("``", "`")
    return ""


# ------------------------------------------------------------------------ the key table
def _models_in(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """The config models an annotation holds, with the path suffix they appear under
    (``""`` for the model itself, ``"[]"`` for a list of them)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (list, tuple) and arguments:
        return [("[]" + s, m) for s, m in _models_in(arguments[0])]
    if origin in (typing.Union, types.UnionType):
        return [found for argument in arguments for found in _models_in(argument)]
    return []


def type_text(annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in arguments)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_text(a) for a in arguments)
    if origin in (list, tuple):
        inner = type_text(arguments[0]) if arguments else "any"
        return f"list of {inner}"
    if origin is dict:
        return "mapping"
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def default_text(info: Any) -> str:
    """A field's default as a config would write it (JSON is YAML: null, true, [0.0, 1.0])."""
    if not isinstance(info, FieldInfo):  # a plain default of a task's top-level key
        value = info
    elif info.default is not PydanticUndefined:
        value = info.default
    elif info.default_factory is not None:
        value = info.default_factory()
    else:
        return "required"
    if isinstance(value, BaseModel):
        return "see below" if type(value).model_fields else "{}"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump(exclude_defaults=True) for v in value]
    return f"`{json.dumps(value, default=str)}`"


def key_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key, type, default, meaning)`` of every key of ``model``, nested models included."""
    rows = []
    for name, info in model.model_fields.items():
        if info.exclude:  # not part of a written config (e.g. a permission from the CLI)
            continue
        key = f"{prefix}{name}"
        nested = _models_in(info.annotation)
        text = meaning(model, name) or _section_meaning(nested)
        rows.append((key, type_text(info.annotation), default_text(info), text))
        for suffix, inner in nested:
            rows += key_rows(inner, f"{key}{suffix}.")
    return rows


def task_key_rows(task_name: str) -> list[tuple[str, str, str, str]]:
    """The rows of a task's keys: the frame's own (``frame``) or a registered task's."""
    from robustbench_cl.engine.config import MatrixConfig
    from robustbench_cl.engine.task import TASKS

    if task_name == "frame":
        return key_rows(MatrixConfig)
    task = TASKS.get(task_name)
    rows = []
    fields = dict(task.config_fields)
    if task.section_type is not None:  # written at the top level, read as tasks: {name: ...}
        fields = {task.name: (task.section_type, None)}
    for key, (annotation, default) in fields.items():
        nested = _models_in(annotation)
        shown = "required" if default is ... else default_text(default)
        rows.append((key, type_text(annotation), shown, _section_meaning(nested)))
        for suffix, model in nested:
            rows += key_rows(model, f"{key}{suffix}.")
    return rows


def _section_meaning(nested: list[tuple[str, type[BaseModel]]]) -> str:
    if not nested:
        return ""
    doc = vars(nested[0][1]).get("__doc__") or ""  # its own, not StrictConfig's
    return " ".join(doc.split("\n\n")[0].split()).replace("``", "`")


def keys_table(task_name: str) -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, text in task_key_rows(task_name):
        text = re.sub(r":\w+:`~?", "`", text).replace("|", "\\|")  # :mod:`x` -> `x`
        lines.append(f"| `{key}` | {kind} | {default} | {text} |")
    return "\n".join(lines) + "\n"


def config_block(relative: str, page: Path) -> str:
    text = (page.parent / relative).read_text()
    return f"```yaml\n{text}```\n"


# ------------------------------------------------------------------------------ the pages
def render(page: Path) -> str:
    """The page with every generated region rewritten."""

    def replace(match: re.Match[str]) -> str:
        if match["kind"] == "keys":
            body = keys_table(match["arg"])
        elif match["kind"] == "config":
            body = config_block(match["arg"], page)
        else:
            raise ValueError(f"{page}: unknown generated region {match['kind']!r}")
        return f"{match.group(1)}{body}{match.group(5)}"

    return _REGION.sub(replace, page.read_text())


def stale_pages(directory: Path = DOCS_DIR) -> list[Path]:
    return [page for page in sorted(directory.glob("*.md")) if render(page) != page.read_text()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stale = stale_pages()
    if "--check" in argv:
        for page in stale:
            print(f"{page.name} is stale: run `make docs`")
        return 1 if stale else 0
    for page in stale:
        page.write_text(render(page))
        print(f"rewrote {page.relative_to(DOCS_DIR.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
