"""The remote executors: Ray tasks, or local worker processes; the engine loop alone writes.

The engine loop (:mod:`robustbench_cl.engine.loop`) submits one Ray task per shard of every
unit whose needs are recorded, of every task (classification cells and their sample shards,
retrieval fits and evaluations, jailbreak cells, screens columns, membership audits). A worker
rebuilds the task from the resolved config and runs the shard exactly as the local executor
does, with the same seed and thread count, so the records are identical to a local run's. A
task whose worker dies is retried by Ray (``max_retries``); a rerun of the command resumes from
the records already written.

Workers write artifacts (fitted perturbations, example images) into the run directory: on a
multi-node cluster it must be on a filesystem every node sees.

:class:`ProcessExecutor` (``--executor processes``) runs the same shards in worker processes
on this machine: without Ray, it puts a machine's other cores to work (each worker runs torch on
the run's thread count). A worker that dies ends the run with an error; a rerun resumes.

This module imports nothing from the engine: what runs remotely is passed in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

#: fault injection for the tests: with this variable set on the driver, the first task to start
#: creates the marker file it names and kills its worker (hard); Ray must retry it
FAULT_ONCE = "ROBUSTBENCH_CL_FAULT_ONCE"


def fault_marker(environ: Mapping[str, str]) -> str | None:
    return environ.get(FAULT_ONCE)


def _call(function: Callable[..., Any], fault: str | None, *args: Any) -> Any:
    """What a Ray worker runs: the fault injection, then ``function(*args)``."""
    if fault and not Path(fault).exists():
        Path(fault).write_text("crashed once\n")
        os._exit(1)  # a hard worker death, as an out-of-memory kill would be
    return function(*args)


class RayExecutor:
    """Submits functions as Ray tasks and hands their results back in completion order."""

    def __init__(
        self,
        address: str | None = None,
        gpus_per_task: float = 0.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError:
            from robustbench_cl.errors import UserError

            raise UserError(
                "--executor", "ray is not installed", "pip install 'robustbench-cl[ray]'"
            ) from None
        self.ray = ray
        if not ray.is_initialized():
            variables = {
                **dict(env or {}),
                "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path]),
            }
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
                runtime_env={"env_vars": variables},
            )
        self._task = ray.remote(num_cpus=1, num_gpus=gpus_per_task, max_retries=3)(_call)
        self.description = "Ray tasks"
        self.pending: dict[Any, Any] = {}  # object ref -> the caller's key

    def submit(
        self, key: Any, function: Callable[..., Any], *args: Any, fault: str | None = None
    ) -> None:
        self.pending[self._task.remote(function, fault, *args)] = key

    def completed(self) -> Iterator[tuple[Any, Any]]:
        """Yield ``(key, result)`` for each finished task as soon as it is done; tasks
        submitted meanwhile are waited for too."""
        while self.pending:
            ready, _ = self.ray.wait(list(self.pending), num_returns=1)
            key = self.pending.pop(ready[0])
            yield key, self.ray.get(ready[0])

    def close(self, abort: bool = False) -> None:  # noqa: ARG002
        """Nothing to do: a local Ray stays up for the process, a cluster for its users."""


def _start_worker(env: Mapping[str, str]) -> None:
    """A worker process's start: the driver's cache and trust settings, and its log level."""
    import logging

    os.environ.update(env)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


class ProcessExecutor:
    """Submits functions to ``workers`` local processes; results come back in completion order.

    The processes are spawned (not forked: the driver's torch threads and locks stay its own)
    and live as long as the run, so a worker keeps the models its shards loaded.
    """

    def __init__(self, workers: int, env: Mapping[str, str] | None = None) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.workers = workers
        self.description = f"{workers} worker processes"
        self.pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(dict(env or {}),),
        )
        self.pending: dict[Any, Any] = {}  # future -> the caller's key

    def submit(
        self, key: Any, function: Callable[..., Any], *args: Any, fault: str | None = None
    ) -> None:
        # no fault injection here: a pool whose worker dies is broken, and the run stops
        self.pending[self.pool.submit(function, *args)] = key

    def completed(self) -> Iterator[tuple[Any, Any]]:
        """Yield ``(key, result)`` for each finished call as soon as it is done (a worker's
        exception is raised here); calls submitted meanwhile are waited for too."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        while self.pending:
            done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
            for future in [f for f in self.pending if f in done]:  # in submission order
                key = self.pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    raise RuntimeError(
                        "a worker process died (killed, out of memory, or it could not start: "
                        "a driver script read from stdin cannot be re-imported by a worker); "
                        "the records written so far are kept and a rerun resumes, or use "
                        "--executor local"
                    ) from None
                yield key, result

    def close(self, abort: bool = False) -> None:
        """Shut the workers down; ``abort`` (an error, Ctrl-C) kills the ones still running."""
        if abort:
            for process in list((getattr(self.pool, "_processes", None) or {}).values()):
                process.terminate()
        self.pool.shutdown(wait=not abort, cancel_futures=True)
