"""The Task protocol: what one kind of evaluation plans, runs, summarises and shows.

A task owns one config section (``retrieval:``; a task registered outside the package reads its
section from ``tasks: {name: ...}``). The engine loop (:mod:`robustbench_cl.engine.loop`) asks
every task whose section is present for its *units*, runs the missing ones in order (locally,
or shard by shard as Ray tasks), and appends each unit's record to ``cells.jsonl``. A record
has a ``type`` and an ``id``; a task builds it as an instance of its record model
(``record_models``), the loop stores the JSON it dumps, and the task reads it back typed
(:meth:`RunSummary.of`, and a unit's ``inputs``) to make its ``results.json`` section, its report
section and its terminal table::

    @register_task("calibration")
    class Calibration(Task):
        section_type = CalibrationConfig
        record_types = ("calibration",)
        template = Path(__file__).with_name("calibration.html.j2")

        def plan(self) -> list[Unit]: ...
        def run_shard(self, unit, inputs, shard) -> dict: ...
        @classmethod
        def summarize(cls, records, results) -> dict | None: ...

Adding a task is one module (and one report template); nothing in the runner, the results,
the report or the CLI names it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from robustbench_cl.registry import Registry

if TYPE_CHECKING:
    import torch
    from rich.table import Table

    from robustbench_cl.engine.config import MatrixConfig
    from robustbench_cl.engine.summary import RunSummary


@dataclass(frozen=True, kw_only=True)
class Unit:
    """One record's worth of work.

    ``id`` is stable across runs (a hash of what determines the record), so a rerun skips it
    when ``cells.jsonl`` holds it. ``needs`` are the ids whose records :meth:`Task.run_shard`
    gets as ``inputs``; they come earlier in the plan. ``shards`` > 1 splits the unit into
    independent sample ranges (one Ray task each) that :meth:`Task.merge` joins in order.
    ``field`` prefixes a user error raised while the unit runs (``retrieval.models[0]``).
    ``key`` is the task's own typed handle on what the unit is (a planned cell, a dataclass
    naming a model and a column): a task tells its kinds of unit apart by the key's type.
    """

    id: str = field(kw_only=False)
    label: str = field(kw_only=False)
    key: Any = None
    needs: tuple[str, ...] = ()
    shards: int = 1
    field: str | None = None


class Progress:
    """Progress events from the engine; the CLI draws them with rich. All no-ops here."""

    def run_started(self, n_cells: int, n_todo: int, kinds: list[str] | None = None) -> None:
        """``kinds``: the cost kind of each unit to run (:meth:`Task.cost_kind`), in order."""

    def message(self, text: str) -> None: ...

    def cell_started(self, label: str, n_batches: int, kind: str | None = None) -> None: ...

    def batch_done(self) -> None: ...

    def step(self, step: int, total: int, fraction: float | None = None) -> None: ...

    def cell_done(
        self,
        record: dict[str, Any],
        skipped: bool,
        label: str | None = None,
        kind: str | None = None,
    ) -> None:
        """A unit's record is stored; ``label`` when it ran in a worker (no cell_started)."""


@dataclass
class RunContext:
    """What every task of a run shares: the config, where to write, the device, progress."""

    config: MatrixConfig
    run_dir: Path
    device: torch.device
    progress: Progress = field(default_factory=Progress)
    resume: bool = True
    #: False in a Ray worker: the driver alone writes records (workers may write artifacts)
    driver: bool = True


class Task:
    """A kind of evaluation. Subclasses set the class attributes and implement :meth:`plan`
    and :meth:`run_shard` (or :meth:`run`); the class methods turn records into results."""

    #: the registry name, also the config section key
    name: ClassVar[str] = ""
    #: the pydantic model of the config section, read from the top-level key ``name`` or from
    #: ``tasks: {name: ...}``
    section_type: ClassVar[Any] = None
    #: instead of ``section_type``: the top-level config keys the task owns, ``{key:
    #: (annotation, default)}`` (the classification pairs own ``data``, ``models``, ...);
    #: :meth:`section` then says when the task is active
    config_fields: ClassVar[dict[str, tuple[Any, Any]]] = {}
    #: the keys to name when a config has no task's section (default: the name)
    section_hints: ClassVar[tuple[str, ...]] = ()
    #: the record ``type`` values this task writes
    record_types: ClassVar[tuple[str, ...]] = ()
    #: the typed model of each record type (:class:`robustbench_cl.engine.records.Record`
    #: subclasses): the loop validates every record against its model before the append
    record_models: ClassVar[dict[str, Any]] = {}
    #: the report section's jinja template: a name under report/templates, or a Path
    template: ClassVar[str | Path | None] = None
    #: where the task runs and appears among the others (then by name)
    order: ClassVar[int] = 100
    #: the report's navigation link and section anchor (default: the name)
    title: ClassVar[str] = ""
    anchor: ClassVar[str] = ""
    #: the type of the task's ``results.json`` section (pydantic models): the results schema is
    #: generated from it; a task may give a JSON Schema dict (``schema``) instead
    section_model: ClassVar[Any] = None
    schema: ClassVar[dict[str, Any] | None] = None
    #: ``(spec, description)`` of each data source its section can name (``list datasets``)
    data_sources: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.config = ctx.config

    # ------------------------------------------------------------------ the section
    @classmethod
    def section(cls, config: MatrixConfig) -> Any:
        """This task's config section, or ``None`` when the config has none."""
        value = getattr(config, cls.name, None)
        if value is None:
            value = config.tasks.get(cls.name)
        return value or None

    @classmethod
    def requested(cls, config: MatrixConfig) -> bool:
        """Whether the config asks for this task (a config must ask for one); by default when
        it has the task's section. A task can be active without being asked for: the
        classification pairs' clean pass runs for membership too."""
        return cls.section(config) is not None

    @classmethod
    def check_config(cls, config: MatrixConfig) -> None:
        """Refuse a config the task cannot run (a ``ValueError``), before any work."""

    # ------------------------------------------------------------------ running
    def plan(self) -> list[Unit]:
        """Validate the section and list the units, in an order where needs come first."""
        raise NotImplementedError

    def cost_kind(self, unit: Unit) -> str:
        """Units of one kind cost about the same time (an ETA is drawn from the measured time of
        the kind's finished units, never from other kinds'): by default the task and the key's
        type; a task with several attacks per key type tells them apart."""
        return f"{self.name}:{type(unit.key).__name__}"

    def batches(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> int:
        """How many ``batch_done`` events running ``unit`` will report (the progress bar)."""
        return 1

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        """Run shard ``shard`` of ``unit``. With one shard, return the record itself."""
        raise NotImplementedError

    def merge(self, unit: Unit, inputs: dict[str, dict[str, Any]], parts: list[Any]) -> dict:
        """Join the shards' parts (in shard order) into the unit's record. It runs in the
        driver, outside any shard's seed: it must not draw randomness. The loop sets the
        record's ``wall_time``; a task does not."""
        assert len(parts) == 1, f"{type(self).__name__} has shards but no merge"
        return parts[0]

    def run(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Run every shard of ``unit`` here, then merge them (the local executor)."""
        parts = [self.run_shard(unit, inputs, shard) for shard in range(unit.shards)]
        return self.merge(unit, inputs, parts)

    def close(self) -> None:
        """Free what the task holds (models) once its units are done."""

    def describe_data(self) -> dict[str, Any] | None:
        """The evaluation data for ``meta.json`` (the pair tasks' dataset), if the task has one."""
        return None

    # ------------------------------------------------------------------ results
    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        """The task's ``results.json`` keys (normally one: :attr:`name`) from its records,
        ``summary.of(*cls.record_types)``. ``results`` holds what the tasks before this one
        added (the classification pairs first), for labels. ``None``: nothing to add."""
        return None

    @classmethod
    def result_fields(cls) -> dict[str, tuple[Any, Any]]:
        """The ``results.json`` keys the task writes, ``{key: (annotation, default)}``: one
        optional section named after the task, typed by :attr:`section_model`."""
        kind = cls.section_model if cls.section_model is not None else Any
        return {cls.name: (kind | None, None)}

    @classmethod
    def flag_rows(cls, results: dict[str, Any]) -> list[dict[str, str]]:
        """One ``{where, code, message}`` per sanity flag in the task's results section(s)."""
        return []

    @classmethod
    def summary_json(cls, summary: RunSummary) -> dict[str, Any] | None:
        """The task's part of ``run --json`` and ``show --json``; ``None`` adds nothing."""
        return None

    @staticmethod
    def rows_of(entries: list[dict[str, Any]], where: Any) -> list[dict[str, str]]:
        """``flag_rows`` of entries that carry ``flags``; ``where(entry)`` names the entry."""
        return [{"where": where(e), **flag} for e in entries for flag in e.get("flags", [])]

    @classmethod
    def threat_models(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """The threat models the task's cells ran under (the report's threat table)."""
        return []

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        """The template's context (``section`` in it; a ``data_note`` also shows in the run
        table); ``None`` hides the section. The default: ``results[name]``."""
        return results.get(cls.name)

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """The task's numbers that ``compare`` lines up across runs: one ``{"row", "measure",
        "value", "better"}`` each (``row`` and ``measure`` are display labels, ``value`` a rate in
        [0, 1], ``better`` "higher" or "lower" for the defender). None by default."""
        return []

    @classmethod
    def data_fingerprint(
        cls, results: dict[str, Any], config: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """What the task's numbers were measured on (``compare`` subtracts only runs whose
        fingerprints agree): by default the seed and the ``data`` of the task's config section."""
        config = config or {}
        section = config.get(cls.name)
        if section is None:
            section = (config.get("tasks") or {}).get(cls.name)
        data = section.get("data") if isinstance(section, dict) else None
        return {"seed": results["run"].get("seed"), "data": data}

    @classmethod
    def table(cls, summary: RunSummary) -> Table | None:
        """The terminal table after ``run``; ``None`` prints nothing."""
        return None


TASKS: Registry[type[Task]] = Registry("task")


def register_task(name: str):  # noqa: ANN201
    """Register a task class under ``name`` and add its config keys to the config model."""

    def decorator(cls: type[Task]) -> type[Task]:
        from robustbench_cl.engine import config

        cls.name = name
        TASKS.register(name)(cls)
        for key, spec in cls.config_fields.items():
            if key in config.CONFIG_FIELDS and config.CONFIG_FIELDS[key] != spec:
                raise ValueError(f"task {name!r} redefines the config key {key!r}")
            config.CONFIG_FIELDS[key] = spec
        if cls.section_type is not None and name not in cls.config_fields:
            config.TASK_SECTIONS.add(name)  # its section may be written at the top level
        config.REQUESTED[name] = cls.requested
        config.CONFIG_CHECKS[name] = cls.check_config
        config.SECTION_HINTS[name] = cls.section_hints or (name,)
        return cls

    return decorator


def record_model(kind: str) -> Any:
    """The record model registered for a record ``type`` (``None``: its task declares none)."""
    for name in TASKS.names():
        model = TASKS.get(name).record_models.get(kind)
        if model is not None:
            return model
    return None


def typed(record: dict[str, Any]) -> Any:
    """A stored record as its task's record model (as stored, a dict, when its task declares
    none): what :meth:`RunSummary.of` and a unit's ``inputs`` give a task. Fields a later
    version added are left out; a record that lacks a field its model needs is a one-line
    error naming it."""
    from pydantic import ValidationError

    from robustbench_cl.errors import UserError

    model = record_model(record["type"])
    if model is None:
        return record
    try:
        return model.model_validate(record)
    except ValidationError as error:
        unknown = {e["loc"][0] for e in error.errors() if e["type"] == "extra_forbidden"}
        if unknown and len(unknown) == len(error.errors()):
            return model.model_validate({k: v for k, v in record.items() if k not in unknown})
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UserError(
            "cells.jsonl",
            f"the {record['type']} record {record.get('id')} does not follow {model.__name__} "
            f"({where}: {first['msg']})",
            "it was written by another version of robustbench_cl: read it with that version, "
            "or rerun with --fresh",
        ) from None


def task_classes() -> list[type[Task]]:
    """Every registered task, in the order they run and appear in results and reports (the
    packaged ones register when ``robustbench_cl`` is imported, before any of its modules)."""
    return sorted((TASKS.get(n) for n in TASKS.names()), key=lambda t: (t.order, t.name))


def active_tasks(config: MatrixConfig) -> list[type[Task]]:
    return [cls for cls in task_classes() if cls.section(config) is not None]


def validate_task_sections(config: MatrixConfig) -> MatrixConfig:
    """Validate ``tasks: {name: section}`` with each registered task's ``section_type``."""
    from pydantic import ValidationError

    from robustbench_cl.engine.config import _format_validation_error
    from robustbench_cl.errors import UserError, under_field

    for name, raw in list(config.tasks.items()):
        with under_field(f"tasks.{name}", replace=True):
            task = TASKS.get(name)
        if task.section_type is None or isinstance(raw, task.section_type):
            continue
        try:
            config.tasks[name] = task.section_type.model_validate(raw)
        except ValidationError as error:
            inner = _format_validation_error(error, task.section_type)
            raise UserError(f"tasks.{name}.{inner.field}", inner.problem, inner.fix) from None
    return config


def seeded_shard(seed: int, unit_id: str, shard: int):  # noqa: ANN201
    """The context a shard of a unit runs in, locally or in a worker: torch's global generator
    seeded by (seed, unit, shard), the same in any process and any order, and restored after
    (:func:`robustbench_cl.utils.seeded`). It yields a generator seeded the same, for code that
    takes one. Tasks never call ``torch.manual_seed``; one that needs a stream of its own (a
    classification cell, after its model is built) opens :func:`robustbench_cl.utils.seeded`
    with a seed from ``derive_seed``."""
    from robustbench_cl.utils import derive_seed, seeded

    return seeded(derive_seed(seed, unit_id, "shard", shard))


# ---------------------------------------------------------------------- Ray workers
#: a worker's tasks, kept between the shards it runs (models stay loaded): keyed by the config,
#: the run directory (workers write artifacts there) and the device, and the task's name
_WORKER_TASKS: dict[tuple[str, str], tuple[Task, dict[str, Unit]]] = {}


def run_remote_shard(
    config: dict[str, Any],
    task_module: str,
    task_name: str,
    unit_id: str,
    inputs: dict[str, dict[str, Any]],
    shard: int,
    run_dir: str,
    device: str,
    threads: int,
    home: str,
) -> Any:
    """A Ray task: rebuild the task from the resolved config (once per worker) and run one
    shard of one unit exactly as the local executor would."""
    os.environ["ROBUSTBENCH_CL_HOME"] = home  # the driver's cache, even on a foreign ray.init
    import torch

    from robustbench_cl.engine.config import config_model
    from robustbench_cl.utils import stable_hash

    torch.set_num_threads(threads)
    run = stable_hash({"config": config, "run_dir": run_dir, "device": device})
    key = (run, task_name)
    if key not in _WORKER_TASKS:
        if any(held_run != run for held_run, _ in _WORKER_TASKS):  # one run at a time
            for held, _ in _WORKER_TASKS.values():
                held.close()
            _WORKER_TASKS.clear()
        import importlib

        importlib.import_module(task_module)  # registers a task defined outside the package
        matrix = validate_task_sections(config_model().model_validate(config))
        ctx = RunContext(matrix, Path(run_dir), torch.device(device), driver=False)
        task = TASKS.get(task_name)(ctx)
        _WORKER_TASKS[key] = (task, {unit.id: unit for unit in task.plan()})
    task, units = _WORKER_TASKS[key]
    from robustbench_cl.models.artifacts import collect_artifact_uses

    # the cached artifacts this shard loaded, for the driver's meta.json (a worker that keeps a
    # model loaded reported it with the shard that loaded it)
    started = time.perf_counter()
    with collect_artifact_uses() as used, seeded_shard(task.config.seed, unit_id, shard):
        part = task.run_shard(units[unit_id], {k: typed(v) for k, v in inputs.items()}, shard)
    return {"part": part, "artifacts": used, "seconds": time.perf_counter() - started}
