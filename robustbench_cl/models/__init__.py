"""Models: wrappers, adapters and the built-in zoo, behind one spec string.

Specs: ``builtin:NAME``, ``torchvision:NAME?weights=PATH``, ``timm:NAME?checkpoint=PATH``,
``python:package.module:factory``, ``open_clip:ARCH?checkpoint=PATH``, ``hf:DIR`` (a local causal LM), and ``wrapped:OUT`` (a preprocessor in front of a model,
written by ``robustbench-cl wrap``).
"""

from __future__ import annotations

import torch

from robustbench_cl.errors import UserError
from robustbench_cl.models import (  # noqa: F401  (registers the zoo)
    biencoder,
    builtin,
    foundation,
    llm,
    vlp,
)
from robustbench_cl.models.adapters import python_model, timm_model, torchvision_model
from robustbench_cl.models.autoencoder import wrapped_model
from robustbench_cl.models.wrappers import Frozen, Normalize, Preprocessed
from robustbench_cl.registry import MODELS, Registry
from robustbench_cl.utils import parse_spec  # noqa: F401  (the spec syntax; models.parse_spec)

SCHEMES: Registry = Registry("model scheme")
SCHEMES.register("torchvision")(torchvision_model)
SCHEMES.register("timm")(timm_model)
SCHEMES.register("python")(python_model)
SCHEMES.register("wrapped")(wrapped_model)
SCHEMES.register("open_clip")(vlp.open_clip_model)
SCHEMES.register("hf")(llm.hf_model)
SCHEMES.register("sentence-transformers")(biencoder.sentence_transformers_model)


def check_spec(spec: str) -> None:
    """Resolve the scheme and builtin name of a spec without building the model."""
    scheme, target, _ = parse_spec(spec)
    if scheme == "builtin":
        MODELS.get(target)
    else:
        SCHEMES.get(scheme)


def load_model(spec: str, device: str | torch.device | None = None) -> Frozen:
    """Resolve a model spec to a frozen model in eval mode whose inputs live in [0, 1]."""
    scheme, target, options = parse_spec(spec)
    if scheme == "builtin":
        if options:
            raise UserError("model", f"builtin models take no options, got {sorted(options)}")
        model = MODELS.get(target)()
    else:
        model = SCHEMES.get(scheme)(target, options)
    frozen = Frozen(model)
    if device is not None:
        frozen = frozen.to(device)
    return frozen


__all__ = ["Frozen", "Normalize", "Preprocessed", "load_model", "parse_spec", "SCHEMES"]
