"""The Ray executor: cascade groups and sample shards as Ray tasks; the driver alone writes.

The unit of work is one *shard* of one *cascade group*: the cells of a (model, defense) pair
that share a threat model, run in order, each only on the samples the ones before it left
robust, restricted to one contiguous range of samples (``engine.shard_size``; one shard when
unset). Groups do not depend on each other, and within a group the cascade of one shard never
looks at another shard's samples, so every (group, shard) is an independent task. The driver
trains and caches each defense once, computes the clean pass, submits the tasks, merges the
parts of a group's shards in shard order into one record per cell, and appends it to
``cells.jsonl`` (append + fsync, as locally). Membership and generation columns run on the
driver.

A task rebuilds the same :class:`Runner` from the resolved config and runs ``attack_shard``
exactly as the local executor does, with the same per-shard seed, batch partition and thread
count, so per-sample outcomes are identical to a local run of the same config. A task whose
worker dies is retried by Ray (``max_retries``); a rerun of the command resumes from the
records already written.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

#: fault injection for the tests: with this variable set on the driver, the first task to start
#: creates the marker file it names and kills its worker (hard); Ray must retry it
FAULT_ONCE = "ROBUSTBENCH_CL_FAULT_ONCE"


def run_group_shard(
    config: dict[str, Any],
    device: str,
    threads: int,
    pair_index: int,
    cell_ids: list[str],
    clean: dict[str, Any],
    alive: list[bool],
    shard: int,
    home: str,
    fault_marker: str | None = None,
) -> list[Any]:
    """Run one shard of one cascade group (from its first unfinished cell) in a Ray worker.

    Returns one :class:`~robustbench_cl.engine.runner.ShardPart` per cell, in order.
    """
    os.environ["ROBUSTBENCH_CL_HOME"] = home  # the driver's cache, even on a foreign ray.init
    if fault_marker and not Path(fault_marker).exists():
        marker = fault_marker
        Path(marker).write_text("crashed once\n")
        os._exit(1)  # a hard worker death, as an out-of-memory kill would be
    import tempfile

    import torch

    from robustbench_cl.engine.config import MatrixConfig
    from robustbench_cl.engine.runner import BROKEN, Progress, Runner, expand

    torch.set_num_threads(threads)
    matrix = MatrixConfig.model_validate(config)
    # a worker writes nothing: the driver saves examples and records
    runner = Runner(matrix, Path(tempfile.gettempdir()), torch.device(device), Progress())
    runner.load_data()
    pair = expand(matrix)[pair_index]
    model = runner.build_model(pair)
    mask = torch.tensor(alive, dtype=torch.bool, device=runner.device)
    correct = torch.tensor(clean["correct"], dtype=torch.bool, device=runner.device)
    cells = {cell.id: cell for cell in pair.cells}
    n_classes = clean["probes"]["n_classes"]
    first, last = runner.shards[shard]
    parts = []
    for cell_id in cell_ids:
        cell = cells[cell_id]
        attack = runner.build_attack(cell)
        labels = runner.cell_labels(cell, n_classes)
        alive_now = mask if matrix.engine.cascade else correct
        part = runner.attack_shard(cell, attack, model, labels, alive_now, shard)
        parts.append(part)
        mask[first:last] &= part.outcomes.to(runner.device) != BROKEN
    return parts


class RayExecutor:
    """Submits (group, shard) tasks and hands their parts back in completion order."""

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
            from robustbench_cl.utils import TRUST_REMOTE_CODE_ENV, cache_home, trust_remote_code

            env = {
                "ROBUSTBENCH_CL_HOME": str(cache_home()),
                **({TRUST_REMOTE_CODE_ENV: "1"} if trust_remote_code() else {}),
                "PYTHONPATH": os.pathsep.join([os.getcwd(), *sys.path]),
            }
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                ignore_reinit_error=True,
                runtime_env={"env_vars": env},
            )
        self._task = ray.remote(num_cpus=1, num_gpus=gpus_per_task, max_retries=3)(run_group_shard)
        self.pending: dict[Any, Any] = {}  # object ref -> the caller's key

    def submit(self, key: Any, *args: Any) -> None:
        from robustbench_cl.utils import cache_home

        fault = os.environ.get(FAULT_ONCE)
        self.pending[self._task.remote(*args, str(cache_home()), fault)] = key

    def completed(self):  # noqa: ANN201
        """Yield ``(key, parts)`` for each finished task as soon as it is done."""
        while self.pending:
            ready, _ = self.ray.wait(list(self.pending), num_returns=1)
            key = self.pending.pop(ready[0])
            yield key, self.ray.get(ready[0])
