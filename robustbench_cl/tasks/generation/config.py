"""The ``generation:`` section of a config."""

from __future__ import annotations

from pydantic import Field

from robustbench_cl.engine.config import StrictConfig


class GenerationConfig(StrictConfig):
    """Ask every (model, defense) to draw each class; an independent judge scores the samples."""

    #: samples drawn per class
    n_per_class: int = Field(default=20, ge=2)
    #: gradient-ascent steps on the class logit from each seed image
    steps: int = Field(default=40, ge=0)
    #: the l2 step of each ascent step
    step_size: float = Field(default=0.2, gt=0)
    #: the independent classifier that scores the drawings (a model spec)
    judge: str = "builtin:digits-judge"
    #: the classes to draw (``robustbench-cl generate`` draws one: ``--class 3``); every class
    #: when omitted
    classes: list[int] | None = Field(default=None, min_length=1)
