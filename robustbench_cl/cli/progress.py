"""Rich progress bars for the engine's events: cells, batches and attack steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from robustbench_cl.engine.runner import Progress as EngineProgress


class RichProgress(EngineProgress):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
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
        done = n_cells - n_todo
        self.cells_task = self.bars.add_task("cells", total=n_cells, completed=0)
        if done:
            self.console.print(f"resuming: {done} of {n_cells} cells already done")

    def message(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]", markup=True, highlight=False)

    def cell_started(self, label: str, n_batches: int, kind: str | None = None) -> None:
        if self.batch_task is None:
            self.batch_task = self.bars.add_task("batches", total=n_batches)
            self.step_task = self.bars.add_task("steps", total=1)
        self.bars.update(
            self.batch_task, total=max(n_batches, 1), completed=0, description=f"batches  {label}"
        )
        self.bars.update(self.step_task, total=1, completed=0)

    def batch_done(self) -> None:
        self.bars.advance(self.batch_task)

    def step(self, step: int, total: int, fraction: float | None = None) -> None:
        self.bars.update(self.step_task, total=total, completed=step)

    def cell_done(
        self,
        record: dict[str, Any],
        skipped: bool,
        label: str | None = None,
        kind: str | None = None,
    ) -> None:
        if self.cells_task is not None:
            self.bars.advance(self.cells_task)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


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
        self.start = clock()
        self.last_line = self.start
        self.n_cells = 0
        self.done = 0
        self.done_this_run = 0
        self.current: str | None = None  # what runs now: a cell, or a message inside it
        self.current_start = self.start
        self.cell: str | None = None
        self.cell_start = self.start
        self.steps: tuple[int, int] | None = None
        self.fraction: float | None = None
        self.fraction_at = self.start
        self.batches, self.batches_done, self.batch_start = 1, 0, self.start
        self.todo_kinds: list[str] = []
        #: measured seconds of the finished cells of each kind (Task.cost_kind)
        self.kind_times: dict[str, list[float]] = {}
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
        self.n_cells = n_cells  # cells already done arrive as cell_done(skipped=True)
        self.todo_kinds = list(kinds) if kinds is not None else [""] * n_todo
        if n_cells - n_todo:
            self._print(f"resuming: {n_cells - n_todo} of {n_cells} cells already done")
        self._print(f"{n_todo} of {n_cells} cells to run")

    def message(self, text: str) -> None:
        self.current, self.current_start, self.steps = text, self.clock(), None
        self._print(text)

    def cell_started(self, label: str, n_batches: int, kind: str | None = None) -> None:
        self.current, self.current_start, self.steps = label, self.clock(), None
        self.cell, self.cell_start = label, self.current_start
        self.batches, self.batches_done, self.batch_start = max(n_batches, 1), 0, self.cell_start
        self._print(f"cell {self.done + 1}/{self.n_cells} started: {label}")

    def batch_done(self) -> None:
        now = self.clock()
        self.batches_done += 1
        self.batch_start, self.steps = now, None
        if self.batches_done == 1 and self.batches > 1:
            left = (now - self.cell_start) * (self.batches - 1)
            self._print(
                f"first of {self.batches} batches in {_clock(now - self.cell_start)}: "
                f"this cell ETA ~{_clock(left)}"
            )

    def step(self, step: int, total: int, fraction: float | None = None) -> None:
        self.steps = (step, total)
        self.fraction = fraction if fraction is not None else (step / total if total else None)
        self.fraction_at = self.clock()

    def cell_eta(self) -> float | None:
        """Seconds left in the running cell, from its own measured pace only: its finished
        batches, or within its first batch the share of the budget its steps report spent."""
        if self.cell is None:
            return None
        now = self.clock()
        left_batches = self.batches - self.batches_done
        if self.batches_done:
            per_batch = (self.batch_start - self.cell_start) / self.batches_done
            return max(per_batch * left_batches - (now - self.batch_start), 0.0)
        if self.steps and self.fraction:  # the pace at the last step the attack reported
            per_batch = (self.fraction_at - self.batch_start) / self.fraction
            return max(per_batch * left_batches - (now - self.batch_start), 0.0)
        return None

    def run_eta(self) -> tuple[float, int] | None:
        """Seconds the cells still to run will take, from the measured time of finished cells
        of the same kind (an AutoAttack cell is never estimated from a clean pass), and how
        many of them are of a kind not timed yet."""
        known = unknown = 0
        total = 0.0
        for kind in self.todo_kinds:
            times = self.kind_times.get(kind)
            if times:
                total += sum(times) / len(times)
                known += 1
            else:
                unknown += 1
        return (total, unknown) if known else None

    def beat_if_quiet(self) -> None:
        """Print a heartbeat if nothing was printed for ``heartbeat`` seconds."""
        if self.clock() - self.last_line < self.heartbeat:
            return
        what = self.cell or self.current or "preparing"
        if self.cell and self.current and self.current != self.cell:
            what += f", {self.current if len(self.current) <= 60 else self.current[:57] + '...'}"
        steps = f", step {self.steps[0]}/{self.steps[1]}" if self.steps else ""
        if self.cell and self.batches > 1:
            steps += f", batch {self.batches_done + 1}/{self.batches}"
        left = self.cell_eta()
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
        self.done += 1
        if skipped:
            return
        now = self.clock()
        kind = kind or ""
        took = float(record.get("wall_time") or 0.0) if label is not None else now - self.cell_start
        self.kind_times.setdefault(kind, []).append(took)
        if kind in self.todo_kinds:
            self.todo_kinds.remove(kind)
        elif self.todo_kinds:
            self.todo_kinds.pop(0)
        estimate = self.run_eta() if self.n_cells - self.done else None
        eta = ""
        if estimate is not None:
            seconds, untimed = estimate
            eta = f", ETA ~{_clock(seconds)}"
            if untimed:
                eta += f" + {untimed} cells not timed yet"
        if label is not None:  # it ran in a worker: its own wall time, and others still run
            self._print(f"cell {self.done}/{self.n_cells} done in {_clock(took)}: {label}{eta}")
            return
        label = self.cell or record.get("id", "cell")
        self._print(f"cell {self.done}/{self.n_cells} done in {_clock(took)}: {label}{eta}")
        self.current, self.cell, self.steps = None, None, None
