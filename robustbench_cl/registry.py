"""Name -> factory registries for attacks, defenses, models, datasets and suites.

One name leads to one factory, discovery is free and typos get a "did you mean"::

    @register_attack("pgd")
    class PGD(Attack): ...

    list_attacks("apgd*")

The registries know what registered itself: the package's ``__init__`` imports the packaged
attacks, defenses, models and datasets (and tasks), which any import of ``robustbench_cl`` runs
first; the registry imports none of them.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from robustbench_cl.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories with wildcard listing and typo suggestions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._summaries: dict[str, str] = {}

    def register(self, name: str, summary: str | None = None) -> Callable[[T], T]:
        def decorator(factory: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            doc = summary or (getattr(factory, "__doc__", None) or "").strip()
            self._summaries[name] = doc.splitlines()[0] if doc else ""
            return factory

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UserError(self.kind, f"unknown {self.kind} {name!r}", self._suggest(name))
        return self._entries[name]

    def create(self, name: str, **params: Any) -> Any:
        """Build ``name`` with keyword ``params``; unknown names and wrong types are one-line errors."""
        factory = self.get(name)
        allowed = _parameters(factory)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise UserError(
                f"{name}.{unknown[0]}",
                f"unknown parameter for {self.kind} {name!r}",
                f"allowed: {', '.join(allowed) or 'none'} (their meaning: {self.params_command(name)})",
            )
        try:
            return factory(**params)
        except TypeError as error:  # a value of a type the constructor cannot take
            raise UserError(f"{name}.params", str(error), "check the parameter types") from None

    def _suggest(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        if close:
            return f"did you mean {' or '.join(repr(c) for c in close)}?"
        return f"see `robustbench-cl list {self.kind}s`"

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def summary(self, name: str) -> str:
        return self._summaries.get(name, "")

    def parameters(self, name: str) -> list[Parameter]:
        """``name``'s parameters with their defaults and meanings (``list KIND NAME --params``)."""
        return describe_parameters(self.get(name))

    def params_command(self, name: str) -> str:
        kind = {"model scheme": "models", "membership attack": "membership"}.get(
            self.kind, f"{self.kind}s"
        )
        return f"robustbench-cl list {kind} {name} --params"

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def _parameters(factory: Any) -> list[str]:
    """Keyword parameters of a factory; a subclass ``__init__(..., **kwargs)`` that forwards
    to its parent also accepts the parent's parameters."""
    return list(_signature(factory)[0])


def _signature(factory: Any) -> tuple[dict[str, inspect.Parameter], dict[str, str]]:
    """The keyword parameters of a factory down its forwarding chain (a subclass whose
    ``__init__`` takes ``**kwargs`` passes them to its parent), and the meanings that the
    docstrings along the way give them (the nearest one wins)."""
    parameters: dict[str, inspect.Parameter] = {}
    meanings: dict[str, str] = {}
    classes = factory.__mro__ if inspect.isclass(factory) else [factory]
    for owner in classes:  # a parent's docstring documents what a subclass passes on to it
        for doc in (owner.__doc__, getattr(vars(owner).get("__init__"), "__doc__", None)):
            for name, text in documented_parameters(doc).items():
                meanings.setdefault(name, text)
    for owner in classes:
        if inspect.isclass(owner):
            if "__init__" not in vars(owner):
                continue
            function = owner.__init__
        else:
            function = owner
        forwards = False
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
            elif name != "self" and parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                parameters.setdefault(name, parameter)
        if not forwards:
            break
    return parameters, meanings


@dataclass(frozen=True)
class Parameter:
    """One parameter of a factory, as ``list ... --params`` prints it."""

    name: str
    #: the default as Python writes it, or ``required``
    default: str
    annotation: str
    meaning: str


_SECTION = re.compile(r"^(Args|Parameters|Options):\s*$")
_ENTRY = re.compile(r"^(?P<name>[A-Za-z_][\w-]*)(?:\s*\([^)]*\))?:\s*(?P<text>.*)$")


def documented_parameters(doc: str | None) -> dict[str, str]:
    """``{name: meaning}`` from the ``Args:`` (or ``Options:``) section of a docstring::

    Args:
        steps: iterations per restart.
        step_size: the step; ``None`` derives it from eps
            (continued on an indented line).
    """
    meanings: dict[str, str] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    inside, indent, current = False, None, None
    for line in lines:
        if _SECTION.match(line):
            inside, indent, current = True, None, None
            continue
        if not inside:
            continue
        if line.strip() and not line[:1].isspace():  # the section ended
            inside = False
            continue
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        indent = depth if indent is None else indent
        entry = _ENTRY.match(line.strip()) if depth == indent else None
        if entry:
            current = entry["name"]
            meanings[current] = entry["text"].strip()
        elif current is not None:
            meanings[current] = f"{meanings[current]} {line.strip()}".strip()
    return {name: " ".join(text.replace("``", "`").split()) for name, text in meanings.items()}


def describe_parameters(factory: Any) -> list[Parameter]:
    """The keyword parameters of a factory (as :func:`_parameters` finds them, parents'
    included), each with its default, its annotation and the meaning its docstring gives.
    A factory may describe its own (a class attribute ``describe_parameters``)."""
    custom = getattr(factory, "describe_parameters", None)
    if custom is not None:
        return custom()
    signature, meanings = _signature(factory)
    described = []
    for name, parameter in signature.items():
        empty = parameter.default is inspect.Parameter.empty
        annotation = parameter.annotation
        if annotation is inspect.Parameter.empty:
            annotation = ""
        elif not isinstance(annotation, str):
            annotation = getattr(annotation, "__name__", str(annotation))
        described.append(
            Parameter(
                name=name,
                default="required" if empty else repr(parameter.default),
                annotation=annotation,
                meaning=meanings.get(name, ""),
            )
        )
    return described


ATTACKS: Registry[Any] = Registry("attack")
DEFENSES: Registry[Any] = Registry("defense")
MODELS: Registry[Any] = Registry("model")
DATASETS: Registry[Any] = Registry("dataset")

register_attack = ATTACKS.register
register_defense = DEFENSES.register
register_model = MODELS.register
register_dataset = DATASETS.register


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.names(pattern)


def list_defenses(pattern: str = "*") -> list[str]:
    return DEFENSES.names(pattern)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.names(pattern)
