"""The threat model shared by every attack, defense and report.

A :class:`ThreatModel` says what the adversary may change (``norm``, ``eps``, ``space``,
``bounds``), what it wants (``targeted``, ``universal``), what it can see (``access``) and how
much it may spend (``budget``). It owns the geometry, written once per norm: projection onto
the ball, clipping to the valid range, random initialisation inside the ball, the steepest
ascent direction, and the after-the-fact ``check`` that the engine runs on every attack output.

Shapes: perturbations are batched, first dimension = samples. In ``space="embedding"`` the last
dimension is the embedding dimension and the L2 ball is per token.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch

from robustbench_cl.errors import ThreatModelViolation, UserError

Norm = Literal["linf", "l2", "l1", "l0", "none"]
Space = Literal["input", "embedding", "token"]
Access = Literal["white-box", "black-box", "transfer"]

NORMS: tuple[str, ...] = ("linf", "l2", "l1", "l0", "none")
SPACES: tuple[str, ...] = ("input", "embedding", "token")
ACCESSES: tuple[str, ...] = ("white-box", "black-box", "transfer")

_DIVISION_GUARD = 1e-12


@dataclass(frozen=True)
class Budget:
    """How much an attack may spend. ``None`` means "the attack's own default"."""

    steps: int | None = None
    restarts: int | None = None
    queries: int | None = None
    eot_samples: int | None = None

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"budget.{item.name}", f"must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ThreatModel:
    """What the adversary may do. Frozen, hashable and serialised into every result."""

    norm: Norm = "linf"
    eps: float = 8 / 255
    space: Space = "input"
    bounds: tuple[float, float] | None = (0.0, 1.0)
    targeted: bool = False
    universal: bool = False
    access: Access = "white-box"
    budget: Budget = field(default_factory=Budget)
    eps_relative: bool = False
    #: how the budget is written for a reader (``"8/255"``): set when eps is given as a
    #: fraction; a display label only, never part of the threat model's identity or cache keys
    eps_label: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise UserError("norm", f"unknown norm {self.norm!r}", f"use one of {', '.join(NORMS)}")
        if self.space not in SPACES:
            raise UserError(
                "space", f"unknown space {self.space!r}", f"use one of {', '.join(SPACES)}"
            )
        if self.access not in ACCESSES:
            raise UserError(
                "access", f"unknown access {self.access!r}", f"use one of {', '.join(ACCESSES)}"
            )
        if isinstance(self.eps, str):
            eps, label = parse_budget(self.eps, "eps")
            object.__setattr__(self, "eps_label", self.eps_label or label)
        else:
            try:
                eps = float(self.eps)
            except (TypeError, ValueError):
                raise UserError(
                    "eps", f"must be a number or a fraction like 8/255, got {self.eps!r}"
                ) from None
        if not math.isfinite(eps) or eps < 0:
            raise UserError("eps", f"must be a finite number >= 0, got {self.eps!r}")
        object.__setattr__(self, "eps", eps)
        if self.bounds is not None:
            try:
                low, high = (float(b) for b in self.bounds)
            except (TypeError, ValueError):
                raise UserError(
                    "bounds", f"must be two numbers (low, high), got {self.bounds!r}"
                ) from None
            if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
                raise UserError(
                    "bounds", f"must be two finite numbers low < high, got {self.bounds!r}"
                )
            object.__setattr__(self, "bounds", (low, high))
            if self.norm == "linf" and self.space == "input" and eps > high - low:
                raise UserError(
                    "eps",
                    f"linf eps {eps:g} is larger than the bounds allow (width {high - low:g})",
                    f"use eps <= {high - low:g}",
                )
        if self.eps_relative and self.space != "embedding":
            raise UserError("eps_relative", "only applies to space='embedding'", "remove it")
        if self.norm == "l0" and eps != int(eps):
            raise UserError("eps", f"an l0 eps counts coordinates, got {eps:g}", "use an integer")
        if isinstance(self.budget, dict):
            object.__setattr__(self, "budget", _budget_from_dict(self.budget))

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """As records hold it: the identity (:meth:`key`) and, when set, ``eps_label``."""
        data = self.key()
        if self.eps_label is not None:
            data["eps_label"] = self.eps_label
        return data

    def key(self) -> dict[str, Any]:
        """What the threat model is, for ids and cache keys: without the display label, so
        ``8/255`` and ``0.03137254901960784`` are one threat model."""
        data = asdict(self)
        data.pop("eps_label")
        data["bounds"] = list(self.bounds) if self.bounds is not None else None
        return data

    @property
    def eps_text(self) -> str:
        """The budget as a reader sees it: the fraction as written, else ``eps`` (``%g``)."""
        return self.eps_label or f"{self.eps:g}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThreatModel:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"threat.{unknown[0]}", "unknown key", f"allowed keys: {', '.join(sorted(known))}"
            )
        values = dict(data)
        if values.get("bounds") is not None:
            values["bounds"] = tuple(values["bounds"])
        if isinstance(values.get("budget"), dict):
            values["budget"] = _budget_from_dict(values["budget"])
        return cls(**values)

    def describe(self) -> str:
        """Short human label, e.g. ``linf eps=0.1`` or ``linf eps=8/255``."""
        label = f"{self.norm} eps={self.eps_text}"
        if self.eps_relative:
            label += " (relative)"
        if self.targeted:
            label += " targeted"
        if self.universal:
            label += " universal"
        return label

    # ----------------------------------------------------------------- geometry
    def absolute_eps(self, embedding_scale: float | torch.Tensor | None = None) -> Any:
        """The radius in the attacked space; relative eps is scaled by the mean token norm."""
        if not self.eps_relative:
            return self.eps
        if embedding_scale is None:
            raise UserError(
                "eps_relative",
                "a relative eps needs the mean token-embedding norm",
                "pass embedding_scale=...",
            )
        return self.eps * embedding_scale

    def _flat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rows over which the norm is taken: per sample in input space, per token otherwise."""
        if self.space == "embedding":
            return tensor.reshape(-1, tensor.shape[-1])
        return tensor.reshape(tensor.shape[0], -1)

    def norm_of(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample (or per-token, in embedding space) size of ``delta`` in this norm."""
        rows = self._flat(delta)
        if self.norm == "linf":
            return rows.abs().amax(dim=1)
        if self.norm == "l2":
            return rows.norm(p=2, dim=1)
        if self.norm == "l1":
            return rows.abs().sum(dim=1)
        if self.norm == "l0":
            return (rows != 0).sum(dim=1).to(delta.dtype)
        return torch.zeros(rows.shape[0], dtype=delta.dtype, device=delta.device)

    def project(
        self, delta: torch.Tensor, embedding_scale: float | torch.Tensor | None = None
    ) -> torch.Tensor:
        """Euclidean projection of ``delta`` onto the eps ball (exact for linf, l2 and l1)."""
        eps = self.absolute_eps(embedding_scale)
        if self.norm == "none":
            return delta
        if self.norm == "linf":
            return delta.clamp(-eps, eps)
        rows = self._flat(delta)
        if self.norm == "l2":
            norms = rows.norm(p=2, dim=1, keepdim=True)
            factor = torch.clamp(eps / (norms + _DIVISION_GUARD), max=1.0)
            return (rows * factor).reshape(delta.shape)
        if self.norm == "l1":
            return _project_l1(rows, eps).reshape(delta.shape)
        # l0: keep the eps largest coordinates of each row
        k = int(eps)
        if k >= rows.shape[1]:
            return delta
        if k == 0:
            return torch.zeros_like(delta)
        keep = torch.zeros_like(rows, dtype=torch.bool)
        keep.scatter_(1, rows.abs().topk(k, dim=1).indices, True)  # exactly k, even on ties
        return torch.where(keep, rows, torch.zeros_like(rows)).reshape(delta.shape)

    def clamp_to_bounds(self, x: torch.Tensor) -> torch.Tensor:
        if self.bounds is None:
            return x
        return x.clamp(self.bounds[0], self.bounds[1])

    def clip(
        self,
        x_adv: torch.Tensor,
        x: torch.Tensor,
        embedding_scale: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Bring ``x_adv`` back into the ball around ``x`` and then into the bounds.

        Projecting first and clamping second stays inside the ball for linf, l2 and l1,
        because clamping to a box that contains ``x`` only shrinks each coordinate of delta.
        """
        delta = self.project(x_adv - x, embedding_scale)
        return self.clamp_to_bounds(x + delta)

    def clipper(
        self, x: torch.Tensor, embedding_scale: float | torch.Tensor | None = None
    ):  # -> Callable[[torch.Tensor], torch.Tensor]
        """``clip`` specialised to one ``x``, for step loops.

        For linf in input space the ball and the bounds intersect in a box that is computed
        once, so each step costs a single clamp; other norms fall back to :meth:`clip`.
        """
        if self.norm == "linf" and self.space == "input":
            eps = self.absolute_eps(embedding_scale)
            lower, upper = x - eps, x + eps
            if self.bounds is not None:
                lower = lower.clamp_min(self.bounds[0])
                upper = upper.clamp_max(self.bounds[1])
            return lambda x_adv: x_adv.clamp_(lower, upper)
        return lambda x_adv: self.clip(x_adv, x, embedding_scale)

    def random_init(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        embedding_scale: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A random point drawn uniformly from the ball around ``x``, clipped to the bounds."""
        eps = self.absolute_eps(embedding_scale)
        if self.norm in ("none", "l0") or eps == 0:
            return x.clone()
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            delta = (2 * noise - 1) * eps
        else:
            rows = self._flat(x)
            dim = rows.shape[1]
            if self.norm == "l2":
                direction = torch.randn(
                    rows.shape, generator=generator, dtype=x.dtype, device=x.device
                )
                direction = direction / direction.norm(p=2, dim=1, keepdim=True).clamp_min(
                    _DIVISION_GUARD
                )
            else:  # l1: Laplace samples normalised by their l1 norm are uniform on the sphere
                uniform = torch.rand(
                    rows.shape, generator=generator, dtype=x.dtype, device=x.device
                )
                laplace = -torch.log1p(-uniform.clamp(max=1 - 1e-7))
                sign = torch.randint(0, 2, rows.shape, generator=generator, device=x.device).to(
                    x.dtype
                )
                direction = laplace * (2 * sign - 1)
                direction = direction / direction.abs().sum(dim=1, keepdim=True).clamp_min(
                    _DIVISION_GUARD
                )
            radius = torch.rand(
                (rows.shape[0], 1), generator=generator, dtype=x.dtype, device=x.device
            ) ** (1.0 / dim)
            delta = (direction * radius * eps).reshape(x.shape)
        return self.clamp_to_bounds(x + delta)

    def ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit size in this norm (sign for linf, unit-l2 for l2).

        Always a new tensor: ``grad`` is never written to. A gradient from autograd may share
        memory between elements (an input that reaches the output only through a reduction
        gets an expanded gradient), so writing into it in place fails or corrupts it.
        """
        if self.norm == "linf":
            return grad.sign()
        rows = self._flat(grad)
        if self.norm == "l2":
            norms = rows.norm(p=2, dim=1, keepdim=True) + 1e-10
            return (rows / norms).reshape(grad.shape)
        if self.norm == "l1":
            # sparse l1 descent: move the top 1% coordinates by sign, unit l1 size in total
            k = max(1, rows.shape[1] // 100)
            threshold = rows.abs().topk(k, dim=1).values[:, -1:]
            mask = (rows.abs() >= threshold).to(rows.dtype)
            step = rows.sign() * mask
            return (step / step.abs().sum(dim=1, keepdim=True).clamp_min(1.0)).reshape(grad.shape)
        return grad

    def check(
        self,
        x_adv: torch.Tensor,
        x: torch.Tensor,
        atol: float = 1e-5,
        embedding_scale: float | torch.Tensor | None = None,
    ) -> None:
        """Raise :class:`ThreatModelViolation` unless ``x_adv`` lies in the ball and bounds."""
        if x_adv.shape != x.shape:
            raise ThreatModelViolation(
                f"adversarial shape {tuple(x_adv.shape)} != input shape {tuple(x.shape)}"
            )
        if x.numel() == 0:
            return
        if not torch.isfinite(x_adv).all():
            raise ThreatModelViolation("adversarial inputs contain NaN or Inf")
        if self.bounds is not None:
            low, high = self.bounds
            below = float((low - x_adv).max())
            above = float((x_adv - high).max())
            if below > atol or above > atol:
                raise ThreatModelViolation(
                    f"adversarial inputs leave the bounds {self.bounds} by {max(below, above):.3g}"
                )
        if self.norm == "none":
            return
        eps = self.absolute_eps(embedding_scale)
        worst = float((self.norm_of(x_adv - x) - eps).max()) if x.numel() else 0.0
        tolerance = 0.5 if self.norm == "l0" else atol * max(1.0, float(eps))
        if worst > tolerance:
            raise ThreatModelViolation(
                f"perturbation exceeds the {self.norm} ball eps={float(eps):g} by {worst:.3g}"
            )


def parse_budget(value: Any, field_name: str = "eps") -> tuple[float, str | None]:
    """``8/255``, ``"0.5"`` or ``0.5`` -> ``(float, label)``: the label is the fraction as
    written (spaces dropped) and ``None`` for a plain number. A bad value is a one-line error
    naming ``field_name``."""
    if isinstance(value, bool):
        raise UserError(field_name, f"must be a number or a fraction like 8/255, got {value!r}")
    if isinstance(value, int | float):
        return float(value), None
    text = str(value).strip().replace(" ", "")
    top, slash, bottom = text.partition("/")
    try:
        number = float(top) / float(bottom) if slash else float(top)
    except (ValueError, ZeroDivisionError):
        raise UserError(
            field_name,
            f"{value!r} is not a number or a fraction",
            "write it like 8/255 or 0.03",
        ) from None
    return number, (text if slash else None)


def _budget_from_dict(values: dict[str, Any]) -> Budget:
    known = {f.name for f in fields(Budget)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"budget.{unknown[0]}", "unknown key", f"allowed keys: {', '.join(sorted(known))}"
        )
    return Budget(**values)


def _project_l1(rows: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact projection of each row onto the l1 ball (Duchi et al., 2008), vectorised."""
    abs_rows = rows.abs()
    inside = abs_rows.sum(dim=1, keepdim=True) <= eps
    sorted_abs, _ = abs_rows.sort(dim=1, descending=True)
    cumulative = sorted_abs.cumsum(dim=1)
    index = torch.arange(1, rows.shape[1] + 1, device=rows.device, dtype=rows.dtype)
    condition = sorted_abs * index > (cumulative - eps)
    rho = condition.to(rows.dtype).cumsum(dim=1).argmax(dim=1, keepdim=True)
    # argmax of the cumsum finds the last True; all rows have at least one True when outside
    theta = (cumulative.gather(1, rho) - eps) / (rho + 1).to(rows.dtype)
    projected = rows.sign() * (abs_rows - theta).clamp_min(0)
    return torch.where(inside, rows, projected)
