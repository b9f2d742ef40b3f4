"""The engine loop: the one place that runs units and writes records.

It alone owns the results store (append + fsync; resume by unit id; a torn last line is
dropped and recomputed), the per-shard seed, progress events, each record's wall time (the
seconds its shards ran, wherever they ran, plus the merge), user-error prefixes and the
executor. Tasks only plan units and turn inputs into records
(:mod:`robustbench_cl.engine.task`).

Locally, units run in plan order; a task's heavy state (a model, a trained defense) stays
loaded between its consecutive units. With an executor (Ray), every shard of every unit whose
needs are recorded is submitted at once; the driver merges a unit's parts when the last one
arrives, appends the record, and submits what that record unblocks. A unit's shards are
seeded by (unit id, shard) and run the same code either way, so the records are identical.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Sequence
from typing import Any

import torch

from robustbench_cl.engine.records import Record, check_record
from robustbench_cl.engine.store import ResultsStore
from robustbench_cl.engine.task import (
    RunContext,
    Task,
    Unit,
    run_remote_shard,
    seeded_shard,
    typed,
)
from robustbench_cl.errors import under_field
from robustbench_cl.utils import cache_home

logger = logging.getLogger(__name__)


def execute(
    plans: Sequence[tuple[Task, list[Unit]]],
    ctx: RunContext,
    store: ResultsStore,
    executor: Any = None,
) -> dict[str, dict[str, Any]]:
    """Run every planned unit (``(task, task.plan())`` per task) that ``store`` lacks; return
    all records by id."""
    journals = ctx.run_dir / "partial"  # attacks' partial work on the cells in flight
    if ctx.resume:
        store.repair()
    else:
        store.clear()
        shutil.rmtree(journals, ignore_errors=True)
    records = {r["id"]: r for r in store.read()} if ctx.resume else {}
    planned: dict[str, tuple[Task, Unit]] = {}
    for task, units in plans:
        for unit in units:
            missing = [n for n in unit.needs if n not in planned]
            if missing:
                raise RuntimeError(f"{task.name} unit {unit.label} needs unplanned {missing[0]}")
            planned[unit.id] = (task, unit)
    stale = [r for i, r in records.items() if i not in planned]
    if stale:  # an earlier invocation's records that this plan no longer makes (data changed)
        _set_aside(stale, store)
        records = {i: r for i, r in records.items() if i in planned}
    todo = [i for i in planned if i not in records]
    kinds = [task.cost_kind(unit) for task, unit in (planned[i] for i in todo)]
    _notify(ctx.progress.run_started, len(planned), len(todo), kinds=kinds)
    if executor is None:
        for task, units in plans:
            for unit in units:
                if unit.id in records:
                    ctx.progress.cell_done(records[unit.id], skipped=True)
                    continue
                inputs = {n: typed(records[n]) for n in unit.needs}
                batches = task.batches(unit, inputs)
                _notify(ctx.progress.cell_started, unit.label, batches, kind=task.cost_kind(unit))
                records[unit.id] = _record(task, unit, inputs, store, ctx, local=True)
            task.close()
    else:
        _execute_remote(plans, records, ctx, store, executor)
        # records were appended as shards finished; in plan order, the file (and results.json,
        # which lists records in file order) is the same as a local run's
        order = [unit.id for _, units in plans for unit in units]
        store.rewrite([records[i] for i in order])
    shutil.rmtree(journals, ignore_errors=True)  # every unit's record is kept
    return records


def _notify(event: Any, *args: Any, **new: Any) -> None:
    """Call a progress event; the keywords newer than a user's ``Progress`` subclass (``kinds``,
    ``kind``) are dropped where its method does not take them."""
    import inspect

    try:
        parameters = inspect.signature(event).parameters
    except (TypeError, ValueError):
        parameters = {}
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    event(*args, **{k: v for k, v in new.items() if open_ended or k in parameters})


def _set_aside(stale: list[dict[str, Any]], store: ResultsStore) -> None:
    """Move records that the plan no longer makes to ``cells.stale.jsonl`` beside the store
    (appended: nothing is lost), so that results and the report show only this plan's."""
    aside = ResultsStore(store.path.with_name("cells.stale.jsonl"))
    for record in stale:
        aside.append(record)
    store.remove({record["id"] for record in stale})
    logger.warning(
        "%d records of an earlier invocation are not in this plan (their data or the code "
        "changed); moved to %s",
        len(stale),
        aside.path,
    )


def _record(
    task: Task,
    unit: Unit,
    inputs: dict[str, dict[str, Any]],
    store: ResultsStore,
    ctx: RunContext,
    local: bool,
    parts: list[Any] | None = None,
    seconds: float = 0.0,
) -> dict[str, Any]:
    """Run (locally) or merge (the parts of remote shards, which ran for ``seconds``) one unit,
    check its record and append it."""
    started = time.perf_counter()
    with under_field(unit.field) if unit.field else contextlib.nullcontext():
        if local:
            parts = []
            for shard in range(unit.shards):
                with seeded_shard(ctx.config.seed, unit.id, shard):
                    parts.append(task.run_shard(unit, inputs, shard))
        assert parts is not None
        record = task.merge(unit, inputs, parts)
    if isinstance(record, Record):  # a typed record: stored as the JSON its model dumps
        if "wall_time" in record.model_fields_set:
            raise RuntimeError(f"{task.name} set its record's wall_time: the loop measures it")
        record = record.model_dump(mode="json", exclude={"wall_time"})
    elif "wall_time" in record:
        raise RuntimeError(f"{task.name} set its record's wall_time: the loop measures it")
    if record.get("id") != unit.id or "type" not in record:
        raise RuntimeError(f"{task.name} returned a record without its unit's id or a type")
    record["wall_time"] = seconds + time.perf_counter() - started
    check_record(task.record_models, task.name, record)
    store.append(record)
    label = None if local else unit.label
    _notify(ctx.progress.cell_done, record, skipped=False, label=label, kind=task.cost_kind(unit))
    return record


def _execute_remote(
    plans: Sequence[tuple[Task, list[Unit]]],
    records: dict[str, dict[str, Any]],
    ctx: RunContext,
    store: ResultsStore,
    executor: Any,
) -> None:
    import os

    from robustbench_cl.engine.executors import fault_marker

    config = ctx.config.model_dump(mode="json")
    threads = torch.get_num_threads()
    waiting = [(task, unit) for task, units in plans for unit in units if unit.id not in records]
    for _, units in plans:
        for unit in units:
            if unit.id in records:
                ctx.progress.cell_done(records[unit.id], skipped=True)
    parts: dict[str, dict[int, Any]] = {}
    by_id = {unit.id: (task, unit) for task, unit in waiting}
    if waiting:
        where = getattr(executor, "description", "remote workers")
        ctx.progress.message(f"{len(waiting)} units run in {where}, as their inputs are ready")

    def submit_ready() -> None:
        for task, unit in list(waiting):
            if all(n in records for n in unit.needs):
                waiting.remove((task, unit))
                inputs = {n: records[n] for n in unit.needs}
                parts[unit.id] = {}
                for shard in range(unit.shards):
                    executor.submit(
                        (unit.id, shard),
                        run_remote_shard,
                        config,
                        type(task).__module__,
                        task.name,
                        unit.id,
                        inputs,
                        shard,
                        str(ctx.run_dir.resolve()),
                        str(ctx.device),
                        threads,
                        str(cache_home()),
                        fault=fault_marker(os.environ),
                    )

    from robustbench_cl.models.artifacts import add_artifact_uses

    submit_ready()
    seconds: dict[str, float] = {}
    for (unit_id, shard), returned in executor.completed():
        task, unit = by_id[unit_id]
        parts[unit_id][shard] = returned["part"]
        seconds[unit_id] = seconds.get(unit_id, 0.0) + returned["seconds"]
        add_artifact_uses(returned["artifacts"])
        if len(parts[unit_id]) < unit.shards:
            continue
        inputs = {n: typed(records[n]) for n in unit.needs}
        done = parts.pop(unit_id)
        ordered = [done[index] for index in range(unit.shards)]
        records[unit_id] = _record(
            task, unit, inputs, store, ctx, False, ordered, seconds.pop(unit_id)
        )
        submit_ready()
    if waiting:
        raise RuntimeError(f"units never became ready: {waiting[0][1].label}")
