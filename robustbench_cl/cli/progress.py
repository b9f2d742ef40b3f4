"""Rich progress bars for the engine's events: cells, batches and attack steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from robustbench_cl.engine.runner import Progress as EngineProgress


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class Estimates:
    """ETAs from measured cost only, shared by the bars and the lines.

    A running cell's ETA comes from its own finished batches, or, inside its first batch, from
    the share of its budget the attack reports spent (``step(..., fraction)``; AutoAttack
    weighs its components by their query budgets). The run's ETA comes from the measured time
    of finished cells of the same kind (:meth:`Task.cost_kind`): an AutoAttack cell is never
    estimated from a clean pass, and the cells of a kind not timed yet are counted, not guessed.
    Units that run in workers (several at once) are estimated from the run's elapsed time per
    finished unit instead, which allows for the parallelism.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.n_cells = self.done = self.done_here = 0
        self.cell_start = self.batch_start = self.fraction_at = self.pace_start = self.start
        self.batches, self.batches_done = 1, 0
        self.running = self.remote = False
        self.steps: tuple[int, int] | None = None
        self.fraction: float | None = None
        self.todo_kinds: list[str] = []
        #: measured seconds of the finished cells of each kind
        self.kind_times: dict[str, list[float]] = {}

    def run_started(self, n_cells: int, n_todo: int, kinds: list[str] | None) -> None:
        self.start = self.clock()  # planning and the up-front checks are not unit time
        self.n_cells = n_cells
        self.todo_kinds = list(kinds) if kinds is not None else [""] * n_todo

    def cell_started(self, n_batches: int) -> None:
        self.cell_start = self.batch_start = self.pace_start = self.clock()
        self.batches, self.batches_done = max(n_batches, 1), 0
        self.running, self.steps, self.fraction = True, None, None

    def setup(self) -> None:
        """Work inside the cell before its first batch (loading a model, a defense): the
        cell's pace is measured from after it."""
        if self.running and not self.batches_done:
            self.batch_start = self.pace_start = self.clock()

    def batch_done(self) -> None:
        self.batches_done += 1
        self.batch_start, self.steps, self.fraction = self.clock(), None, None

    def step(self, step: int, total: int, fraction: float | None) -> None:
        self.steps = (step, total)
        self.fraction = fraction if fraction is not None else (step / total if total else None)
        self.fraction_at = self.clock()

    def cell_eta(self) -> float | None:
        """Seconds left in the running cell, from its own pace only."""
        if not self.running:
            return None
        now = self.clock()
        left = max(self.batches - self.batches_done, 1)  # out-of-memory halving adds batches
        if self.batches_done:
            per_batch = (self.batch_start - self.pace_start) / self.batches_done
            return max(per_batch * left - (now - self.batch_start), 0.0)
        if self.steps and self.fraction:  # the pace at the last step the attack reported
            per_batch = (self.fraction_at - self.batch_start) / self.fraction
            return max(per_batch * left - (now - self.batch_start), 0.0)
        return None

    def cell_done(self, record: dict[str, Any], remote: bool, kind: str | None) -> float:
        """Count a finished unit; its seconds (its own wall time when it ran in a worker)."""
        self.done += 1
        self.done_here += 1
        took = float(record.get("wall_time") or 0.0) if remote else self.clock() - self.cell_start
        kind = kind or ""
        self.kind_times.setdefault(kind, []).append(took)
        if kind in self.todo_kinds:
            self.todo_kinds.remove(kind)
        elif self.todo_kinds:
            self.todo_kinds.pop(0)
        self.remote = remote
        self.running, self.steps = False, None
        return took

    def run_eta(self) -> str:
        """``, ETA ~T`` (with ``+ N cells not timed yet``), or nothing."""
        if not self.todo_kinds:
            return ""
        if self.remote:  # workers run several at once: the run's own pace
            per_unit = (self.clock() - self.start) / max(self.done_here, 1)
            return f", ETA ~{_clock(per_unit * len(self.todo_kinds))}"
        known = [self.kind_times[k] for k in self.todo_kinds if self.kind_times.get(k)]
        if not known:
            return ""
        seconds = sum(sum(times) / len(times) for times in known)
        untimed = len(self.todo_kinds) - len(known)
        return f", ETA ~{_clock(seconds)}" + (
            f" + {untimed} cells not timed yet" if untimed else ""
        )


class RichProgress(EngineProgress):
    """Bars on a terminal: cells, the running cell's batches (with its ETA) and its steps."""

    def __init__(self, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console
        self.estimates = Estimates(clock)
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=console,
            transient=False,
        )
        self.cells_task = None
        self.batch_task = None
        self.step_task = None

    def __enter__(self) -> RichProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def run_started(self, n_cells: int, n_todo: int, kinds: list[str] | None = None) -> None:
        self.estimates.run_started(n_cells, n_todo, kinds)
        done = n_cells - n_todo
        self.cells_task = self.bars.add_task("cells", total=n_cells, completed=0, eta="")
        if done:
            self.console.print(f"resuming: {done} of {n_cells} cells already done")

    def message(self, text: str) -> None:
        self.estimates.setup()
        self.console.print(f"[dim]{text}[/dim]", markup=True, highlight=False)

    def cell_started(self, label: str, n_batches: int, kind: str | None = None) -> None:
        self.estimates.cell_started(n_batches)
        if self.batch_task is None:
            self.batch_task = self.bars.add_task("batches", total=n_batches, eta="")
            self.step_task = self.bars.add_task("steps", total=1, eta="")
        self.bars.update(
            self.batch_task,
            total=max(n_batches, 1),
            completed=0,
            description=f"batches  {label}",
            eta="",
        )
        self.bars.update(self.step_task, total=1, completed=0)

    def _cell_eta(self) -> None:
        left = self.estimates.cell_eta()
        self.bars.update(self.batch_task, eta=f"cell ETA ~{_clock(left)}" if left else "")

    def batch_done(self) -> None:
        self.estimates.batch_done()
        self.bars.advance(self.batch_task)
        self._cell_eta()

    def step(self, step: int, total: int, fraction: float | None = None) -> None:
        self.estimates.step(step, total, fraction)
        self.bars.update(self.step_task, total=total, completed=step)
        self._cell_eta()

    def cell_done(
        self,
        record: dict[str, Any],
        skipped: bool,
        label: str | None = None,
        kind: str | None = None,
    ) -> None:
        if not skipped:
            self.estimates.cell_done(record, label is not None, kind)
        if self.cells_task is not None:
            self.bars.advance(self.cells_task)
            self.bars.update(self.cells_task, eta=self.estimates.run_eta().removeprefix(", "))


class LineProgress(EngineProgress):
    """Progress as plain lines, for a log, a pipe or CI (no TTY, where bars never draw).

    A line per unit started and finished, with its elapsed time and an ETA for the run, each
    engine message, and a heartbeat at least every ``heartbeat`` seconds while a long step (a
    training, a GCG cell) prints nothing else: what runs, for how long, and its step counter.
    """

    def __init__(
        self,
        console: Console,
        heartbeat: float = 25.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.heartbeat = heartbeat
        self.clock = clock
        self.estimates = Estimates(clock)
        self.start = clock()
        self.last_line = self.start
        self.current: str | None = None  # what runs now: a cell, or a message inside it
        self.current_start = self.start
        self.cell: str | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> LineProgress:
        if self.heartbeat > 0:
            self.thread = threading.Thread(target=self._beat, name="progress-heartbeat")
            self.thread.daemon = True
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=1.0)

    def _print(self, text: str) -> None:
        with self.lock:
            now = self.clock()
            self.last_line = now
            line = f"[{_clock(now - self.start):>6}] {text}"
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _beat(self) -> None:
        while not self.stop.wait(min(self.heartbeat, 5.0)):
            self.beat_if_quiet()

    def run_started(self, n_cells: int, n_todo: int, kinds: list[str] | None = None) -> None:
        # cells already done arrive as cell_done(skipped=True)
        self.estimates.run_started(n_cells, n_todo, kinds)
        if n_cells - n_todo:
            self._print(f"resuming: {n_cells - n_todo} of {n_cells} cells already done")
        self._print(f"{n_todo} of {n_cells} cells to run")

    def message(self, text: str) -> None:
        self.current, self.current_start = text, self.clock()
        self.estimates.steps = None
        self.estimates.setup()
        self._print(text)

    def cell_started(self, label: str, n_batches: int, kind: str | None = None) -> None:
        self.current, self.current_start = label, self.clock()
        self.cell = label
        self.estimates.cell_started(n_batches)
        self._print(f"cell {self.estimates.done + 1}/{self.estimates.n_cells} started: {label}")

    def batch_done(self) -> None:
        estimates = self.estimates
        estimates.batch_done()
        if estimates.batches_done == 1 and estimates.batches > 1:
            took = estimates.batch_start - estimates.pace_start
            self._print(
                f"first of {estimates.batches} batches in {_clock(took)}: "
                f"this cell ETA ~{_clock(took * (estimates.batches - 1))}"
            )

    def step(self, step: int, total: int, fraction: float | None = None) -> None:
        self.estimates.step(step, total, fraction)

    def beat_if_quiet(self) -> None:
        """Print a heartbeat if nothing was printed for ``heartbeat`` seconds."""
        if self.clock() - self.last_line < self.heartbeat:
            return
        estimates = self.estimates
        what = self.cell or self.current or "preparing"
        if self.cell and self.current and self.current != self.cell:
            what += f", {self.current if len(self.current) <= 60 else self.current[:57] + '...'}"
        steps = f", step {estimates.steps[0]}/{estimates.steps[1]}" if estimates.steps else ""
        if self.cell and estimates.batches > 1:
            steps += f", batch {estimates.batches_done + 1}/{estimates.batches}"
        left = estimates.cell_eta() if self.cell else None
        eta = f", cell ETA ~{_clock(left)}" if left is not None else ""
        self._print(
            f"still running: {what} ({_clock(self.clock() - self.current_start)}{steps}{eta})"
        )

    def cell_done(
        self,
        record: dict[str, Any],
        skipped: bool,
        label: str | None = None,
        kind: str | None = None,
    ) -> None:
        estimates = self.estimates
        if skipped:
            estimates.done += 1
            return
        took = estimates.cell_done(record, label is not None, kind)
        eta = estimates.run_eta()
        where = f"cell {estimates.done}/{estimates.n_cells} done in {_clock(took)}"
        if label is not None:  # it ran in a worker: its own wall time, and others still run
            self._print(f"{where}: {label}{eta}")
            return
        self._print(f"{where}: {self.cell or record.get('id', 'cell')}{eta}")
        self.current, self.cell = None, None
