"""Image-text retrieval under universal perturbations: fit once per source, evaluate on all.

Records (appended to ``cells.jsonl`` like every other cell):

- ``retrieval_clean``, once per model: clean TR/IR R@K and the per-query correct sets;
- ``retrieval``, per (source model, attack, eps, target model): R@K under the perturbation and
  ASR@K = |correct_clean@K minus correct_adv@K| / |correct_clean@K| (the C-PGC paper's
  definition, counted over the previously-correct queries), with Wilson intervals.

TR (image -> text) queries are images: one is correct at K when any of its captions ranks in
the top K of all test captions. IR (text -> image) queries are captions: correct at K when
their image ranks in the top K of all test images.
"""

from __future__ import annotations

import logging
import shutil
import time
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from rich.table import Table
from safetensors.torch import load_file, save_file
from torch import nn

from robustbench_cl.attacks import make_attack
from robustbench_cl.attacks.base import apply_budget, step_hook
from robustbench_cl.attacks.universal import (
    UniversalAttack,
    UniversalPerturbation,
    encode_images,
    encode_texts,
)
from robustbench_cl.engine import sanity
from robustbench_cl.engine.config import MatrixConfig, ModelConfig, RetrievalConfig
from robustbench_cl.engine.metrics import wilson_interval
from robustbench_cl.engine.records import AttackRef, ModelRef, Record, ThreatRef
from robustbench_cl.engine.results import attack_entry, model_label
from robustbench_cl.engine.results_models import STRICT, Flag
from robustbench_cl.engine.summary import RunSummary, threat_label
from robustbench_cl.engine.task import RunContext, Task, Unit, register_task
from robustbench_cl.errors import UserError, under_field
from robustbench_cl.paths import inside
from robustbench_cl.report.media import (
    EXAMPLES_PER_CELL,
    EXAMPLES_TOTAL,
    eps_label,
    png_data_uri,
    run_file,
)
from robustbench_cl.report.table import percent
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import derive_seed, stable_hash

logger = logging.getLogger(__name__)

#: bump when a universal attack's algorithm changes: fit ids (and so saved perturbations) change
FIT_VERSION = 2


@torch.no_grad()
def retrieval_correct(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    caption_image: torch.Tensor,
    ks: list[int],
) -> dict[str, dict[int, torch.Tensor]]:
    """Per-query correctness at each K: ``{"tr": {K: (N,) bool}, "ir": {K: (M,) bool}}``."""
    similarity = image_features @ text_features.T  # (N images, M captions)
    owners = caption_image.to(similarity.device)
    n_images, n_texts = similarity.shape
    k_max = max(ks)
    top_texts = similarity.topk(min(k_max, n_texts), dim=1).indices  # (N, K)
    text_hit = owners[top_texts] == torch.arange(n_images, device=owners.device).unsqueeze(1)
    top_images = similarity.T.topk(min(k_max, n_images), dim=1).indices  # (M, K)
    image_hit = top_images == owners.unsqueeze(1)
    return {
        "tr": {k: text_hit[:, :k].any(1) for k in ks},
        "ir": {k: image_hit[:, :k].any(1) for k in ks},
    }


def attack_success_rate(clean: torch.Tensor, adversarial: torch.Tensor) -> tuple[int, int]:
    """(broken, previously correct): ASR = broken / previously correct."""
    return int((clean & ~adversarial).sum()), int(clean.sum())


def _features(model: nn.Module, data, images: torch.Tensor):  # noqa: ANN001, ANN202
    return encode_images(model, images), encode_texts(model, data.captions)


def _vlp(model: nn.Module, spec: str, field: str) -> nn.Module:
    inner = getattr(model, "model", model)
    if not (hasattr(inner, "encode_image") and hasattr(inner, "encode_text")):
        raise UserError(
            field,
            f"{spec} is not an image-text model (it has no encode_image/encode_text)",
            "use builtin:tinyclip, builtin:tinyclip-wide or open_clip:ARCH?checkpoint=PATH",
        )
    return inner


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
                        "threat": threat.to_dict(),
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
class RetrievalTask(Task):
    """Image-text retrieval under universal perturbations: fit once per source, evaluate on all."""

    order = 30

    record_types = ("retrieval_clean", "retrieval_fit", "retrieval")
    data_sources = (
        ("shapes", "built-in captioned shapes (retrieval.data.name)"),
        ("karpathy:DIR", "COCO / Flickr30K in the Karpathy JSON layout"),
    )
    template = Path(__file__).parent / "templates" / "retrieval.html.j2"
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
        if not self.ctx.resume and self.ctx.driver:  # --fresh: saved perturbations go too
            shutil.rmtree(inside(self.run_dir, "artifacts", "uap"), ignore_errors=True)
        self.fits = {fit["id"]: fit for fit in fits}
        self.models = {m.spec: m for m in self.section.models}
        units = [
            Unit(self._clean_id(m), f"{m.label} | retrieval clean", "clean", m.spec)
            for m in self.section.models
        ]
        for fit in fits:
            label = (
                f"{fit['source'].label} | fit {fit['attack'].label} | {fit['threat'].describe()}"
            )
            units.append(Unit(fit["id"], label, "fit", fit["id"]))
            for target in self.section.models:
                label = (
                    f"{fit['source'].label} -> {target.label} | {fit['attack'].label} | "
                    f"{fit['threat'].describe()}"
                )
                needs = (fit["id"], self._clean_id(target))
                key = (fit["id"], target.spec)
                units.append(
                    Unit(self._cell_id(fit, target), label, "cell", key, needs, self._shards())
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
        if unit.kind == "clean":
            record = self.clean_record(self.models[unit.key], unit.id)
        elif unit.kind == "fit":
            fit = self.fits[unit.key]
            perturbation = self.fit(fit)
            record = {
                "type": "retrieval_fit",
                "id": unit.id,
                "perturbation": f"artifacts/uap/{fit['id']}.safetensors",
                "word": perturbation.word,
                "forward": perturbation.forward,
                "backward": perturbation.backward,
                "wall_time": perturbation.fit_time,
            }
        else:
            fit_id, spec = unit.key
            record = self.cell_part(self.fits[fit_id], self.models[spec], shard)
        self.progress.batch_done()
        return record

    def merge(self, unit: Unit, inputs: dict[str, dict[str, Any]], parts: list[Any]) -> dict:
        if unit.kind != "cell":
            return super().merge(unit, inputs, parts)
        fit_id, spec = unit.key
        fit, target = self.fits[fit_id], self.models[spec]
        clean = inputs[self._clean_id(target)]
        return self.cell_record(fit, target, self.fit(fit), unit.id, clean, parts)

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
        if not (summary.retrieval_clean or summary.retrieval):
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
                            "cell": f"clean {key.upper()}",
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
                            "cell": f"{cell['attack']['label']} {cell['threat_label']} ASR {key.upper()}",
                            "value": asr["asr"],
                            "better": "lower",
                        }
                    )
        return rows

    @classmethod
    def flag_rows(cls, section: dict[str, Any]) -> list[dict[str, str]]:
        return cls.rows_of(
            section.get("cells", []),
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

    # ------------------------------------------------------------------ clean and attacked
    def clean_record(self, config: ModelConfig, record_id: str) -> dict[str, Any]:
        start = time.perf_counter()
        model = self.model(config)
        images, texts = _features(model, self.test, self.test.images.to(self.device))
        correct = retrieval_correct(images, texts, self.test.caption_image, self.section.ks)
        return {
            "type": "retrieval_clean",
            "id": record_id,
            "model": config.model_dump(),
            "n_images": len(self.test),
            "n_captions": len(self.test.captions),
            "recall": _recall(correct),
            "correct": {
                side: {str(k): v.int().tolist() for k, v in ks.items()}
                for side, ks in correct.items()
            },
            "wall_time": time.perf_counter() - start,
        }

    def fit(self, fit: dict[str, Any]) -> UniversalPerturbation:
        """Fit the perturbation, or load it from this run's artifacts (a resumed run)."""
        if fit["id"] in self._loaded:  # an evaluation's shards and its merge share one load
            return self._loaded[fit["id"]]
        path = inside(self.run_dir, "artifacts", "uap", f"{fit['id']}.safetensors")
        if path.exists() and path.with_suffix(".json").exists():  # the JSON is written first
            info = _read_fit_info(path)
            self._loaded[fit["id"]] = UniversalPerturbation(
                load_file(str(path))["delta"],
                word=info.get("word"),
                history=info.get("history", []),
                fit_time=info.get("fit_time", 0.0),
                forward=info.get("forward", 0),
                backward=info.get("backward", 0),
                diagnostics=info.get("diagnostics", {}),
            )
            return self._loaded[fit["id"]]
        source = self.model(fit["source"])
        seed = derive_seed(self.config.seed, fit["id"], "fit")
        with step_hook(self.progress.step):
            perturbation = fit["built"].fit(source, self.train, fit["threat"], seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_fit_info(path, perturbation)  # first: a delta without its info is never reused
        save_file({"delta": perturbation.delta.contiguous()}, str(path))
        return perturbation

    def cell_part(self, fit: dict[str, Any], target: ModelConfig, shard: int) -> dict[str, Any]:
        """One shard of an evaluation: the target's features of its perturbed test images and
        of their (perturbed) captions."""
        start = time.perf_counter()
        perturbation = self.fit(fit)
        model = self.model(target)
        begin, end = self._shard_range(shard)
        clean_images = self.test.images[begin:end].to(self.device)
        adversarial = perturbation.apply(clean_images)
        fit["threat"].check(adversarial, clean_images)  # every test image, every cell
        owner = self.test.caption_image
        index = ((owner >= begin) & (owner < end)).nonzero().flatten()
        captions = self._adversarial_captions(fit, perturbation)
        return {
            "images": encode_images(model, adversarial).cpu(),
            "caption_index": index,
            # None for a shard whose images have no captions (they are image queries only)
            "texts": encode_texts(model, [captions[i] for i in index.tolist()]).cpu()
            if len(index)
            else None,
            "wall": time.perf_counter() - start,
        }

    def cell_record(
        self,
        fit: dict[str, Any],
        target: ModelConfig,
        perturbation: UniversalPerturbation,
        record_id: str,
        clean_record: dict[str, Any],
        parts: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """An evaluation's record from its shards' features, in shard order."""
        threat: ThreatModel = fit["threat"]
        white_box = fit["source"].spec == target.spec
        access = "white-box" if white_box else "transfer"
        start = time.perf_counter()
        model = self.model(target)
        images = torch.cat([p["images"] for p in parts]).to(self.device)
        encoded = [p for p in parts if p["texts"] is not None]
        texts = encoded[0]["texts"].new_empty(len(self.test.captions), encoded[0]["texts"].shape[1])
        for part in encoded:
            texts[part["caption_index"]] = part["texts"]
        texts = texts.to(self.device)
        captions = self._adversarial_captions(fit, perturbation)
        correct = retrieval_correct(images, texts, self.test.caption_image, self.section.ks)
        clean = clean_record["correct"]
        asr: dict[str, dict[str, Any]] = {}
        for side, by_k in correct.items():
            for k, adv in by_k.items():
                before = torch.tensor(clean[side][str(k)], dtype=torch.bool, device=adv.device)
                broken, total = attack_success_rate(before, adv)
                asr[f"{side}@{k}"] = {
                    "asr": broken / total if total else None,
                    "broken": broken,
                    "previously_correct": total,
                    "ci95": list(wilson_interval(broken, total)) if total else None,
                }
        examples = []
        clean_images = self.test.images.to(self.device)
        if white_box and self.section.examples:
            clean_texts = (
                _features(model, self.test, clean_images[:1])[1] if perturbation.word else texts
            )
            examples = self._examples(model, images, texts, clean_texts, correct, captions)
        example_images = None
        if examples:  # the report shows them; it never recomputes the data
            chosen = torch.tensor([e["image"] for e in examples])
            example_images = f"artifacts/retrieval/{record_id}.safetensors"
            example_path = inside(self.run_dir, example_images)
            example_path.parent.mkdir(parents=True, exist_ok=True)
            save_file(
                {
                    "clean": self.test.images[chosen].contiguous(),
                    "adversarial": perturbation.apply(clean_images[chosen.to(self.device)])
                    .cpu()
                    .contiguous(),
                },
                str(example_path),
            )
        relative = f"artifacts/uap/{fit['id']}.safetensors"
        return {
            "type": "retrieval",
            "id": record_id,
            "fit_id": fit["id"],
            "source": fit["source"].model_dump(),
            "target": target.model_dump(),
            "access": access,
            "attack": {
                "attack": fit["attack"].attack,
                "name": fit["attack"].name,
                "params": fit["attack"].params,
                "settings": fit["built"].settings(),
            },
            "threat": dict(threat.to_dict(), access=access),
            "recall": _recall(correct),
            "asr": asr,
            "outcomes": {
                side: {"1": by_k[min(by_k)].int().tolist()} for side, by_k in correct.items()
            },
            "delta_linf": float(perturbation.delta.abs().max()),
            "word": perturbation.word,
            "fit": {
                "wall_time": perturbation.fit_time,
                "forward": perturbation.forward,
                "backward": perturbation.backward,
                "history": perturbation.history,
                "diagnostics": perturbation.diagnostics,
                "train_images": len(self.train),
                "test_images": len(self.test),
            },
            "perturbation": relative,
            "examples": examples,
            "example_images": example_images,
            "wall_time": sum(p["wall"] for p in parts) + time.perf_counter() - start,
        }

    def _adversarial_captions(
        self, fit: dict[str, Any], perturbation: UniversalPerturbation
    ) -> list[str]:
        """The test captions, with the universal word in place of each caption's most important
        word (for the *source* model: the attacker does not query the target)."""
        captions = list(self.test.captions)
        if not perturbation.word:
            return captions
        from robustbench_cl.attacks.text_uap import important_words, insert_word

        source = fit["source"].spec
        if source not in self._important:
            self._important[source] = important_words(self.model(fit["source"]), captions)
        return [
            insert_word(c, i, perturbation.word) for c, i in zip(captions, self._important[source])
        ]

    def _examples(
        self, model, adv_images, texts, clean_texts, correct, captions
    ) -> list[dict[str, Any]]:  # noqa: ANN001
        """Test images whose clean top-1 caption was right and that the perturbation broke.
        With a universal word, the adversarial captions are the perturbed ones."""
        wanted = self.section.examples
        clean = self._clean_top1(model, clean_texts)
        broken = (
            torch.tensor(clean["ok"], device=adv_images.device) & ~correct["tr"][min(correct["tr"])]
        )
        chosen = broken.nonzero().flatten()[:wanted].tolist()
        adv_top = (adv_images @ texts.T).argmax(1).tolist()
        return [
            {
                "image": index,
                "clean_caption": self.test.captions[clean["top"][index]],
                "adversarial_caption": captions[adv_top[index]],
                "true_caption": self.test.captions[self.test.captions_of()[index][0]],
            }
            for index in chosen
        ]

    def _clean_top1(self, model, texts) -> dict[str, list]:  # noqa: ANN001
        images = encode_images(model, self.test.images.to(self.device))
        top = (images @ texts.T).argmax(1)
        owners = self.test.caption_image.to(top.device)
        return {
            "top": top.tolist(),
            "ok": (owners[top] == torch.arange(len(top), device=top.device)).tolist(),
        }


def _recall(correct: dict[str, dict[int, torch.Tensor]]) -> dict[str, float]:
    return {
        f"{side}@{k}": float(v.float().mean())
        for side, by_k in correct.items()
        for k, v in by_k.items()
    }


def _write_fit_info(path: Path, perturbation: UniversalPerturbation) -> None:
    import json

    info = {
        "word": perturbation.word,
        "history": perturbation.history,
        "fit_time": perturbation.fit_time,
        "forward": perturbation.forward,
        "backward": perturbation.backward,
        "diagnostics": perturbation.diagnostics,
    }
    path.with_suffix(".json").write_text(json.dumps(info, indent=2))


def _read_fit_info(path: Path) -> dict[str, Any]:
    import json

    info_path = path.with_suffix(".json")
    return json.loads(info_path.read_text()) if info_path.exists() else {}


def _retrieval_section(summary: RunSummary) -> dict[str, Any]:
    """Clean R@K per model and one entry per (source, attack, eps, target); the per-query
    outcomes stay in cells.jsonl."""
    clean = [
        {
            "id": r["id"],
            "model": model_label(r["model"]),
            "model_spec": r["model"]["spec"],
            "n_images": r["n_images"],
            "n_captions": r["n_captions"],
            "recall": r["recall"],
        }
        for r in summary.retrieval_clean
    ]
    keys = (
        "access",
        "recall",
        "asr",
        "delta_linf",
        "word",
        "fit",
        "perturbation",
        "examples",
        "example_images",
    )
    cells = [
        {
            "id": r["id"],
            "fit_id": r["fit_id"],
            "source": model_label(r["source"]),
            "target": model_label(r["target"]),
            "attack": attack_entry(r["attack"]),
            "threat": r["threat"],
            "threat_label": threat_label(r["threat"]),
        }
        | {key: r[key] for key in keys}
        for r in summary.retrieval
    ]
    flags = sanity.retrieval_flags(cells)
    for cell in cells:
        cell["flags"] = flags[cell["id"]]
    return {"clean": clean, "cells": cells}


def _retrieval(results: dict[str, Any], run_dir: Path | None) -> dict[str, Any] | None:
    section = results.get("retrieval")
    if not section:
        return None
    from safetensors.torch import load_file

    order = {"tr": 0, "ir": 1}
    first = section["clean"][0]["recall"] if section["clean"] else {}
    recall_keys = sorted(first, key=lambda k: (order[k.split("@")[0]], int(k.split("@")[1])))
    cells = section["cells"]
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    perturbations, examples, seen = [], [], set()
    for cell in cells:
        key = (cell["attack"]["label"], eps_label(cell["threat"]), cell["source"])
        row = rows.setdefault(
            key, {"attack": key[0], "threat": key[1], "source": key[2], "by_target": {}}
        )
        row["by_target"][cell["target"]] = cell
        path = run_file(run_dir, cell["perturbation"])
        if path is not None and cell["fit_id"] not in seen:
            seen.add(cell["fit_id"])
            delta = load_file(str(path))["delta"]
            eps = float(cell["threat"]["eps"]) or 1.0
            amplified = (delta / (2 * eps) + 0.5).clamp(0, 1)
            label = f"{cell['attack']['label']} on {cell['source']}, {eps_label(cell['threat'])}"
            perturbations.append({"label": label, "image": png_data_uri(amplified)})
        images = run_file(run_dir, cell.get("example_images"))
        if images is not None and len(examples) < EXAMPLES_TOTAL:
            stacks = load_file(str(images))
            for index, example in enumerate(cell["examples"][:EXAMPLES_PER_CELL]):
                examples.append(
                    dict(
                        example,
                        cell=f"{cell['source']} | {cell['attack']['label']} | {eps_label(cell['threat'])}",
                        clean_image=png_data_uri(stacks["clean"][index]),
                        adversarial_image=png_data_uri(stacks["adversarial"][index]),
                    )
                )
    asr_keys = sorted(
        {k for c in cells for k in c["asr"]},
        key=lambda k: (order[k.split("@")[0]], int(k.split("@")[1])),
    )
    train_n = cells[0]["fit"].get("train_images") if cells else None
    return {
        "clean": section["clean"],
        "recall_keys": recall_keys,
        "asr_keys": asr_keys,
        "targets": [c["model"] for c in section["clean"]],
        "rows": list(rows.values()),
        "cells": [dict(c, eps_label=eps_label(c["threat"])) for c in cells],
        "perturbations": perturbations,
        "examples": examples,
        "train_note": f"{train_n} images" if train_n else "all of it",
        "data_note": (
            f"{section['clean'][0]['n_images']} test images, {section['clean'][0]['n_captions']} captions"
            if section["clean"]
            else "-"
        ),
    }


def retrieval_table(summary: RunSummary) -> Table | None:
    """ASR@1 (TR / IR, %) of each universal perturbation: source x target, plus clean R@1."""
    if not summary.retrieval:
        return None
    targets = [r["model"].get("name") or r["model"]["spec"] for r in summary.retrieval_clean]
    table = Table(
        title="retrieval: ASR@1 % (TR / IR) over the previously-correct queries; * white-box",
        title_justify="left",
    )
    table.add_column("attack", justify="left")
    table.add_column("eps", justify="right")
    table.add_column("source", justify="left")
    for target in targets:
        table.add_column(target, justify="right")
    rows: dict[tuple[str, float, str], dict[str, str]] = {}
    for record in summary.retrieval:
        attack = record["attack"].get("name") or record["attack"]["attack"]
        source = record["source"].get("name") or record["source"]["spec"]
        target = record["target"].get("name") or record["target"]["spec"]
        tr, ir = record["asr"].get("tr@1", {}).get("asr"), record["asr"].get("ir@1", {}).get("asr")
        mark = "*" if record["access"] == "white-box" else ""
        key = (attack, record["threat"]["eps"], source)
        rows.setdefault(key, {})[target] = f"{percent(tr)} / {percent(ir)}{mark}"
    for (attack, eps, source), cells in rows.items():
        table.add_row(attack, f"{eps * 255:.3g}/255", source, *[cells.get(t, "-") for t in targets])
    clean = "  ".join(
        f"{t}: TR@1 {percent(r['recall'].get('tr@1'))} IR@1 {percent(r['recall'].get('ir@1'))}"
        for t, r in zip(targets, summary.retrieval_clean)
    )
    table.caption = f"clean: {clean}"
    return table


# ---------------------------------------------------------------------- results.json
class RetrievalClean(BaseModel):
    model_config = STRICT
    id: str
    model: str
    model_spec: str
    n_images: int
    n_captions: int
    recall: dict[str, float]


class RetrievalAccess(Enum):
    WHITE_BOX = "white-box"
    TRANSFER = "transfer"


class RetrievalAsr(BaseModel):
    asr: float | None
    broken: int
    previously_correct: int
    ci95: list[Any] | None


class RetrievalCell(BaseModel):
    model_config = STRICT
    id: str
    fit_id: str
    source: str
    target: str
    attack: dict[str, Any]
    threat: dict[str, Any]
    threat_label: str
    access: RetrievalAccess
    recall: dict[str, float]
    asr: dict[str, RetrievalAsr]
    delta_linf: float
    word: str | None
    fit: dict[str, Any]
    perturbation: str
    examples: list[dict[str, Any]]
    example_images: str | None
    flags: list[Flag]
    """
    sanity flags (docs/sanity-checks.md)
    """


class RetrievalSection(BaseModel):
    """
    Image-text retrieval under universal perturbations: clean R@K per model, and per (source, attack, eps, target) R@K and ASR@K over the previously-correct queries.
    """

    model_config = STRICT
    clean: list[RetrievalClean]
    cells: list[RetrievalCell]


RetrievalTask.section_model = RetrievalSection


# ---------------------------------------------------------------------- cells.jsonl
class RetrievalCleanRecord(Record):
    """A target model's clean image-text retrieval: R@K and per-query correctness."""

    type: Literal["retrieval_clean"]
    model: ModelRef
    n_images: int = Field(..., ge=0)
    n_captions: int = Field(..., ge=0)
    recall: dict[str, float]
    correct: dict[str, dict[str, list[int]]]
    """per direction (``tr``, ``ir``) and k: 1 where the query retrieves a match in its top k"""


class RetrievalFitRecord(Record):
    """A universal perturbation fitted on one source model, saved in the run directory."""

    type: Literal["retrieval_fit"]
    perturbation: str
    word: str | None
    forward: int = Field(..., ge=0)
    backward: int = Field(..., ge=0)


class RetrievalRecord(Record):
    """One fitted perturbation judged on one target: R@K and ASR@K over the correct queries."""

    type: Literal["retrieval"]
    fit_id: str
    source: ModelRef
    target: ModelRef
    attack: AttackRef
    threat: ThreatRef
    access: Literal["white-box", "transfer"]
    recall: dict[str, float]
    asr: dict[str, dict[str, Any]]
    outcomes: dict[str, dict[str, list[int]]]
    delta_linf: float
    word: str | None
    fit: dict[str, Any]
    perturbation: str
    examples: list[dict[str, Any]]
    example_images: str | None


RetrievalTask.record_models = {
    "retrieval_clean": RetrievalCleanRecord,
    "retrieval_fit": RetrievalFitRecord,
    "retrieval": RetrievalRecord,
}
