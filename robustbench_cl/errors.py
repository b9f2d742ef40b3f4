"""User-facing errors: one line that names the field and the fix.

The CLI turns a :class:`UserError` into ``error: <message>`` and exit code 2, with no
traceback unless ``--debug``. Library callers get an ordinary ``ValueError`` subclass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UserError(ValueError):
    """Bad input from a user: a config, a name, a tensor. Always names the field and the fix."""

    def __init__(self, field: str, problem: str, fix: str | None = None) -> None:
        # one printable line, whatever a wrapped library's message or a file name holds
        field, problem = _one_line(field), _one_line(problem)
        fix = _one_line(fix) if fix else fix
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}"
        if fix:
            message += f"; {fix}"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[UserError], tuple[str, str, str | None]]:
        # raised in a worker process, it crosses back to the driver by pickle
        return type(self), (self.field, self.problem, self.fix)


def _one_line(text: str) -> str:
    """Whitespace runs to one space; other control characters (ANSI escapes from a file name)
    shown escaped, never sent to the terminal."""
    flat = " ".join(str(text).split())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: what is kept and how to go on, for the CLI's one line (exit 130).
    ``resume`` None: the run was in a temporary folder, and nothing is kept."""

    def __init__(
        self, run_dir: str, kept: int, total: int, resume: str | None, partial: bool
    ) -> None:
        self.run_dir, self.kept, self.total, self.resume = run_dir, kept, total, resume
        if resume is None:
            message = (
                "interrupted: this command runs in a temporary folder, so nothing is kept; "
                "to keep partial work, run a config with robustbench-cl run CONFIG --out DIR"
            )
        else:
            also = " and the finished components of the AutoAttack cell in flight"
            message = (
                f"interrupted: {kept} of {total} units are kept in {run_dir}"
                f"{also if partial else ''}; resume with: {resume}"
            )
        super().__init__(message)


class ThreatModelViolation(RuntimeError):
    """An attack returned inputs outside its threat model: the cell fails loudly."""


@contextmanager
def under_field(field: str, *, replace: bool = False) -> Iterator[None]:
    """Re-raise a :class:`UserError` from the block under the config path ``field``:
    ``attacks[2]`` + ``steps`` gives ``attacks[2].steps`` (``replace``: just ``field``), so the
    one-line message names where in the config the bad value is."""
    try:
        yield
    except UserError as error:
        where = field if replace else f"{field}.{error.field}"
        raise UserError(where, error.problem, error.fix) from None
