"""The ``retrieval:`` section of a config, and the typed keys of its units."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, field_validator

from robustbench_cl.engine.config import AttackConfig, ModelConfig, StrictConfig


class RetrievalDataConfig(StrictConfig):
    """The image-caption data: test images to evaluate, training images to fit on."""

    #: ``shapes`` (built in) or ``karpathy:DIR`` (COCO / Flickr30K in the Karpathy JSON layout)
    name: str = "shapes"
    #: test images evaluated (all their captions come with them); all when omitted
    n: int | None = Field(default=None, ge=2)
    #: training images the universal attacks are fitted on; all when omitted
    train_n: int | None = Field(default=None, ge=2)


class RetrievalConfig(StrictConfig):
    """Image-text retrieval under universal perturbations.

    Every attack is fitted once per source model and eps, on the training split; the one
    perturbation is then evaluated on every model (source == target: white-box; otherwise
    transfer). Metrics: TR/IR R@K and ASR@K over the previously-correct set.
    """

    data: RetrievalDataConfig = Field(default_factory=RetrievalDataConfig)
    models: list[ModelConfig] = Field(min_length=1)
    attacks: list[AttackConfig] = Field(min_length=1)
    #: the k of the recall@k and ASR@k columns
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    #: example retrievals kept per white-box cell for the report
    examples: int = Field(default=3, ge=0, le=12)
    #: test images per shard of an evaluation (each one Ray task under ``--executor ray``:
    #: the shard perturbs and encodes its images and their captions); one shard when omitted
    shard_size: int | None = Field(default=None, ge=1)

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError("ks must be a non-empty list of integers >= 1")
        return sorted(set(value))


@dataclass(frozen=True)
class CleanKey:
    """A model's clean retrieval unit."""

    model: ModelConfig


@dataclass(frozen=True)
class FitKey:
    """The unit that fits one universal perturbation on its source model."""

    fit_id: str


@dataclass(frozen=True)
class EvalKey:
    """The unit that evaluates one fitted perturbation on one target model."""

    fit_id: str
    target: ModelConfig
