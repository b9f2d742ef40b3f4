"""Adapters that run any torchattacks attack (``torchattacks:NAME``) or any ART evasion attack
(``art:NAME``) under our protocol: same threat model, same counters, same check.

These are baselines and cross-checks. Their inner loops are theirs (ART converts to NumPy on
every call); our own attacks are the fast path.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from robustbench_cl.attacks.base import Attack
from robustbench_cl.errors import UserError
from robustbench_cl.threat import ThreatModel

#: query-only attacks of torchattacks and ART: the "black-box beats white-box" sanity flag
#: compares them with the gradient attacks at the same threat
GRADIENT_FREE = frozenset(
    {
        "Square",
        "SquareAttack",
        "OnePixel",
        "Pixle",
        "SPSA",
        "HopSkipJump",
        "BoundaryAttack",
        "SimBA",
        "ZooAttack",
        "GeoDA",
        "SignOPTAttack",
    }
)


class TorchattacksAttack(Attack):
    """``torchattacks.<NAME>(model, eps=threat.eps, **params)`` as one of our attacks."""

    supports_bf16 = False  # NumPy has no bfloat16

    norms = frozenset({"linf", "l2", "l1", "l0"})

    def __init__(self, attack_name: str, **params: Any) -> None:
        import torchattacks

        if not hasattr(torchattacks, attack_name):
            import difflib

            close = difflib.get_close_matches(attack_name, torchattacks.__all__, n=3)
            raise UserError(
                "attack",
                f"torchattacks has no attack {attack_name!r}",
                f"did you mean {', '.join(close)}?" if close else "see torchattacks.__all__",
            )
        _check_params(f"torchattacks:{attack_name}", getattr(torchattacks, attack_name), params)
        self.attack_name = attack_name
        self.params = params
        self.name = f"torchattacks:{attack_name}"
        self.uses_gradients = attack_name not in GRADIENT_FREE

    def supports(self, threat: ThreatModel, task: str = "classification") -> str | None:
        reason = super().supports(threat, task)
        if reason is None and threat.bounds != (0.0, 1.0):
            reason = "torchattacks needs inputs in bounds (0, 1)"
        return reason

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel
    ) -> torch.Tensor:
        import torchattacks

        cls = getattr(torchattacks, self.attack_name)
        kwargs = dict(self.params)
        if "eps" in inspect.signature(cls.__init__).parameters:
            kwargs.setdefault("eps", threat.eps)
        attack = cls(model, **kwargs)
        if threat.targeted:
            attack.set_mode_targeted_by_label(quiet=True)
        return attack(x, y).detach()


class ARTAttack(Attack):
    """``art.attacks.evasion.<NAME>(PyTorchClassifier(model), eps=..., norm=..., **params)``."""

    supports_bf16 = False  # NumPy has no bfloat16

    norms = frozenset({"linf", "l2", "l1"})

    def __init__(self, attack_name: str, batch_size: int = 512, **params: Any) -> None:
        import art.attacks.evasion as evasion

        if not hasattr(evasion, attack_name):
            raise UserError(
                "attack", f"ART has no evasion attack {attack_name!r}", "see art.attacks.evasion"
            )
        _check_params(f"art:{attack_name}", getattr(evasion, attack_name), params)
        self.attack_name = attack_name
        self.batch_size = batch_size
        self.params = params
        self.name = f"art:{attack_name}"
        self.uses_gradients = attack_name not in GRADIENT_FREE

    def supports(self, threat: ThreatModel, task: str = "classification") -> str | None:
        reason = super().supports(threat, task)
        if reason is None and threat.bounds is None:
            reason = "ART needs finite clip values (threat.bounds)"
        return reason

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel
    ) -> torch.Tensor:
        import art.attacks.evasion as evasion
        import numpy as np
        from art.estimators.classification import PyTorchClassifier

        with torch.no_grad():
            n_classes = model(x[:1]).shape[1]
        classifier = PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=n_classes,
            clip_values=threat.bounds,
            device_type="gpu" if x.is_cuda else "cpu",
        )
        cls = getattr(evasion, self.attack_name)
        signature = inspect.signature(cls.__init__).parameters
        kwargs = dict(self.params)
        norm_value = {"linf": np.inf, "l2": 2, "l1": 1}[threat.norm]
        for key, value in (
            ("eps", threat.eps),
            ("norm", norm_value),
            ("targeted", threat.targeted),
            ("batch_size", self.batch_size),
            ("verbose", False),
        ):
            if key in signature:
                kwargs.setdefault(key, value)
        attack = cls(classifier, **kwargs)
        adv = attack.generate(x=x.detach().cpu().numpy(), y=y.detach().cpu().numpy())
        return torch.from_numpy(np.asarray(adv)).to(device=x.device, dtype=x.dtype)


def _check_params(spec: str, cls: type, params: dict[str, Any]) -> None:
    """Refuse unknown parameter names now, not deep inside the first call."""
    signature = inspect.signature(cls.__init__)
    accepts_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    allowed = [
        name
        for name in signature.parameters
        if name not in ("self", "model", "estimator", "classifier")
    ]
    unknown = sorted(set(params) - set(allowed))
    if unknown and not accepts_any:
        raise UserError(
            f"{spec}.{unknown[0]}", "unknown parameter", f"allowed: {', '.join(allowed)}"
        )


def make_external(spec: str, params: dict[str, Any]) -> Attack:
    library, _, name = spec.partition(":")
    if library == "torchattacks":
        return TorchattacksAttack(name, **params)
    if library == "art":
        return ARTAttack(name, **params)
    raise UserError(
        "attack", f"unknown attack library {library!r}", "use torchattacks:NAME or art:NAME"
    )
