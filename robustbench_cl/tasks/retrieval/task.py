"""The retrieval task: plan a clean unit per model, a fit unit per (source, attack, eps) and an
evaluation unit per fit and target; run them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from robustbench_cl.attacks import make_attack
from robustbench_cl.attacks.base import apply_budget
from robustbench_cl.attacks.universal import (
    UniversalAttack,
    UniversalPerturbation,
)
from robustbench_cl.engine.config import MatrixConfig, ModelConfig
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.engine.task import RunContext, Task, Unit, register_task
from robustbench_cl.errors import UserError, under_field
from robustbench_cl.tasks.retrieval.config import CleanKey, EvalKey, FitKey, RetrievalConfig
from robustbench_cl.tasks.retrieval.evaluate import Evaluation, _vlp
from robustbench_cl.tasks.retrieval.report import _retrieval, retrieval_table
from robustbench_cl.tasks.retrieval.results import (
    RetrievalCleanRecord,
    RetrievalFitRecord,
    RetrievalRecord,
    RetrievalSection,
    _retrieval_section,
)
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import stable_hash

logger = logging.getLogger(__name__)


#: bump when a universal attack's algorithm changes: fit ids (and so saved perturbations) change
FIT_VERSION = 2


def expand_retrieval(config: MatrixConfig) -> list[dict[str, Any]]:
    """Validate the retrieval section; one entry per fitted perturbation (source, attack, eps)."""
    from robustbench_cl.models import check_spec

    section = config.retrieval
    assert section is not None
    for index, model in enumerate(section.models):
        with under_field(f"retrieval.models[{index}].spec", replace=True):
            check_spec(model.spec)
    labels = [m.label for m in section.models]
    if len(set(labels)) != len(labels):
        raise UserError(
            "retrieval.models[].name", "two models share a name", "give each a distinct `name`"
        )
    fits = []
    data_key = section.data.model_dump(mode="json")
    for index, attack in enumerate(section.attacks):
        with under_field(f"retrieval.attacks[{index}]"):
            built = make_attack(attack.attack, **attack.params)
        if not isinstance(built, UniversalAttack):
            raise UserError(
                f"retrieval.attacks[{index}]",
                f"{attack.attack} is not a universal attack",
                "use cpgc, pgd-uap or uniform-noise (see `robustbench-cl list attacks`)",
            )
        for eps in attack.threat.eps_values():
            values = attack.threat.model_dump()
            values.update(eps=eps, universal=True)
            with under_field(f"retrieval.attacks[{index}].threat"):
                threat = ThreatModel(**values)
            reason = built.supports(threat, "retrieval")
            if reason is not None:
                raise UserError(
                    f"retrieval.attacks[{index}]", reason, "change the attack or its threat"
                )
            with under_field(f"retrieval.attacks[{index}].threat"):
                apply_budget(built, threat)  # the same budget for every eps of the entry
            for source in section.models:
                fit_id = stable_hash(
                    {
                        "source": source.spec,
                        "attack": attack.attack,
                        "settings": built.settings(),  # resolved defaults, not only the given
                        "version": FIT_VERSION,
                        "threat": threat.key(),
                        "data": data_key,
                        "seed": config.seed,
                    }
                )
                fits.append(
                    {
                        "id": fit_id,
                        "source": source,
                        "attack": attack,
                        "built": built,  # fitting keeps no state: one instance serves every source
                        "threat": threat,
                    }
                )
    return fits


@register_task("retrieval")
class RetrievalTask(Evaluation, Task):
    """Image-text retrieval under universal perturbations: fit once per source, evaluate on all."""

    order = 30

    record_types = ("retrieval_clean", "retrieval_fit", "retrieval")
    config_fields: ClassVar[dict[str, tuple[Any, Any]]] = {
        "retrieval": (RetrievalConfig | None, None)
    }
    record_models: ClassVar[dict[str, Any]] = {
        "retrieval_clean": RetrievalCleanRecord,
        "retrieval_fit": RetrievalFitRecord,
        "retrieval": RetrievalRecord,
    }
    section_model: ClassVar[Any] = RetrievalSection
    data_sources = (
        ("shapes", "built-in captioned shapes (retrieval.data.name)"),
        ("karpathy:DIR", "COCO / Flickr30K in the Karpathy JSON layout"),
    )
    template = Path(__file__).parent.parent / "templates" / "retrieval.html.j2"
    title = "Retrieval"

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        assert self.config.retrieval is not None
        self.section: RetrievalConfig = self.config.retrieval
        self.run_dir = ctx.run_dir
        self.device = ctx.device
        self.progress = ctx.progress
        self._models: dict[str, nn.Module] = {}
        self._important: dict[str, list[int]] = {}
        self._loaded: dict[str, UniversalPerturbation] = {}  # saved perturbations, read once
        self._train = None

    def plan(self) -> list[Unit]:
        from robustbench_cl.data.captions import load_captions

        fits = expand_retrieval(self.config)
        data = self.section.data
        full = load_captions(data.name, "test")
        self.test = full.subset(data.n, self.config.seed)
        #: a strict subset is a seeded draw (before, the first n images): part of the ids, so a
        #: run of the first n is never resumed into one on the drawn images
        self._test_draw = (
            {"test_draw": "seeded", "seed": self.config.seed} if len(self.test) < len(full) else {}
        )
        if max(self.section.ks) >= len(self.test):
            raise UserError(
                "retrieval.ks",
                f"K = {max(self.section.ks)} is not below the {len(self.test)} test images "
                "(every query would be correct at K)",
                "use smaller ks or more test images (retrieval.data.n)",
            )
        self.fits = {fit["id"]: fit for fit in fits}
        units = [
            Unit(self._clean_id(m), f"{m.label} | retrieval clean", key=CleanKey(m))
            for m in self.section.models
        ]
        for fit in fits:
            label = (
                f"{fit['source'].label} | fit {fit['attack'].label} | {fit['threat'].describe()}"
            )
            units.append(Unit(fit["id"], label, key=FitKey(fit["id"])))
            for target in self.section.models:
                label = (
                    f"{fit['source'].label} -> {target.label} | {fit['attack'].label} | "
                    f"{fit['threat'].describe()}"
                )
                needs = (fit["id"], self._clean_id(target))
                key = EvalKey(fit["id"], target)
                units.append(
                    Unit(
                        self._cell_id(fit, target),
                        label,
                        key=key,
                        needs=needs,
                        shards=self._shards(),
                    )
                )
        return units

    def _shards(self) -> int:
        size = self.section.shard_size or len(self.test)
        return -(-len(self.test) // size)

    def _shard_range(self, shard: int) -> tuple[int, int]:
        """Test images ``[begin, end)`` of an evaluation's shard ``shard``."""
        size = self.section.shard_size or len(self.test)
        return shard * size, min(len(self.test), (shard + 1) * size)

    def batches(self, unit: Unit, inputs: dict[str, dict[str, Any]]) -> int:
        return unit.shards

    @property
    def train(self):  # noqa: ANN201
        if self._train is None:
            from robustbench_cl.data.captions import load_captions

            self._train = load_captions(self.section.data.name, "train").subset(
                self.section.data.train_n
            )
        return self._train

    def run_shard(self, unit: Unit, inputs: dict[str, dict[str, Any]], shard: int) -> Any:
        key = unit.key
        if isinstance(key, CleanKey):
            record = self.clean_record(key.model, unit.id)
        elif isinstance(key, FitKey):
            fit = self.fits[key.fit_id]
            perturbation = self.fit(fit)
            record = RetrievalFitRecord(
                type="retrieval_fit",
                id=unit.id,
                perturbation=f"artifacts/uap/{fit['id']}.safetensors",
                word=perturbation.word,
                forward=perturbation.forward,
                backward=perturbation.backward,
            )
        else:
            fit = self.fits[key.fit_id]
            perturbation = self.perturbation(fit, inputs[key.fit_id])
            record = self.cell_part(fit, perturbation, key.target, shard)
        self.progress.batch_done()
        return record

    def merge(self, unit: Unit, inputs: dict[str, dict[str, Any]], parts: list[Any]) -> dict:
        key = unit.key
        if not isinstance(key, EvalKey):
            return super().merge(unit, inputs, parts)
        fit = self.fits[key.fit_id]
        clean = inputs[self._clean_id(key.target)]
        perturbation = self.perturbation(fit, inputs[key.fit_id])
        return self.cell_record(fit, key.target, perturbation, unit.id, clean, parts)

    def _clean_id(self, model: ModelConfig) -> str:
        return stable_hash(
            {
                "retrieval_clean": model.spec,
                "data": self.section.data.model_dump(mode="json"),
                "ks": self.section.ks,
                **self._test_draw,
            }
        )

    def _cell_id(self, fit: dict[str, Any], target: ModelConfig) -> str:
        shards = {"shard_size": self.section.shard_size} if self.section.shard_size else {}
        return stable_hash(
            {
                "fit": fit["id"],
                "target": target.spec,
                "ks": self.section.ks,
                **shards,
                **self._test_draw,
            }
        )

    def model(self, config: ModelConfig) -> nn.Module:
        if config.spec not in self._models:
            from robustbench_cl.models import load_model

            self.progress.message(f"loading {config.label}")
            frozen = load_model(config.spec).to(self.device)
            _vlp(frozen, config.spec, "retrieval.models[].spec")
            self._models[config.spec] = frozen
        return _vlp(self._models[config.spec], config.spec, "retrieval.models[].spec")

    def close(self) -> None:
        self._models.clear()
        self._loaded.clear()

    # ------------------------------------------------------------------ results
    @classmethod
    def summarize(cls, summary: RunSummary, results: dict[str, Any]) -> dict[str, Any] | None:
        if not summary.of("retrieval_clean", "retrieval"):
            return None
        return {"retrieval": _retrieval_section(summary)}

    @classmethod
    def compare_rows(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        """Clean R@1 per model; per cell, the IR@1 and TR@1 attack success rates."""
        section = results.get("retrieval") or {}
        rows = []
        for clean in section.get("clean", []):
            for key in ("ir@1", "tr@1"):
                if clean.get("recall", {}).get(key) is not None:
                    rows.append(
                        {
                            "row": clean["model"],
                            "measure": f"clean {key.upper()}",
                            "value": clean["recall"][key],
                            "better": "higher",
                        }
                    )
        for cell in section.get("cells", []):
            where = f"{cell['source']} -> {cell['target']}"
            for key in ("ir@1", "tr@1"):
                asr = (cell.get("asr") or {}).get(key) or {}
                if asr.get("asr") is not None:
                    rows.append(
                        {
                            "row": where,
                            "measure": f"{cell['attack']['label']} {cell['threat_label']} ASR {key.upper()}",
                            "value": asr["asr"],
                            "better": "lower",
                        }
                    )
        return rows

    @classmethod
    def flag_rows(cls, results: dict[str, Any]) -> list[dict[str, str]]:
        return cls.rows_of(
            (results.get("retrieval") or {}).get("cells", []),
            lambda cell: f"{cell['source']} -> {cell['target']} | {cell['attack']['label']}",
        )

    @classmethod
    def threat_models(cls, results: dict[str, Any]) -> list[dict[str, Any]]:
        return [cell["threat"] for cell in results.get("retrieval", {}).get("cells", [])]

    @classmethod
    def render(cls, results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
        return _retrieval(results, run_dir)

    @classmethod
    def table(cls, summary: RunSummary):  # noqa: ANN206
        return retrieval_table(summary)
