"""How many CPU threads torch may use: half the cores this process may run on, by default.

Attacks on small models run many tiny operations, each a parallel region whose threads meet
at a barrier. When another process holds one of the cores (a user's machine is rarely idle),
the thread that lost its core stalls every barrier: on 2 cores beside one busy loop, standard
AutoAttack on 100 digits took 69.5 s with 2 threads and 17.1 s with 1, while on idle cores
2 threads were 1.4x faster (14.8 s vs 20.6 s; ``benchmarks/threads.py``,
``reports/bench/threads.json``). So the default leaves half the cores to the rest of the
machine; on a machine you know to be idle, ``--threads`` with every core is faster. The count is fixed by the core count, never by the
momentary load, so one machine always runs a config with the same threads (float sums, and so
rare borderline outcomes, can depend on it). ``--threads N`` or ``ROBUSTBENCH_CL_THREADS=N``
sets it; ``meta.json`` records it.
"""

from __future__ import annotations

import os

import torch

from robustbench_cl.errors import UserError

ENV = "ROBUSTBENCH_CL_THREADS"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    return max(1, available_cores() // 2)


def resolve_threads(threads: int | None = None) -> int:
    """``threads``, else ``$ROBUSTBENCH_CL_THREADS``, else :func:`default_threads`."""
    if threads is None and os.environ.get(ENV):
        value = os.environ[ENV]
        try:
            threads = int(value)
        except ValueError:
            raise UserError(ENV, f"must be an integer, got {value!r}", f"e.g. {ENV}=2") from None
    if threads is None:
        return default_threads()
    if threads < 1:
        raise UserError("--threads", f"must be >= 1, got {threads}")
    return threads


def apply_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (see the module docstring) and return it."""
    resolved = resolve_threads(threads)
    if torch.get_num_threads() != resolved:
        torch.set_num_threads(resolved)
    return resolved
