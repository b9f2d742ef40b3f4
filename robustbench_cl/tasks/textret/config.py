"""The ``textret:`` section of a config, its protocol constants and the typed keys of its units."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from robustbench_cl.engine.config import (
    DefenseConfig,
    ModelConfig,
    SectionAttackConfig,
    StrictConfig,
)

#: bump when the protocol changes (record ids change, so old records are not reused)
PROTOCOL_VERSION = 1


KS = (1, 5, 10, 20)


#: candidates per query that a ranker re-orders (the retriever's top K)
RERANK_K = 20


DEFAULT_THREATS = {
    "hotflip": {"norm": "l0", "eps": 3, "space": "token", "bounds": None},
    "embedding-query": {
        "norm": "l2",
        "eps": 0.5,
        "space": "embedding",
        "bounds": None,
        "eps_relative": True,
    },
    "corpus-poison": {"norm": "none", "eps": 0, "space": "token", "bounds": None},
}


class TextRetDataConfig(StrictConfig):
    """The queries, the corpus and the relevance judgements."""

    #: ``facts[?n=600&seed=0]`` (built in) or ``beir:DIR`` (a local BEIR folder)
    name: str = "facts"
    #: test queries evaluated (the first ones); all when unset
    n_test: int | None = Field(default=None, ge=1)


class TextRetConfig(StrictConfig):
    """Dense text retrieval under attack: a bi-encoder, its fine-tuned defenses and token,
    embedding and corpus-poisoning attacks."""

    data: TextRetDataConfig = Field(default_factory=TextRetDataConfig)
    models: list[ModelConfig] = Field(min_length=1)
    defenses: list[DefenseConfig] = Field(default_factory=lambda: [DefenseConfig()])
    attacks: list[SectionAttackConfig] = Field(default_factory=list)
    #: queries attacked per batch
    batch_size: int = Field(default=32, ge=1)
    #: attacked examples kept per cell for the report
    examples: int = Field(default=3, ge=0, le=12)


@dataclass(frozen=True)
class PairKey:
    """A unit of (model ``mi``, defense ``di``); its subclass says which."""

    mi: int
    di: int


class CleanKey(PairKey):
    """Clean retrieval metrics and per-query ranks."""


class AucKey(PairKey):
    """The score AUC of relevant against other passages."""


class RerankKey(PairKey):
    """AR2's rankers re-ranking the retriever's top ``RERANK_K``."""


@dataclass(frozen=True)
class AttackKey(PairKey):
    """Attack column ``ci`` against the retriever."""

    ci: int


@dataclass(frozen=True)
class PipelineKey(AttackKey):
    """Attack column ``ci`` against the retrieve-then-re-rank pipeline of one ranker."""

    ranker: str
