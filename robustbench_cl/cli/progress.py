"""Rich progress bars for the engine's events: cells, batches and attack steps."""

from __future__ import annotations

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

    def run_started(self, n_cells: int, n_todo: int) -> None:
        done = n_cells - n_todo
        self.cells_task = self.bars.add_task("cells", total=n_cells, completed=0)
        if done:
            self.console.print(f"resuming: {done} of {n_cells} cells already done")

    def message(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]", markup=True, highlight=False)

    def cell_started(self, label: str, n_batches: int) -> None:
        if self.batch_task is None:
            self.batch_task = self.bars.add_task("batches", total=n_batches)
            self.step_task = self.bars.add_task("steps", total=1)
        self.bars.update(
            self.batch_task, total=max(n_batches, 1), completed=0, description=f"batches  {label}"
        )
        self.bars.update(self.step_task, total=1, completed=0)

    def batch_done(self) -> None:
        self.bars.advance(self.batch_task)

    def step(self, step: int, total: int) -> None:
        self.bars.update(self.step_task, total=total, completed=step)

    def cell_done(self, record: dict[str, Any], skipped: bool) -> None:
        if self.cells_task is not None:
            self.bars.advance(self.cells_task)
