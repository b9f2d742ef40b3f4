"""The screens task: one unit per (protector, eps) column, its screens split into shards."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import torch

from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.engine.task import RunContext, Task, Unit, register_task
from robustbench_cl.tasks.screens.config import (
    PROTOCOL_VERSION,
    ColumnKey,
    ScreenProtectorConfig,
    ScreensConfig,
    expand_screens,
    protector_label,
)
from robustbench_cl.tasks.screens.evaluate import Evaluation
from robustbench_cl.tasks.screens.report import _screens, screens_table
from robustbench_cl.tasks.screens.results import ScreenRecord, ScreensSection, _screens_section
from robustbench_cl.utils import stable_hash

logger = logging.getLogger(__name__)


@register_task("screens")
class ScreensTask(Evaluation, Task):
    """Screenshot privacy: PII routers (OCR) against protectors, the ``screens:`` section."""

    order = 50

    record_types = ("screen",)
    record_models: ClassVar[dict[str, Any]] = {"screen": ScreenRecord}
    section_model: ClassVar[Any] = ScreensSection
    config_fields = {"screens": (ScreensConfig | None, None)}
    data_sources = (
        ("privscreen-mini[?n=160&seed=0]", "rendered phone screens with PII boxes"),
        ("privscreen:DIR", "PrivScreen's folder layout (images + annotations)"),
    )
    template = Path(__file__).parent.parent / "templates" / "screens.html.j2"
    title = "Screens"

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        assert self.config.screens is not None
        self.section: ScreensConfig = self.config.screens
        self.run_dir = Path(ctx.run_dir)
        self.device = torch.device("cpu")  # the OCR engines run on the CPU
        self.progress = ctx.progress
        self._data = None
        self._surrogate = None
        self._routers: dict[str, Any] = {}

    # ---------------------------------------------------------------- ids
    def record_id(self, column: dict[str, Any]) -> str:
        protector: ScreenProtectorConfig = column["config"]
        self.data()
        return stable_hash(
            {
                "screens": self.section.data.model_dump(),
                "test_screens": self._test_key,
                "protector": protector.protector,
                "name": protector.name,
                "params": protector.params,
                "examples": self.section.examples,
                "eps": column["eps"],
                "routers": list(self.section.routers),
                "seed": self.config.seed,
                "version": PROTOCOL_VERSION,
                # only when set: the ids of unsharded runs stay what they were
                **({"shard_size": self.section.shard_size} if self.section.shard_size else {}),
            }
        )

    def shard_range(self, shard: int) -> tuple[int, int]:
        n = len(self.data()[2])
        size = self.section.shard_size or n
        return shard * size, min(n, (shard + 1) * size)

    def plan(self) -> list[Unit]:
        self.columns = expand_screens(self.config)
        n = len(self.data()[2])
        shards = -(-n // (self.section.shard_size or n))
        units = []
        for index, column in enumerate(self.columns):
            label = f"screens | {protector_label(column['config'].label, column['eps'])}"
            units.append(Unit(self.record_id(column), label, key=ColumnKey(index), shards=shards))
        return units

    def batches(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> int:
        return len(self.data()[2]) * len(self.section.routers)

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        return self.shard_part(self.columns[unit.key.index], unit.id, shard)

    def merge(self, unit: Unit, inputs: dict[str, dict[str, Any]], parts: list[Any]) -> dict:
        return self.cell_record(self.columns[unit.key.index], unit.id, parts)

    # ------------------------------------------------------------------ results
    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        return {"screens": _screens_section(summary)} if summary.of("screen") else None

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """Per protector and router: PII leak rate (lower) and task success rate (higher)."""
        rows = []
        for row in (results.get("screens") or {}).get("rows", []):
            where = f"{row['label']} / {row['router']}"
            for key, name, better in (("plr", "PLR", "lower"), ("tsr", "TSR", "higher")):
                if (row.get(key) or {}).get("rate") is not None:
                    rows.append(
                        {"row": where, "measure": name, "value": row[key]["rate"], "better": better}
                    )
        return rows

    @classmethod
    def flag_rows(cls, results: dict[str, Any]) -> list[dict[str, str]]:
        section = results.get("screens") or {}
        return cls.rows_of(section.get("rows", []), lambda row: f"{row['label']} | {row['router']}")

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        return _screens(results, run_dir)

    @classmethod
    def table(cls, summary: RunSummary):  # noqa: ANN206
        return screens_table(summary)
