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
from collections.abc import Callable
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
                f"allowed: {', '.join(allowed) or 'none'}",
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

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def _parameters(factory: Any) -> list[str]:
    """Keyword parameters of a factory; a subclass ``__init__(..., **kwargs)`` that forwards
    to its parent also accepts the parent's parameters."""
    allowed: list[str] = []
    classes = factory.__mro__ if inspect.isclass(factory) else [factory]
    for owner in classes:
        function = owner.__init__ if inspect.isclass(owner) else owner
        if inspect.isclass(owner) and "__init__" not in vars(owner):
            continue
        forwards = False
        for name, parameter in inspect.signature(function).parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
            elif name != "self" and parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
                if name not in allowed:
                    allowed.append(name)
        if not forwards:
            break
    return allowed


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
