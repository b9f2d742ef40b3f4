"""Membership inference: does the model give away which examples it was trained on?

Every attack maps (target model, examples) to a score per example, higher meaning "member":

- ``loss`` (Yeom et al. 2018): minus the per-example cross-entropy. No reference models.
- ``lira`` (Carlini et al. 2022), online and offline: a likelihood-ratio test on the logit-scaled
  confidence ``phi = logit_y - logsumexp(other logits)`` against Gaussians fitted to reference
  models trained with and without the example. Global (fixed) variances, as Carlini et al.
  recommend below 64 reference models. Offline uses the OUT models only (one-sided test).
- ``rmia`` (Zarifzadeh et al. 2024): the ratio ``Pr(x|target) / Pr(x)``, with ``Pr(x)`` averaged
  over reference models (offline: the linear correction with ``a``), compared with population
  samples ``z`` by ``LR(x, z) > gamma``; the score is the fraction of ``z`` that ``x`` beats.
- ``art-blackbox``: ART's ``MembershipInferenceBlackBox`` as a baseline (an attack model fitted
  on half of the labelled examples, scoring the other half; two folds).

Reference models are trained by a :class:`ReferenceRecipe` on random halves of a population,
each example IN for exactly half of them (the paired design of LiRA and RMIA), and cached as
safetensors, so a second audit never retrains them. Everything is batched on the model's device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.errors import UserError
from robustbench_cl.models.artifacts import (
    artifact_exists,
    artifact_lock,
    load_artifact_weights,
    save_artifact,
)
from robustbench_cl.models.wrappers import Frozen
from robustbench_cl.registry import Registry
from robustbench_cl.utils import cache_file, stable_hash, tensor_digest

logger = logging.getLogger(__name__)

MEMBERSHIP_ATTACKS: Registry[Any] = Registry("membership attack")
register_membership_attack = MEMBERSHIP_ATTACKS.register


# ---------------------------------------------------------------------- signals
@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    device = next((p.device for p in model.parameters()), x.device)
    return torch.cat(
        [model(x[i : i + batch_size].to(device)).float() for i in range(0, len(x), batch_size)]
    )


def scaled_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log(p_y / (1 - p_y))``, computed stably as ``logit_y - logsumexp(other logits)``."""
    y = y.to(logits.device)
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - torch.logsumexp(others, dim=1)


def shifted_views(x: torch.Tensor, pixels: int) -> list[torch.Tensor]:
    """Query augmentations for image batches (N, C, H, W): the identity and every shift by
    1..``pixels`` pixels up, down, left and right, zero-filled (no flips, which change a digit).
    Other shapes get the identity only.

    Carlini et al. query the augmentations the target was *trained* with (mi_lira_2021: the
    identity and a horizontal flip); the built-in recipes train without augmentation, so for
    them these views are small off-distribution perturbations that average out per-example
    noise, not the training views."""
    views = [x]
    if x.dim() != 4 or pixels <= 0:
        return views
    for step in range(1, pixels + 1):
        for dim, sign in ((2, 1), (2, -1), (3, 1), (3, -1)):
            shifted = torch.roll(x, sign * step, dims=dim)
            index = [slice(None)] * 4
            index[dim] = slice(0, step) if sign > 0 else slice(-step, None)
            shifted[tuple(index)] = 0
            views.append(shifted)
    return views


def true_class_probability(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.softmax(1).gather(1, y.to(logits.device)[:, None]).squeeze(1)


# ---------------------------------------------------------------------- reference models
@dataclass
class ReferenceRecipe:
    """How to train a model like the target: ``key`` identifies the recipe in the cache."""

    key: dict[str, Any]
    architecture: Callable[[], nn.Module]
    train: Callable[[torch.Tensor, torch.Tensor, int], nn.Module]


@dataclass
class ReferenceSet:
    """Reference models' signals on the audited examples and on the population samples."""

    phi: torch.Tensor  # (K, N) scaled confidence on the audited examples ((K, V, N) per view)
    prob: torch.Tensor  # (K, N) true-class probability on the audited examples
    inside: torch.Tensor  # (K, N) bool: example n was in model k's training half
    population_prob: torch.Tensor | None = None  # (K, M) on the population samples z
    population_inside: torch.Tensor | None = None  # (K, M)
    trained: int = 0  # how many reference models had to be trained (0 = all from cache)
    meta: dict[str, Any] = field(default_factory=dict)


def paired_halves(n: int, k: int, seed: int, in_fraction: float = 0.5) -> torch.Tensor:
    """(k, n) bool: every example is IN for exactly ``round(in_fraction * k)`` of the k models,
    clamped so that it keeps at least one IN and one OUT model.

    With ``in_fraction = 0.5`` (k even) this is LiRA's paired design: each example IN for half
    the models. Other fractions train reference models on subsets as large as the target's
    training set.
    """
    if k < 2 or k % 2:
        raise UserError("reference_models", f"must be an even number >= 2, got {k}", "use e.g. 8")
    count = min(max(round(in_fraction * k), 1), k - 1)
    generator = torch.Generator().manual_seed(seed)
    ranks = torch.rand(n, k, generator=generator).argsort(1).argsort(1)
    return (ranks < count).T.contiguous()


def reference_models(
    recipe: ReferenceRecipe,
    x: torch.Tensor,
    y: torch.Tensor,
    k: int,
    seed: int,
    device: torch.device | str = "cpu",
    on_model: Callable[[int, int], None] | None = None,
    in_fraction: float = 0.5,
) -> tuple[list[nn.Module], torch.Tensor, int]:
    """Train (or load) k reference models on paired random subsets of the population (x, y)."""
    inside = paired_halves(len(y), k, seed, in_fraction)
    models, trained = [], 0
    population_key = tensor_digest(x, y)
    for index in range(k):
        key = stable_hash(
            {
                "recipe": recipe.key,
                "population": population_key,
                "k": k,
                "seed": seed,
                "i": index,
                **({"in_fraction": in_fraction} if in_fraction != 0.5 else {}),
            }
        )
        path = cache_file("membership", f"reference-{key}")
        with artifact_lock(path):
            if artifact_exists(path):
                model = load_artifact_weights(path, recipe.architecture())
            else:
                chosen = inside[index]
                model = recipe.train(x[chosen], y[chosen], seed * 1000 + index)
                if isinstance(model, Frozen):  # only Frozen: a Normalize stays in front
                    model = model.model
                save_artifact(path, model, {"recipe": recipe.key, "index": index, "k": k})
                trained += 1
        model.eval().requires_grad_(False)
        models.append(model.to(device))
        if on_model is not None:
            on_model(index + 1, k)
    return models, inside, trained


# ---------------------------------------------------------------------- attacks
def _fraction(value: float | None) -> float | None:
    """``in_fraction``: None (match the target's share of the population) or a number in (0, 1)."""
    if value is None:
        return None
    if not 0 < float(value) < 1:
        raise UserError("in_fraction", f"must be in (0, 1), got {value}", "e.g. 0.5, or omit it")
    return float(value)


class MembershipAttack:
    name: ClassVar[str] = "membership"
    #: whether the attack needs reference models (LiRA, RMIA)
    uses_references: ClassVar[bool] = False
    #: whether the attack needs population samples z (RMIA)
    uses_population: ClassVar[bool] = False
    #: whether the attack trains its own target like the audited one (the one-run audit)
    trains_target: ClassVar[bool] = False

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def score(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        references: ReferenceSet | None = None,
        population: tuple[torch.Tensor, torch.Tensor] | None = None,
        members: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError


@register_membership_attack("loss")
class LossAttack(MembershipAttack):
    """Yeom et al.: members have lower loss. Score = minus the cross-entropy."""

    name = "loss"

    def score(self, model, x, y, references=None, population=None, members=None):  # noqa: ANN001, ANN201
        logits = logits_of(model, x)
        return -F.cross_entropy(logits, y.to(logits.device), reduction="none")


@register_membership_attack("lira")
class LiRA(MembershipAttack):
    """Carlini et al.: Gaussian likelihood ratio on the logit-scaled confidence.

    Args:
        online: score with both the IN and the OUT Gaussians of the reference models' confidences
            (a likelihood ratio); `false`: a one-sided z-score against the OUT models only. The
            same reference models are trained either way.
        reference_models: reference models, each trained on a random share of the population.
        in_fraction: the share of the population each reference model trains on (so the share
            of reference models that include a sample); `None`: the target model's own share,
            members / population.
        shifts: query augmentations: 0 queries each example as it is; `k` also queries it
            shifted by 1..k pixels in each of the four directions (1 gives 5 views), fits the
            Gaussians per view and averages the per-view scores (Carlini et al., Sec. 5.2, who
            query the target's training augmentations; the built-in models train without
            any). Images only.
    """

    name = "lira"
    uses_references = True

    def __init__(
        self,
        online: bool = True,
        reference_models: int = 8,
        in_fraction: float | None = None,
        shifts: int = 0,
    ) -> None:
        if isinstance(shifts, bool) or not isinstance(shifts, int) or not 0 <= shifts <= 4:
            raise UserError("shifts", f"must be an integer in 0..4, got {shifts!r}", "e.g. 1")
        self.online = bool(online)
        self.reference_models = int(reference_models)
        self.in_fraction = _fraction(in_fraction)
        self.shifts = shifts

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        return shifted_views(x, self.shifts)

    def score(self, model, x, y, references=None, population=None, members=None):  # noqa: ANN001, ANN201
        assert references is not None
        phi = references.phi
        if phi.dim() == 2:
            return self._score_view(scaled_confidence(logits_of(model, x), y), phi, references)
        views = self.views(x)
        assert len(views) == phi.shape[1], "reference signals were taken on other views"
        scores = [
            self._score_view(scaled_confidence(logits_of(model, view), y), phi[:, v], references)
            for v, view in enumerate(views)
        ]
        return torch.stack(scores).mean(0)

    def _score_view(
        self, observed: torch.Tensor, phi: torch.Tensor, references: ReferenceSet
    ) -> torch.Tensor:
        phi, inside = phi.to(observed.device), references.inside.to(observed.device)
        outside = ~inside
        mean_out, std_out = _pooled_gaussian(phi, outside)
        if not self.online:  # one-sided: how far above the OUT distribution
            return (observed - mean_out) / std_out
        mean_in, std_in = _pooled_gaussian(phi, inside)
        normal_in = torch.distributions.Normal(mean_in, std_in)
        normal_out = torch.distributions.Normal(mean_out, std_out)
        return normal_in.log_prob(observed) - normal_out.log_prob(observed)


def _pooled_gaussian(phi: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example means over the masked models, and one pooled (fixed) standard deviation.

    The variance is pooled over examples after centring each on its own mean: with few
    reference models a per-example variance is too noisy (Carlini et al., "fixed variance").
    """
    count = mask.sum(0)
    mean = (phi * mask).sum(0) / count.clamp_min(1)
    residual = ((phi - mean) * mask).pow(2).sum()
    dof = (count - 1).clamp_min(0).sum().clamp_min(1)
    return mean, (residual / dof).sqrt().clamp_min(1e-6)


@register_membership_attack("rmia")
class RMIA(MembershipAttack):
    """Zarifzadeh et al.: pairwise likelihood ratios against population samples.

    Args:
        online: estimate each sample's marginal probability from all the reference models (IN and
            OUT); `false`: from the OUT models only, corrected by `a`.
        reference_models: reference models, each trained on a random share of the population.
        a: the offline correction of the OUT models' mean probability: `((1 + a) p_OUT +
            (1 - a)) / 2`; `None`: tuned offline over 0, 0.1, ..., 1 by the AUC of the same
            attack with reference model 0 as the target (its membership is known) and the others
            as its references (ML Privacy Meter tunes on the target's paired model, which a
            reference set of ours does not have); recorded as `a_tuned` and `a_tuning`.
        gamma: the threshold a sample's likelihood ratio must beat over a population sample's;
            the score is the share it beats.
        in_fraction: the share of the population each reference model trains on; `None`: the
            target model's own share, members / population.
    """

    name = "rmia"
    uses_references = True
    uses_population = True

    def __init__(
        self,
        online: bool = False,
        reference_models: int = 8,
        a: float | None = 0.3,
        gamma: float = 1.0,
        in_fraction: float | None = None,
    ) -> None:
        self.online = bool(online)
        self.reference_models = int(reference_models)
        self.in_fraction = _fraction(in_fraction)
        if a is not None and (
            isinstance(a, bool) or not isinstance(a, int | float) or not 0 <= a <= 1
        ):
            raise UserError("a", f"must be in [0, 1] or null (tuned), got {a!r}", "e.g. 0.3")
        self.a = None if a is None else float(a)
        self.gamma = float(gamma)

    def _marginal(self, prob: torch.Tensor, inside: torch.Tensor, a: float) -> torch.Tensor:
        if self.online:
            return prob.mean(0)
        outside = ~inside
        mean_out = (prob * outside).sum(0) / outside.sum(0).clamp_min(1)
        return 0.5 * ((1 + a) * mean_out + (1 - a))  # the paper's offline correction

    def _scores(
        self,
        target: torch.Tensor,
        prob: torch.Tensor,
        inside: torch.Tensor,
        target_z: torch.Tensor | None,
        population_prob: torch.Tensor | None,
        population_inside: torch.Tensor | None,
        a: float,
    ) -> torch.Tensor:
        ratio_x = target / self._marginal(prob, inside, a).clamp_min(1e-12)
        if target_z is None or population_prob is None or population_inside is None:
            return ratio_x  # the limit of many z: RMIA's score is monotone in this ratio
        ratio_z = target_z / self._marginal(population_prob, population_inside, a).clamp_min(1e-12)
        beats = (ratio_x[:, None] / ratio_z[None, :]) > self.gamma
        return beats.float().mean(1)

    def tune_a(self, references: ReferenceSet) -> float:
        """Privacy Meter's offline tuning: reference model 0 plays the target, its membership
        known; the others are its references; the ``a`` with the best AUC wins (ties: the
        smallest)."""
        from sklearn.metrics import roc_auc_score

        prob, inside = references.prob, references.inside
        if len(prob) < 2 or inside[0].all() or not inside[0].any():
            self.a_tuning = "not tuned: reference model 0 has no IN or no OUT example; 0.3"
            return 0.3  # nothing to tune on: the paper's default
        z_prob, z_inside = references.population_prob, references.population_inside
        best, chosen = -1.0, 0.3
        for a in [i / 10 for i in range(11)]:
            scores = self._scores(
                prob[0],
                prob[1:],
                inside[1:],
                None if z_prob is None else z_prob[0],
                None if z_prob is None else z_prob[1:],
                None if z_inside is None else z_inside[1:],
                a,
            )
            auc = float(roc_auc_score(inside[0].cpu().numpy(), scores.cpu().numpy()))
            if auc > best + 1e-12:
                best, chosen = auc, a
        self.a_tuning = f"reference model 0 as the target: AUC {best:.3f}"
        return chosen

    def score(self, model, x, y, references=None, population=None, members=None):  # noqa: ANN001, ANN201
        assert references is not None
        a = self.a
        if a is None and not self.online:
            a = self.a_tuned = self.tune_a(references)
        target = true_class_probability(logits_of(model, x), y)
        device = target.device
        target_z = population_prob = population_inside = None
        if population is not None and references.population_prob is not None:
            z, z_y = population
            target_z = true_class_probability(logits_of(model, z), z_y)
            population_prob = references.population_prob.to(device)
            population_inside = references.population_inside.to(device)
        return self._scores(
            target,
            references.prob.to(device),
            references.inside.to(device),
            target_z,
            population_prob,
            population_inside,
            0.3 if a is None else a,
        )


@register_membership_attack("art-blackbox")
class ARTBlackBox(MembershipAttack):
    """ART's MembershipInferenceBlackBox, cross-fitted on two halves of the labelled examples.

    The attacker is given the membership of half the audited examples to fit its attack model
    (ART's threat model), and scores the other half; then the halves swap.

    Args:
        input_type: what the attack model reads: `loss` or `prediction`.
        attack_model_type: ART's attack model: `rf` (random forest), `gb` or `nn`.
    """

    name = "art-blackbox"

    def __init__(self, input_type: str = "loss", attack_model_type: str = "rf") -> None:
        if input_type not in ("loss", "prediction"):
            raise UserError("input_type", f"unknown {input_type!r}", "use loss or prediction")
        self.input_type = input_type
        self.attack_model_type = attack_model_type

    def score(self, model, x, y, references=None, population=None, members=None):  # noqa: ANN001, ANN201
        import numpy as np
        from art.estimators.classification import PyTorchClassifier

        assert members is not None
        logits = logits_of(model, x[:2])
        classifier = PyTorchClassifier(
            model=model,
            loss=nn.CrossEntropyLoss(),
            input_shape=tuple(x.shape[1:]),
            nb_classes=logits.shape[1],
            clip_values=(0.0, 1.0),
            device_type="gpu" if logits.is_cuda else "cpu",
        )
        x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
        member = members.cpu().numpy().astype(bool)
        rng = np.random.default_rng(0)
        fold = rng.permutation(len(y_np)) % 2
        scores = np.zeros(len(y_np))
        # ART builds its random forest without a seed, from NumPy's global stream: seed that
        # stream for the fit (and put it back after), so that a rerun gives the same scores
        state = np.random.get_state()
        np.random.seed(0)
        try:
            self._cross_fit(classifier, x_np, y_np, member, fold, scores)
        finally:
            np.random.set_state(state)
        return torch.as_tensor(scores, dtype=torch.float32)

    def _cross_fit(self, classifier, x_np, y_np, member, fold, scores) -> None:  # noqa: ANN001
        import numpy as np
        from art.attacks.inference.membership_inference import MembershipInferenceBlackBox

        for part in (0, 1):
            fit, evaluate = fold != part, fold == part
            attack = MembershipInferenceBlackBox(
                classifier, input_type=self.input_type, attack_model_type=self.attack_model_type
            )
            fit_in, fit_out = fit & member, fit & ~member
            attack.fit(x_np[fit_in], y_np[fit_in], x_np[fit_out], y_np[fit_out])
            inferred = attack.infer(x_np[evaluate], y_np[evaluate], probabilities=True)
            scores[evaluate] = np.asarray(inferred).reshape(len(inferred), -1)[:, -1]


@register_membership_attack("one-run")
class OneRunAudit(MembershipAttack):
    """Steinke, Nasr and Jagielski (2023): auditing with one training run.

    ``canaries`` examples are drawn from the population (labels flipped with ``mislabel``, the
    strongest canaries for a classifier); each is added to the training set with probability
    1/2 (one drawn from the training split is otherwise left out of it). One model is trained
    with the audited pair's recipe (its defense included), the canaries are scored by their
    loss, and the k+ highest and k- lowest scores are guessed "in" and "out". The guesses
    certify an epsilon lower bound; no reference models are needed. The audited model is that
    model, not the pair's own (which never saw the canaries).

    Args:
        canaries: m, the number of canaries (at most the population).
        k_plus: guesses "in" (the highest scores), fixed in advance.
        k_minus: guesses "out" (the lowest scores), fixed in advance.
        mislabel: flip each canary's label to another class drawn at random.
        p: the audit's significance: the bound holds with confidence 1 - p.
    """

    name = "one-run"
    trains_target = True

    def __init__(
        self,
        canaries: int = 500,
        k_plus: int = 50,
        k_minus: int = 50,
        mislabel: bool = True,
        p: float = 0.05,
    ) -> None:
        for field_name, value in (("canaries", canaries), ("k_plus", k_plus)):
            if not isinstance(value, int) or value < 1:
                raise UserError(field_name, f"must be a positive integer, got {value!r}", "e.g. 50")
        if not isinstance(k_minus, int) or k_minus < 0:
            raise UserError("k_minus", f"must be an integer >= 0, got {k_minus!r}", "e.g. 50")
        if k_plus + k_minus > canaries:
            raise UserError(
                "k_plus",
                f"k_plus + k_minus ({k_plus + k_minus}) exceeds canaries ({canaries})",
                "guess on at most every canary",
            )
        if not 0 < float(p) < 1:
            raise UserError("p", f"must be in (0, 1), got {p}", "e.g. 0.05")
        self.canaries = canaries
        self.k_plus = k_plus
        self.k_minus = k_minus
        self.mislabel = bool(mislabel)
        self.p = float(p)

    def draw(
        self, y: torch.Tensor, n_classes: int, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Canary indices into the population, their labels, and which are included."""
        if self.canaries > len(y):
            raise UserError(
                "canaries", f"{self.canaries} exceeds the population ({len(y)})", "use fewer"
            )
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(y), generator=generator)[: self.canaries]
        labels = y[index].clone()
        if self.mislabel:
            shift = torch.randint(1, n_classes, (len(index),), generator=generator)
            labels = (labels + shift) % n_classes
        included = torch.rand(len(index), generator=generator) < 0.5
        return index, labels, included

    def score(self, model, x, y, references=None, population=None, members=None):  # noqa: ANN001, ANN201
        return LossAttack().score(model, x, y)


def one_run_training_set(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    population_x: torch.Tensor,
    index: torch.Tensor,
    labels: torch.Tensor,
    included: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-run model's training set: the training split without any canary (the
    population is the training split followed by other data, so index < len(train) is a
    training example), then the included canaries with their (possibly flipped) labels."""
    keep = torch.ones(len(train_y), dtype=torch.bool)
    keep[index[index < len(train_y)]] = False
    x = torch.cat([train_x[keep], population_x[index[included]]])
    y = torch.cat([train_y[keep], labels[included]])
    return x, y


def one_run_target(
    recipe: ReferenceRecipe,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, bool]:
    """Train (or load) the one-run audit's model on (x, y); ``(model, trained)``."""
    key = stable_hash({"recipe": recipe.key, "data": tensor_digest(x, y), "seed": seed})
    path = cache_file("membership", f"one-run-{key}")
    trained = False
    with artifact_lock(path):
        if artifact_exists(path):
            model = load_artifact_weights(path, recipe.architecture())
        else:
            model = recipe.train(x, y, seed)
            if isinstance(model, Frozen):
                model = model.model
            save_artifact(path, model, {"recipe": recipe.key, "one_run": True})
            trained = True
    return model.eval().requires_grad_(False).to(device), trained


def make_membership_attack(name: str, **params: Any) -> MembershipAttack:
    return MEMBERSHIP_ATTACKS.create(name, **params)


def reference_signals(
    models: list[nn.Module],
    inside_population: torch.Tensor,
    audited: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    z_index: torch.Tensor | None = None,
    views: Callable[[torch.Tensor], list[torch.Tensor]] | None = None,
) -> ReferenceSet:
    """Signals of the reference models on the audited population indices (and on z); with
    ``views`` (LiRA's query augmentations), ``phi`` holds one row per view, (K, V, N)."""
    phi, prob, z_prob = [], [], []
    for model in models:
        logits = logits_of(model, x[audited])
        if views is None:
            phi.append(scaled_confidence(logits, y[audited]))
        else:
            phi.append(
                torch.stack(
                    [
                        scaled_confidence(logits_of(model, view), y[audited])
                        for view in views(x[audited])
                    ]
                )
            )
        prob.append(true_class_probability(logits, y[audited]))
        if z_index is not None:
            z_prob.append(true_class_probability(logits_of(model, x[z_index]), y[z_index]))
    return ReferenceSet(
        phi=torch.stack(phi),
        prob=torch.stack(prob),
        inside=inside_population[:, audited],
        population_prob=torch.stack(z_prob) if z_index is not None else None,
        population_inside=inside_population[:, z_index] if z_index is not None else None,
    )
