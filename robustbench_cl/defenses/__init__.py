"""Defenses: training defenses (new weights) and preprocessors (in front of a frozen model)."""

from robustbench_cl.defenses import (  # noqa: F401  (fill the registry)
    at,
    cadv,
    dat,
    dp,
    dualtap,
    llm_inference,
    rae,
    retrieval_ft,
)
from robustbench_cl.defenses.base import Defense, NoDefense, make_defense

__all__ = ["Defense", "NoDefense", "make_defense"]
