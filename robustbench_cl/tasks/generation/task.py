"""The generation task: one unit per (model, defense) that draws every class and is judged."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from safetensors.torch import save_file

from robustbench_cl.attacks.base import step_hook
from robustbench_cl.data import load_dataset
from robustbench_cl.defenses import make_defense
from robustbench_cl.engine.config import MatrixConfig
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.engine.task import Unit, register_task
from robustbench_cl.errors import UserError
from robustbench_cl.paths import inside
from robustbench_cl.report.media import save_png
from robustbench_cl.tasks.generation.audit import GenerationAudit, sample_grid
from robustbench_cl.tasks.generation.config import GenerationConfig
from robustbench_cl.tasks.generation.report import _generation, generation_table
from robustbench_cl.tasks.generation.results import (
    GenerationEntry,
    GenerationRecord,
    _generation_entry,
    _pair_generations,
)
from robustbench_cl.tasks.pairs import PairTask, check_models


@register_task("generation")
class GenerationTask(PairTask):
    """Generation columns: each pair's classifier as a sampler, scored by an independent judge."""

    order = 20

    record_types = ("generation",)
    record_models: ClassVar[dict[str, Any]] = {"generation": GenerationRecord}
    section_model: ClassVar[Any] = list[GenerationEntry]
    template = Path(__file__).parent.parent / "templates" / "generation.html.j2"
    title = "Generation"

    config_fields = {"generation": (GenerationConfig | None, None)}

    @classmethod
    def section(cls, config: MatrixConfig) -> Any:
        return config.generation if config.models else None

    @classmethod
    def check_config(cls, config: MatrixConfig) -> None:
        check_models(config, config.generation is not None)

    def plan(self) -> list[Unit]:
        self._audit: GenerationAudit | None = None
        classes = self.config.generation.classes if self.config.generation else None
        if classes is not None:  # before any work, not when the first generation unit runs
            n_classes = self.train_data().n_classes
            bad = [c for c in classes if not 0 <= c < n_classes]
            if bad:
                raise UserError(
                    "generation.classes",
                    f"{bad[0]} is not a class of {self.config.data.name}",
                    f"use 0..{n_classes - 1}",
                )
        units = []
        for pair in self.pairs:
            assert pair.generation_id is not None
            label = f"{pair.model.label} | {pair.defense.label} | generation"
            units.append(Unit(pair.generation_id, label, key=pair, needs=(pair.id,)))
        return units

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        config = self.config.generation
        assert config is not None
        pair = unit.key
        model = self.model(pair)
        if self._audit is None:
            from robustbench_cl.models import load_model

            evaluation = load_dataset(self.config.data.name, split=self.config.data.split)
            judge = load_model(config.judge)
            self._audit = GenerationAudit(
                config, self.train_data(), evaluation, judge, self.config.seed, self.device
            )
        defense = make_defense(pair.defense.defense, **pair.defense.params)
        log = None
        if hasattr(defense, "training_log"):
            log = defense.training_log(pair.model.spec, self.train_data())
        with step_hook(self.progress.step):
            metrics, samples = self._audit.run(model, log)
        grid = sample_grid(samples, config.n_per_class, len(self._audit.classes))
        relative = f"artifacts/generation/{unit.id}.png"
        save_png(grid, inside(self.run_dir, relative))
        kept = f"artifacts/generation/{unit.id}.safetensors"
        save_file(
            {"samples": samples.detach().cpu().contiguous(), "targets": self._audit.targets.cpu()},
            inside(self.run_dir, kept),
        )
        self.progress.batch_done()
        return GenerationRecord(
            type="generation",
            id=unit.id,
            pair_id=pair.id,
            model=pair.model.model_dump(),
            defense=pair.defense.model_dump(),
            judge=config.judge,
            **metrics,
            grid=relative,
            samples=kept,
        )

    def close(self) -> None:
        super().close()
        self._audit = None

    # ------------------------------------------------------------------ results
    @classmethod
    def data_fingerprint(
        cls, results: dict[str, Any], config: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The whole evaluation split (its FID reference), the training split, the seed."""
        data = (config or {}).get("data") or results["run"].get("data") or {}
        return {
            "seed": results["run"].get("seed"),
            "name": data.get("name"),
            "split": data.get("split"),
            "train_split": data.get("train_split", "train"),
        }

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """The judge's intended-class accuracy of each pair's samples."""
        return [
            {
                "row": entry["pair"],
                "measure": "generation intended-class accuracy",
                "value": entry["intended_class_accuracy"],
                "better": "higher",
            }
            for entry in results.get("generation") or []
            if entry.get("intended_class_accuracy") is not None
        ]

    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        entries = [_generation_entry(r, name) for name, r in _pair_generations(summary)]
        return {"generation": entries} if entries else None

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        return _generation(results, run_dir)

    @classmethod
    def table(cls, summary: RunSummary):  # noqa: ANN206
        return generation_table(summary)
