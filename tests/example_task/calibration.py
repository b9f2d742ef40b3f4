"""An example task written against the Task protocol, outside the package: adding a task is this
one module plus its template (``calibration.html.j2``); nothing in the runner, the results, the
report, the table or the CLI names it.

``calibration`` measures each classifier's expected calibration error (ECE, equal-width
confidence bins) on the evaluation data, with the samples split into shards (each one Ray task
under ``--executor ray``) that the driver merges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

from robustbench_cl.data import load_dataset
from robustbench_cl.engine.records import Record
from robustbench_cl.engine.task import Task, Unit, register_task
from robustbench_cl.models import load_model
from robustbench_cl.utils import stable_hash


class CalibrationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(min_length=1)
    data: str = "digits"
    n: int = Field(default=120, ge=1)
    bins: int = Field(default=10, ge=2)
    shard_size: int = Field(default=50, ge=1)


class CalibrationRecord(Record):
    """One model's calibration: checked by the engine loop before it is appended."""

    type: Literal["calibration"]
    model: str
    n: int = Field(ge=1)
    ece: float = Field(ge=0.0, le=1.0)
    accuracy: float = Field(ge=0.0, le=1.0)
    bins: list[int]


@register_task("calibration")
class CalibrationTask(Task):
    """Expected calibration error of each model (an example task from the tests)."""

    section_type = CalibrationConfig
    record_types = ("calibration",)
    record_models = {"calibration": CalibrationRecord}
    template = Path(__file__).with_name("calibration.html.j2")
    title = "Calibration"
    schema = {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["model", "ece", "accuracy", "n"],
            "properties": {"ece": {"type": "number", "minimum": 0, "maximum": 1}},
        },
    }

    def plan(self) -> list[Unit]:
        section: CalibrationConfig = self.section(self.config)
        self.settings = section
        self.x, self.y = load_dataset(section.data, split="test").tensors(n=section.n)
        self.ranges = [
            (start, min(start + section.shard_size, len(self.y)))
            for start in range(0, len(self.y), section.shard_size)
        ]
        return [
            Unit(
                stable_hash({"calibration": spec, "data": section.data, "n": section.n}),
                f"calibration | {spec}",
                key=spec,
                shards=len(self.ranges),
                field=f"tasks.calibration.models[{index}]",
            )
            for index, spec in enumerate(section.models)
        ]

    def run_shard(self, unit: Unit, inputs: dict[str, Any], shard: int) -> dict[str, Any]:
        start, end = self.ranges[shard]
        model = load_model(unit.key).eval()
        with torch.no_grad():
            probabilities = model(self.x[start:end]).softmax(1)
        confidence, predicted = probabilities.max(1)
        bins = torch.clamp((confidence * self.settings.bins).long(), max=self.settings.bins - 1)
        correct = (predicted == self.y[start:end]).float()
        count = torch.bincount(bins, minlength=self.settings.bins)
        return {
            "count": count.tolist(),
            "confidence": torch.bincount(bins, confidence, self.settings.bins).tolist(),
            "correct": torch.bincount(bins, correct, self.settings.bins).tolist(),
        }

    def merge(self, unit: Unit, inputs: dict[str, Any], parts: list[Any]) -> dict[str, Any]:
        count = torch.tensor([p["count"] for p in parts]).sum(0)
        confidence = torch.tensor([p["confidence"] for p in parts]).sum(0)
        correct = torch.tensor([p["correct"] for p in parts]).sum(0)
        n = int(count.sum())
        gap = (confidence - correct).abs().sum() / n
        return CalibrationRecord(
            type="calibration",
            id=unit.id,
            model=unit.key,
            n=n,
            ece=float(gap),
            accuracy=float(correct.sum() / n),
            bins=count.tolist(),
        )

    @classmethod
    def summarize(cls, summary, results):  # noqa: ANN001, ANN206
        records = summary.of(*cls.record_types)
        keys = ("model", "n", "ece", "accuracy")
        rows = [{k: getattr(r, k) for k in keys} for r in records]  # typed CalibrationRecords
        return {"calibration": rows} if rows else None

    @classmethod
    def flag_rows(cls, results):  # noqa: ANN001, ANN206
        return [
            {"where": row["model"], "code": "poorly_calibrated", "message": "ECE above 0.2"}
            for row in results.get("calibration") or []
            if row["ece"] > 0.2
        ]

    @classmethod
    def render(cls, results, run_dir):  # noqa: ANN001, ANN206
        rows = results.get("calibration")
        return {"rows": rows} if rows else None

    @classmethod
    def table(cls, summary):  # noqa: ANN001, ANN206
        records = summary.of(*cls.record_types)
        if not records:
            return None
        table = Table(title="calibration: ECE", title_justify="left")
        for name in ("model", "ECE", "accuracy %"):
            table.add_column(name)
        for r in records:
            table.add_row(r.model, f"{r.ece:.3f}", f"{100 * r.accuracy:.1f}")
        return table
