"""The attack protocol: ``attack(model, x, y, threat) -> AttackResult``.

An attack is a plain class with keyword arguments and the literature's defaults. It declares
the norms, spaces and tasks it supports; the engine refuses a pairing it cannot honour. Every
call counts forward passes, backward passes and queries (all in samples, so that a cascade
over still-robust samples costs what it really costs) and checks its output against the threat
model.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from robustbench_cl.errors import UserError
from robustbench_cl.threat import ThreatModel

logger = logging.getLogger(__name__)

StepHook = Callable[..., None]  # (step, total) or (step, total, fraction)
_STEP_HOOK: ContextVar[StepHook | None] = ContextVar("robustbench_cl_step_hook", default=None)


@contextlib.contextmanager
def step_hook(hook: StepHook | None) -> Iterator[None]:
    """Install a ``hook(step, total)`` that attacks call once per step (for progress bars);
    a hook that also takes ``fraction`` gets the share of the budget spent where the attack
    reports it (a hook written for two arguments keeps working)."""
    if hook is not None and not _takes(hook, 3):
        two = hook
        hook = lambda step, total, fraction=None: two(step, total)  # noqa: E731
    token = _STEP_HOOK.set(hook)
    try:
        yield
    finally:
        _STEP_HOOK.reset(token)


def _takes(function: Callable[..., Any], count: int) -> bool:
    """Whether ``function`` accepts ``count`` positional arguments."""
    import inspect

    try:
        inspect.signature(function).bind(*range(count))
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): assume it does
        return True
    return True


def report_step(step: int, total: int, fraction: float | None = None) -> None:
    """Called by attack loops; a plain Python call, no host-device synchronisation.
    ``fraction``: the share of the call's budget spent so far, where steps differ in cost
    (AutoAttack's components); progress estimates the time left from it."""
    hook = _STEP_HOOK.get()
    if hook is not None:
        if fraction is None:
            hook(step, total)
        else:
            hook(step, total, fraction)


@dataclass
class Cost:
    """Model evaluations spent, counted per sample: ``forward`` and ``backward`` passes, and
    ``queries`` (forward evaluations visible to a black-box adversary, i.e. equal to
    ``forward`` for a model that is queried directly)."""

    forward: int = 0
    backward: int = 0
    queries: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.forward + other.forward,
            self.backward + other.backward,
            self.queries + other.queries,
        )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class AttackResult:
    """Adversarial inputs, per-sample outcomes and the cost.

    ``success`` is the raw criterion on the adversarial input (untargeted: misclassified;
    targeted: the target reached), over *every* sample, including those the model already got
    wrong clean. The report's numbers count over the clean-correct samples instead:
    ``clean_correct`` (untargeted: the clean input is classified as ``y``; targeted: it is not
    yet classified as the target), ``fooled = success & clean_correct``, and
    :attr:`attack_success_rate` and :attr:`robust_accuracy`, which are what a report's
    single-attack untargeted cell shows for the same samples. A targeted call gets targets,
    not true labels, so there ``clean_correct`` can only mean "not yet the target"; a report's
    targeted cell counts the samples classified correctly (by true label), which these fields
    cannot reproduce.
    """

    adv: torch.Tensor
    success: torch.Tensor
    cost: Cost = field(default_factory=Cost)
    wall_time: float = 0.0
    clean_correct: torch.Tensor | None = None

    @property
    def eligible(self) -> torch.Tensor:
        """``clean_correct``, or every sample when it is unknown."""
        if self.clean_correct is None:
            return torch.ones_like(self.success, dtype=torch.bool)
        return self.clean_correct

    @property
    def fooled(self) -> torch.Tensor:
        """Samples the attack broke: clean-correct and successful."""
        return self.success & self.eligible

    @property
    def attack_success_rate(self) -> float:
        """Broken over clean-correct samples (the report's ASR of a single-attack cell)."""
        eligible = int(self.eligible.sum())
        return int(self.fooled.sum()) / eligible if eligible else 0.0

    @property
    def robust_accuracy(self) -> float:
        """Clean-correct and not broken, over all samples (the report's robust accuracy)."""
        total = len(self.success)
        return int((self.eligible & ~self.success).sum()) / total if total else 0.0


@dataclass
class Perturbation:
    """What :meth:`Attack.perturb` may return instead of a bare tensor: the adversarial inputs
    and a mask of samples already *seen* to succeed during the attack (their iterate was scored
    in the step loop), so that only the others need a final scoring pass.

    ``verdict``: ``known_success`` is the attack's complete verdict, every sample scored by its
    own protocol, and is not rescored, not even on a randomized model (AutoAttack: the
    original counts a sample broken when any draw it was checked on misclassified it)."""

    adv: torch.Tensor
    known_success: torch.Tensor
    verdict: bool = False


class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, output: torch.Tensor, counter: CountingModel) -> torch.Tensor:  # noqa: ANN001
        ctx.counter = counter
        ctx.batch = output.shape[0]
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        ctx.counter.cost.backward += ctx.batch
        return grad, None


class CountingModel(nn.Module):
    """Wraps a model and counts, per sample, every forward and every backward through it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.cost = Cost()
        # in the wrapped model's mode: a new module is in train mode, and a library that
        # restores the mode it found (torchattacks) would put the wrapped model in train mode
        # for everything after its call (BatchNorm on batch statistics, dropout on)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self.model(x)
        batch = x.shape[0]
        self.cost.forward += batch
        self.cost.queries += batch
        if torch.is_grad_enabled() and output.requires_grad:
            output = _CountBackward.apply(output, self)
        return output


@contextlib.contextmanager
def inputs_only_gradients(model: nn.Module) -> Iterator[None]:
    """Freeze parameters for the duration of an attack: gradients w.r.t. inputs only."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


def require_int(field: str, value: object, minimum: int = 1) -> None:
    """One-line error unless ``value`` is an integer >= ``minimum`` (bools are not integers)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(field, f"must be an integer >= {minimum}, got {value!r}")


def budget_param(field: str, value: Any) -> Any:
    """A radius or step parameter as a float when written as a fraction (``8/255``), so a
    defense's or attack's settings, and its cache key, hold the number; anything else as is."""
    if not isinstance(value, str):
        return value
    from robustbench_cl.threat import parse_budget

    return parse_budget(value, field)[0]


def require_number(field: str, value: object, minimum: float = 0.0) -> None:
    """One-line error unless ``value`` is a real number > ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > minimum:
        raise UserError(field, f"must be a number > {minimum:g}, got {value!r}")


def validate_inputs(x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> None:
    """One-line errors for the bad inputs users actually pass."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise UserError("x", "inputs and labels must be torch tensors")
    if x.ndim < 2:
        raise UserError(
            "x", f"expected a batch (N, ...), got shape {tuple(x.shape)}", "add a batch dimension"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise UserError(
            "y",
            f"shape {tuple(y.shape)} does not match {x.shape[0]} inputs",
            "pass one label per input",
        )
    if y.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
        raise UserError("y", f"labels must be integer class indices, got {y.dtype}", "use y.long()")
    if x.shape[0] == 0:
        return
    if not torch.isfinite(x).all():
        raise UserError("x", "inputs contain NaN or Inf", "clean the data before attacking")
    check_eps_fits(threat, x[0].numel())
    if threat.bounds is not None and threat.space == "input":
        low, high = threat.bounds
        if float(x.min()) < low - 1e-6 or float(x.max()) > high + 1e-6:
            raise UserError(
                "x",
                f"inputs span [{float(x.min()):.3g}, {float(x.max()):.3g}] outside bounds {threat.bounds}",
                "put normalisation inside the model (Normalize) and pass raw inputs",
            )


#: a threat model's budget field -> the attack attributes it sets (the first one it has)
BUDGET_ATTRIBUTES = {
    "steps": ("steps",),
    "restarts": ("restarts", "n_restarts"),
    "queries": ("n_queries", "queries"),
    "eot_samples": ("eot_samples", "eot_iter"),
}


def apply_budget(attack: Any, threat: Any) -> Any:
    """Set the attack's step, restart, query and EOT counts from ``threat.budget`` (a field left
    unset keeps the attack's own value). A budget the attack cannot spend is a user error."""
    for name, attributes in BUDGET_ATTRIBUTES.items():
        value = getattr(threat.budget, name)
        if value is None:
            continue
        own = next((a for a in attributes if hasattr(attack, a)), None)
        if own is None:
            raise UserError(
                f"budget.{name}",
                f"{getattr(attack, 'name', type(attack).__name__)} has no {name} to budget",
                "remove it from the threat's budget",
            )
        setattr(attack, own, value)
    return attack


def check_eps_fits(threat: ThreatModel, dimension: int) -> None:
    """An l2 or l1 eps beyond the largest distance inside the bounds is a mistake, not a threat."""
    if threat.bounds is None or threat.space != "input" or threat.norm not in ("l2", "l1"):
        return
    width = threat.bounds[1] - threat.bounds[0]
    largest = width * (dimension**0.5 if threat.norm == "l2" else dimension)
    if threat.eps > largest:
        raise UserError(
            "eps",
            f"{threat.norm} eps {threat.eps:g} is larger than the bounds allow "
            f"({largest:.4g} for {dimension} input values)",
            f"use eps <= {largest:.4g}",
        )


def probe_model(
    model: nn.Module, x: torch.Tensor, n_classes: int | None = None, field: str = "x"
) -> torch.Tensor:
    """Run the model on the first input; turn a shape error into a one-line UserError (at
    ``field``: the caller names the model where it knows it)."""
    try:
        with torch.no_grad():
            logits = model(x[:1])
    except RuntimeError as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise UserError(
            field,
            f"input shape {tuple(x.shape[1:])} does not fit the model ({first_line})",
            "check the dataset and the model's expected input shape",
        ) from None
    if logits.ndim != 2:
        raise UserError(
            "model" if field == "x" else field,
            f"expected logits (N, classes), got shape {tuple(logits.shape)}",
        )
    return logits


def unsupported_reason(attack: Any, threat: ThreatModel, task: str) -> str | None:
    """Why ``attack`` (with class-level ``name``, ``norms``, ``spaces``, ``tasks``) cannot honour
    ``threat`` on ``task``, or ``None``. Shared by per-batch and universal attacks."""
    if threat.norm not in attack.norms:
        return f"{attack.name} supports norms {sorted(attack.norms)}, not {threat.norm!r}"
    if threat.space not in attack.spaces:
        return f"{attack.name} supports spaces {sorted(attack.spaces)}, not {threat.space!r}"
    if task not in attack.tasks:
        return f"{attack.name} supports tasks {sorted(attack.tasks)}, not {task!r}"
    return None


class AttackBase:
    """What every attack family shares (per-batch, universal, jailbreak): the class-level
    capabilities, the recorded settings, the capability check and the repr."""

    name: ClassVar[str] = "attack"
    norms: ClassVar[frozenset[str]] = frozenset({"linf", "l2"})
    spaces: ClassVar[frozenset[str]] = frozenset({"input"})
    tasks: ClassVar[frozenset[str]] = frozenset({"classification"})
    #: the task ``supports`` assumes when none is given
    default_task: ClassVar[str] = "classification"
    #: white-box attacks need gradients; the engine checks them for zeros and NaNs
    uses_gradients: ClassVar[bool] = True
    #: each gradient is the mean over draws of a randomized model (EOT) inside the attack itself
    averages_draws: bool = False
    #: during a call: the clean verdict the caller passed or the call computed (one draw)
    clean_correct: torch.Tensor | None = None

    def settings(self) -> dict[str, Any]:
        """The exact hyper-parameters, recorded with every result."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def supports(self, threat: ThreatModel, task: str | None = None) -> str | None:
        """``None`` if this attack can honour ``threat``; otherwise the reason it cannot."""
        return unsupported_reason(self, threat, task or self.default_task)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


class Attack(AttackBase):
    """Base class. Subclasses implement :meth:`perturb` and set the class-level capabilities."""

    #: whether the attack may run under bfloat16 autocast (external libraries convert to NumPy,
    #: which has no bfloat16: they always run in fp32)
    supports_bf16: ClassVar[bool] = True

    def resolved_settings(
        self, n_classes: int, threat: ThreatModel | None = None
    ) -> dict[str, Any]:
        """The settings as they apply to a model with ``n_classes`` outputs under ``threat``
        (for the record): a value derived from eps or the model shows the value used."""
        return self.settings()

    def stronger(self) -> Attack | None:
        """A version with more steps/restarts, for the convergence sanity check (or None)."""
        return None

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        clean_correct: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack ``x`` (labels, or targets when ``threat.targeted``). ``clean_correct`` is
        computed by one uncounted clean pass unless the caller knows it (the engine does)."""
        reason = self.supports(threat)
        if reason is not None:
            raise UserError("attack", reason, "choose another attack or threat model")
        validate_inputs(x, y, threat)
        if x.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.bool, device=x.device)
            return AttackResult(adv=x.clone(), success=empty, clean_correct=empty)
        start = time.perf_counter()
        was_training = model.training
        if was_training:
            logger.warning("the model was in train mode; attacking it in eval mode (and restoring)")
            model.eval()
        counted = CountingModel(model)  # after eval(): it takes the model's mode
        try:
            with inputs_only_gradients(model):
                n_classes = probe_model(model, x).shape[1]
                if int(y.min()) < 0 or int(y.max()) >= n_classes:
                    raise UserError(
                        "y",
                        f"labels must lie in [0, {n_classes - 1}] for this model",
                        "check the dataset's labels against the model's classes",
                    )
                if clean_correct is None:
                    with torch.no_grad():
                        predicted = model(x).argmax(1)
                    clean_correct = predicted != y if threat.targeted else predicted == y
                self.clean_correct = clean_correct  # this call's, for an attack's own verdict
                try:
                    output = self.perturb(counted, x, y, threat)
                finally:
                    self.clean_correct = None
                    model.eval()  # a library may have changed the mode (torchattacks, ART)
                known, verdict = None, False
                if isinstance(output, Perturbation):
                    output, known, verdict = output.adv, output.known_success, output.verdict
                adv = output.detach()
                threat.check(adv, x)
                success = known.clone() if verdict else self._score(counted, adv, y, threat, known)
        finally:
            if was_training:
                model.train()
        return AttackResult(
            adv=adv,
            success=success,
            cost=counted.cost,
            wall_time=time.perf_counter() - start,
            clean_correct=clean_correct.to(success.device).bool(),
        )

    @staticmethod
    def _score(
        model: nn.Module,
        adv: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        known: torch.Tensor | None,
    ) -> torch.Tensor:
        """Per-sample success. Samples already seen to succeed are not evaluated again, except
        on a randomized model, where one lucky draw proves nothing."""
        from robustbench_cl.models.wrappers import is_randomized

        def criterion(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            predicted = logits.argmax(1)
            return predicted == labels if threat.targeted else predicted != labels

        with torch.no_grad():
            if known is None or is_randomized(model):
                return criterion(model(adv), y)
            success = known.clone()
            rest = (~known).nonzero().flatten()  # once per call, after the step loop
            if rest.numel():
                success[rest] = criterion(model(adv[rest]), y[rest])
            return success

    def perturb(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel
    ) -> torch.Tensor | Perturbation:
        """Return adversarial inputs (or a :class:`Perturbation`). ``y`` holds targets when
        ``threat.targeted``."""
        raise NotImplementedError
