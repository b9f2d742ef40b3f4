"""The Ray executor: the cells of a matrix as Ray tasks, the driver the only writer of results.

The unit of work is a *cascade group*: the cells of one (model, defense) pair that share a
threat model, run in order, each only on the samples the ones before it left robust. Groups do
not depend on each other, so every group of every pair is a task, and they run in parallel.
The driver trains and caches each defense once, computes the clean pass, submits the groups,
and appends the records they return to ``cells.jsonl`` (append + fsync, as locally). Membership
and generation columns run on the driver.

A task rebuilds the same :class:`Runner` from the resolved config and runs ``run_cell`` exactly
as the local executor does, with the same seeds, batch partition and thread count, so per-sample
outcomes are identical to a local run. A task whose worker dies is retried by Ray
(``max_retries``); a rerun of the command resumes from the records already written.

Example images are written by the workers into the run directory, which must therefore be on
storage the workers share (it is, on one machine); set ``engine.examples: 0`` otherwise.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

#: fault injection for the tests: with this variable set on the driver, the first task to start
#: creates the marker file it names and kills its worker (hard); Ray must retry it
FAULT_ONCE = "ROBUSTBENCH_CL_FAULT_ONCE"


def run_group(
    config: dict[str, Any],
    run_dir: str,
    device: str,
    threads: int,
    pair_index: int,
    cell_ids: list[str],
    clean: dict[str, Any],
    alive: list[bool],
    home: str,
    fault_marker: str | None = None,
) -> list[dict[str, Any]]:
    """Run one cascade group (from its first unfinished cell) inside a Ray worker."""
    os.environ["ROBUSTBENCH_CL_HOME"] = home  # the driver's cache, even on a foreign ray.init
    if fault_marker and not Path(fault_marker).exists():
        marker = fault_marker
        Path(marker).write_text("crashed once\n")
        os._exit(1)  # a hard worker death, as an out-of-memory kill would be
    import torch

    from robustbench_cl.engine.config import MatrixConfig
    from robustbench_cl.engine.runner import BROKEN, Progress, Runner, expand

    torch.set_num_threads(threads)
    matrix = MatrixConfig.model_validate(config)
    runner = Runner(matrix, Path(run_dir), torch.device(device), Progress())
    runner.load_data()
    pair = expand(matrix)[pair_index]
    model = runner.build_model(pair)
    mask = torch.tensor(alive, dtype=torch.bool, device=runner.device)
    correct = torch.tensor(clean["correct"], dtype=torch.bool, device=runner.device)
    cells = {cell.id: cell for cell in pair.cells}
    records = []
    for cell_id in cell_ids:
        record = runner.run_cell(
            cells[cell_id], model, clean, mask if matrix.engine.cascade else correct
        )
        records.append(record)
        outcomes = torch.tensor(record["outcomes"], device=runner.device)
        mask = mask & (outcomes != BROKEN)
    return records


class RayExecutor:
    """Submits cascade groups as Ray tasks and hands their records back in completion order."""

    def __init__(self, address: str | None = None, gpus_per_task: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            from robustbench_cl.errors import UserError

            raise UserError(
                "--executor", "ray is not installed", "pip install 'robustbench-cl[ray]'"
            ) from None
        self.ray = ray
        self.gpus_per_task = gpus_per_task
        if not ray.is_initialized():
            from robustbench_cl.utils import cache_home

            env = {
                "ROBUSTBENCH_CL_HOME": str(cache_home()),
                "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path]),
            }
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
                runtime_env={"env_vars": env},
            )
        self._task = ray.remote(num_cpus=1, num_gpus=gpus_per_task, max_retries=3)(run_group)
        self.pending: list[Any] = []

    def submit(self, *args: Any) -> None:
        from robustbench_cl.utils import cache_home

        fault = os.environ.get(FAULT_ONCE)
        self.pending.append(self._task.remote(*args, str(cache_home()), fault))

    def completed(self):  # noqa: ANN201
        """Yield each finished group's records as soon as it is done."""
        while self.pending:
            ready, self.pending = self.ray.wait(self.pending, num_returns=1)
            yield from self.ray.get(ready[0])
