"""Recall@K of a dual encoder, and the retrieval task's work on models: clean recall, fitting a
universal perturbation and evaluating it on a target, shard by shard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from robustbench_cl.attacks.base import step_hook
from robustbench_cl.attacks.features import encode_images, encode_texts
from robustbench_cl.attacks.universal import (
    UniversalPerturbation,
)
from robustbench_cl.engine.config import ModelConfig
from robustbench_cl.engine.metrics import wilson_interval
from robustbench_cl.errors import UserError
from robustbench_cl.paths import inside
from robustbench_cl.tasks.retrieval.results import (
    RetrievalCleanRecord,
    RetrievalFitRecord,
    RetrievalRecord,
)
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import derive_seed


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


class Evaluation:
    """The retrieval task's work on models (mixed into it): clean recall, fitting a universal perturbation, and one evaluation of it on a target, shard by shard."""

    # ------------------------------------------------------------------ clean and attacked
    def clean_record(self, config: ModelConfig, record_id: str) -> dict[str, Any]:
        model = self.model(config)
        images, texts = _features(model, self.test, self.test.images.to(self.device))
        correct = retrieval_correct(images, texts, self.test.caption_image, self.section.ks)
        return RetrievalCleanRecord(
            type="retrieval_clean",
            id=record_id,
            model=config.model_dump(),
            n_images=len(self.test),
            n_captions=len(self.test.captions),
            recall=_recall(correct),
            correct={
                side: {str(k): v.int().tolist() for k, v in ks.items()}
                for side, ks in correct.items()
            },
        )

    def fit(self, fit: dict[str, Any]) -> UniversalPerturbation:
        """Fit the perturbation on its source model and save it under ``artifacts/uap/`` (the
        fit unit; a resumed run has its record, and the evaluations read the file it names)."""
        source = self.model(fit["source"])
        seed = derive_seed(self.config.seed, fit["id"], "fit")
        with step_hook(self.progress.step):
            perturbation = fit["built"].fit(source, self.train, fit["threat"], seed)
        path = inside(self.run_dir, "artifacts", "uap", f"{fit['id']}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_fit_info(path, perturbation)
        save_file({"delta": perturbation.delta.contiguous()}, str(path))
        self._loaded[fit["id"]] = perturbation
        return perturbation

    def perturbation(
        self, fit: dict[str, Any], record: RetrievalFitRecord
    ) -> UniversalPerturbation:
        """The perturbation the fit unit's record names (read once per process: an evaluation's
        shards and its merge share it)."""
        if fit["id"] not in self._loaded:
            path = inside(self.run_dir, record.perturbation)
            if not path.exists():
                raise UserError(
                    "RUN_DIR",
                    f"{record.perturbation} is missing, but the fit record {record.id} names it",
                    "rerun with --fresh to fit it again",
                )
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

    def cell_part(
        self,
        fit: dict[str, Any],
        perturbation: UniversalPerturbation,
        target: ModelConfig,
        shard: int,
    ) -> dict[str, Any]:
        """One shard of an evaluation: the target's features of its perturbed test images and
        of their (perturbed) captions."""
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
        }

    def cell_record(
        self,
        fit: dict[str, Any],
        target: ModelConfig,
        perturbation: UniversalPerturbation,
        record_id: str,
        clean_record: RetrievalCleanRecord,
        parts: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """An evaluation's record from its shards' features, in shard order."""
        threat: ThreatModel = fit["threat"]
        white_box = fit["source"].spec == target.spec
        access = "white-box" if white_box else "transfer"
        model = self.model(target)
        images = torch.cat([p["images"] for p in parts]).to(self.device)
        encoded = [p for p in parts if p["texts"] is not None]
        texts = encoded[0]["texts"].new_empty(len(self.test.captions), encoded[0]["texts"].shape[1])
        for part in encoded:
            texts[part["caption_index"]] = part["texts"]
        texts = texts.to(self.device)
        captions = self._adversarial_captions(fit, perturbation)
        correct = retrieval_correct(images, texts, self.test.caption_image, self.section.ks)
        clean = clean_record.correct
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
        return RetrievalRecord(
            type="retrieval",
            id=record_id,
            fit_id=fit["id"],
            source=fit["source"].model_dump(),
            target=target.model_dump(),
            access=access,
            attack={
                "attack": fit["attack"].attack,
                "name": fit["attack"].name,
                "params": fit["attack"].params,
                "settings": fit["built"].settings(),
            },
            threat=dict(threat.to_dict(), access=access),
            recall=_recall(correct),
            asr=asr,
            outcomes={
                side: {"1": by_k[min(by_k)].int().tolist()} for side, by_k in correct.items()
            },
            delta_linf=float(perturbation.delta.abs().max()),
            word=perturbation.word,
            fit={
                "wall_time": perturbation.fit_time,
                "forward": perturbation.forward,
                "backward": perturbation.backward,
                "history": perturbation.history,
                "diagnostics": perturbation.diagnostics,
                "train_images": len(self.train),
                "test_images": len(self.test),
            },
            perturbation=relative,
            examples=examples,
            example_images=example_images,
        )

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
