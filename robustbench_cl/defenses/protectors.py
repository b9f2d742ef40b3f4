"""Screen protectors compared in the ``screens:`` section: DualTAP and its baselines, registered.

- ``clean``: the screenshot as it is;
- ``noise``: uniform noise in [-eps, eps] on every pixel;
- ``pgd``: a global PGD per screenshot, no generator and no attention: random start in the
  eps ball, signed steps that raise the surrogate's CTC loss on the PII text under the same EOT
  as DualTAP (the privacy loss only; nothing keeps the task readable);
- ``blackout``: the oracle: every PII box painted black (unbounded, a reference point);
- ``dualtap``: the trained generator (:mod:`robustbench_cl.defenses.dualtap`).

Each is a :class:`ScreenProtector` in :data:`PROTECTORS`: ``build(params, eps, seed, field)``
validates a config entry (once, before any work) and returns what ``protect`` needs;
``protect(x, screens, eps, generator, built, context)`` maps screens in [0, 1] to protected
screens in [0, 1]. The engine quantises them to 8 bits (what a screenshot is) and checks the eps
bound on the quantised pixels. A new protector is one more registered class here.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Protocol

import torch

from robustbench_cl.errors import UserError, under_field
from robustbench_cl.registry import Registry

PROTECTORS: Registry[Any] = Registry("protector")


class ProtectContext(Protocol):
    """What the engine lends a protector: the OCR surrogate, progress, the training screens."""

    progress: Any

    def surrogate(self) -> Any: ...

    def data(self) -> tuple[Any, list, list]: ...

    def reading_screen(self, screen: Any) -> Any: ...


class ScreenProtector:
    """Base: no parameters, no eps, the screen unchanged."""

    name = "clean"
    #: whether the protector is an l-inf bounded perturbation (then ``eps`` is required)
    bounded = False
    #: parameters a config may set, with their minimum (None: any value the class checks)
    params: dict[str, float | None] = {}

    def build(self, params: dict[str, Any], eps: float | None, seed: int, field: str) -> Any:
        for key, value in params.items():
            if key not in self.params:
                raise UserError(
                    f"{field}.params.{key}",
                    f"{self.name} takes no parameter {key!r}",
                    f"use {', '.join(sorted(self.params)) or 'none'} (their meaning: "
                    f"robustbench-cl list protectors {self.name} --params)",
                )
            minimum = self.params[key]
            if minimum is not None and (
                not isinstance(value, int | float) or isinstance(value, bool) or value < minimum
            ):
                raise UserError(
                    f"{field}.params.{key}",
                    f"{key} {value!r} is invalid",
                    f"use a number >= {minimum}",
                )
        return dict(params)

    def protect(
        self,
        x: torch.Tensor,
        screens: list,
        eps: float | None,
        generator: torch.Generator,
        built: Any,
        context: ProtectContext,
    ) -> tuple[torch.Tensor, dict[str, Any] | None]:
        return x, None

    def settings(self, built: Any, eps: float | None = None) -> dict[str, Any]:
        """The resolved settings recorded with the row (beyond the config's params): every
        parameter with the value used, a default or a value derived from ``eps`` included."""
        return {}

    @classmethod
    def describe_parameters(cls) -> list[Any]:
        """``params`` with the meanings of the class docstring's ``Args:`` (``list
        protectors NAME --params``); defaults are those of the function that uses them."""
        from robustbench_cl.registry import describe_parameters

        if not cls.params:
            return []
        if not cls.parameters_from:
            raise TypeError(f"{cls.__name__} has params but names no parameters_from")
        described = {p.name: p for p in describe_parameters(globals()[cls.parameters_from])}
        return [described[name] for name in cls.params]

    #: the name of this module's function whose keyword parameters ``params`` are
    parameters_from: ClassVar[str] = ""


def register_protector(name: str, summary: str):  # noqa: ANN201
    def decorator(cls: type[ScreenProtector]) -> type[ScreenProtector]:
        cls.name = name
        PROTECTORS.register(name, summary)(cls)
        return cls

    return decorator


def make_protector(name: str, field: str = "screens.protectors[]") -> ScreenProtector:
    with under_field(field, replace=True):
        return PROTECTORS.get(name)()


@register_protector("clean", "the screen as it is (the reference row)")
class Clean(ScreenProtector):
    pass


@register_protector(
    "noise", "uniform noise of l-inf size eps over the whole screen (the untrained baseline)"
)
class UniformNoise(ScreenProtector):
    bounded = True

    def protect(self, x, screens, eps, generator, built, context):  # noqa: ANN001, ANN201
        return uniform_noise(x, eps, generator), None


@register_protector(
    "blackout", "the PII boxes painted black, knowing where they are (a privacy ceiling)"
)
class Blackout(ScreenProtector):
    def protect(self, x, screens, eps, generator, built, context):  # noqa: ANN001, ANN201
        return blackout(x, screens), None


@register_protector("pgd", "a global PGD against the EasyOCR surrogate (eps, steps, EOT)")
class GlobalPGD(ScreenProtector):
    bounded = True
    params = {"steps": 1, "eot_samples": 1, "step_size": 1e-9, "box_jitter": 0}
    parameters_from = "global_pgd"

    def settings(self, built, eps=None):  # noqa: ANN001, ANN201
        signature = inspect.signature(global_pgd).parameters
        used = {name: built.get(name, signature[name].default) for name in self.params}
        if used["step_size"] is None and eps is not None:
            used["step_size"] = 2.5 * eps / used["steps"]  # as global_pgd derives it
            used["step_size_rule"] = "2.5 * eps / steps"
        return used

    def protect(self, x, screens, eps, generator, built, context):  # noqa: ANN001, ANN201
        from robustbench_cl.attacks.base import step_hook

        chunks = []
        for begin in range(0, len(screens), 8):
            with step_hook(context.progress.step):
                chunks.append(
                    global_pgd(
                        context.surrogate(),
                        x[begin : begin + 8],
                        screens[begin : begin + 8],
                        eps,
                        generator,
                        **built,
                    )
                )
        return torch.cat(chunks), None


@register_protector("dualtap", "DualTAP: a trained generator, privacy and task losses")
class DualTAPProtector(ScreenProtector):
    bounded = True

    def build(self, params, eps, seed, field):  # noqa: ANN001, ANN201
        from robustbench_cl.defenses import make_defense

        params = dict(params)
        if "eps" in params:
            raise UserError(f"{field}.params.eps", "eps is set outside params", "use eps:")
        source = params.pop("attention_from", "truth")
        if source not in ("truth", "reading"):
            raise UserError(
                f"{field}.params.attention_from",
                f"unknown attention source {source!r}",
                "use truth (the screen's PII boxes) or reading (EasyOCR's reading)",
            )
        params.setdefault("seed", seed)
        with under_field(field):
            return {"defense": make_defense("dualtap", eps=eps, **params), "reading": source}

    def settings(self, built, eps=None):  # noqa: ANN001, ANN201
        return built["defense"].settings()

    @classmethod
    def describe_parameters(cls) -> list[Any]:
        from robustbench_cl.registry import DEFENSES, Parameter

        source = Parameter(
            "attention_from",
            "'truth'",
            "str",
            "where the attention over a test screen comes from: `truth` (its PII boxes, as the "
            "paper evaluates) or `reading` (EasyOCR's reading of the clean screen)",
        )
        trained = [p for p in DEFENSES.parameters("dualtap") if p.name != "eps"]  # eps: its own key
        return [source, *trained]

    def protect(self, x, screens, eps, generator, built, context):  # noqa: ANN001, ANN201
        from robustbench_cl.defenses.dualtap import screens_key
        from robustbench_cl.models.artifacts import artifact_exists

        data, train, _ = context.data()
        defense = built["defense"]
        key = screens_key(data.name, train)
        verb = "loading" if artifact_exists(defense.screens_cache_path(key)) else "training"
        context.progress.message(f"{verb} DualTAP ({defense.steps} steps)")
        protector = defense.fit_screens(train, key, context.surrogate(), context.progress.step)
        chunks = []
        for begin in range(0, len(screens), 8):
            part, batch = x[begin : begin + 8], screens[begin : begin + 8]
            if built["reading"] == "reading":  # what `protect` can do: no truth, EasyOCR's reading
                batch = [context.reading_screen(screen) for screen in batch]
            attention = defense.attention_for(context.surrogate(), part, batch)
            with torch.no_grad():
                chunks.append(protector(part, attention))
        return torch.cat(chunks), getattr(protector, "training_info", None)


# ---------------------------------------------------------------------- the operations
def uniform_noise(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    noise = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x) * eps
    return (x + noise).clamp(0, 1)


def blackout(x: torch.Tensor, screens: list) -> torch.Tensor:  # noqa: ANN001
    out = x.clone()
    for index, screen in enumerate(screens):
        for item in screen.pii:
            if item.box is not None:
                x0, y0, x1, y1 = item.box
                out[index, :, y0:y1, x0:x1] = 0
    return out


def global_pgd(
    surrogate,  # noqa: ANN001
    x: torch.Tensor,
    screens: list,
    eps: float,
    generator: torch.Generator,
    steps: int = 20,
    eot_samples: int = 2,
    step_size: float | None = None,
    box_jitter: float = 2.0,
) -> torch.Tensor:
    """Untargeted PGD on the privacy CTC loss, l-inf ball over the whole screen.

    Args:
        steps: PGD iterations.
        eot_samples: random crops of each PII box averaged per step (expectation over
            transformation: the router reads boxes it finds itself, never exactly ours).
        step_size: the step; `None` uses `2.5 * eps / steps`.
        box_jitter: the crops' random shift in pixels.
    """
    from robustbench_cl.data.privscreen import boxes_tensor, text_targets
    from robustbench_cl.models.ocr import CropEOT

    items, texts = text_targets(screens, "privacy")
    if not items:
        return x.clone()
    boxes = boxes_tensor(items, x.device)
    eot = CropEOT(box_jitter)
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    delta = ((torch.rand(x.shape, generator=generator) * 2 - 1) * eps).to(x)
    delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = sum(
            eot(surrogate, x + delta, boxes, texts, generator).sum() for _ in range(eot_samples)
        )
        (gradient,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + alpha * gradient.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
    return (x + delta.detach()).clamp(0, 1)


def quantise(x: torch.Tensor) -> torch.Tensor:
    """To 8-bit pixel values and back: what a saved screenshot holds."""
    return (x * 255).round() / 255
