"""Models: wrappers, adapters and the built-in zoo, behind one spec string.

Specs: ``builtin:NAME``, ``torchvision:NAME?weights=PATH``, ``timm:NAME?checkpoint=PATH``,
``python:package.module:factory``, ``open_clip:ARCH?checkpoint=PATH``, ``hf:DIR`` (a local
causal LM), ``robustbench:NAME?dataset=cifar10&threat=Linf&dir=DIR`` (a RobustBench zoo entry
from its local checkpoint) and ``wrapped:OUT`` (a preprocessor in front of a model, written by
``robustbench-cl wrap``).
"""

from __future__ import annotations

from robustbench_cl.models import (  # noqa: F401  (registers the zoo)
    biencoder,
    builtin,
    foundation,
    llm,
    vlp,
)
from robustbench_cl.models.adapters import python_model, timm_model, torchvision_model
from robustbench_cl.models.autoencoder import wrapped_model
from robustbench_cl.models.loading import SCHEMES, check_spec, load_model
from robustbench_cl.models.robustbench import robustbench_model
from robustbench_cl.models.wrappers import Frozen, Normalize, Preprocessed
from robustbench_cl.utils import parse_spec  # noqa: F401  (the spec syntax; models.parse_spec)

SCHEMES.register("torchvision")(torchvision_model)
SCHEMES.register("timm")(timm_model)
SCHEMES.register("python")(python_model)
SCHEMES.register("wrapped")(wrapped_model)
SCHEMES.register("open_clip")(vlp.open_clip_model)
SCHEMES.register("hf")(llm.hf_model)
SCHEMES.register("robustbench")(robustbench_model)
SCHEMES.register("sentence-transformers")(biencoder.sentence_transformers_model)


__all__ = [
    "SCHEMES",
    "Frozen",
    "Normalize",
    "Preprocessed",
    "check_spec",
    "load_model",
    "parse_spec",
]
