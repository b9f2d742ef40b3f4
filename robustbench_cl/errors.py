"""User-facing errors: one line that names the field and the fix.

The CLI turns a :class:`UserError` into ``error: <message>`` and exit code 2, with no
traceback unless ``--debug``. Library callers get an ordinary ``ValueError`` subclass.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from a user: a config, a name, a tensor. Always names the field and the fix."""

    def __init__(self, field: str, problem: str, fix: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message)


class ThreatModelViolation(RuntimeError):
    """An attack returned inputs outside its threat model: the cell fails loudly."""
