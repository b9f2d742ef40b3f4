"""``load_model``: a model spec to a frozen model. Schemes other than ``builtin:`` register
their loaders in :data:`SCHEMES` (the package's ``__init__`` registers the packaged ones)."""

from __future__ import annotations

import torch

from robustbench_cl.errors import UserError
from robustbench_cl.models.wrappers import Frozen
from robustbench_cl.paths import check_spec_paths
from robustbench_cl.registry import MODELS, Registry
from robustbench_cl.utils import parse_spec

SCHEMES: Registry = Registry("model scheme")


def check_spec(spec: str) -> None:
    """Resolve the scheme and builtin name of a spec, and check its local paths exist, without
    building the model."""
    scheme, target, options = parse_spec(spec)
    if scheme == "builtin":
        MODELS.get(target)
    else:
        SCHEMES.get(scheme)
    check_spec_paths(spec, "model")  # a missing folder or checkpoint: now, not when it loads
    if scheme == "robustbench":  # the checkpoint inside DIR, in RobustBench's layout
        from robustbench_cl.models.robustbench import check_robustbench_spec

        check_robustbench_spec(target, options)


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
