"""Sanity checks: the reasons an evaluation may be unreliable, flagged per cell.

Each flag is ``{"code": ..., "message": ...}``; ``docs/sanity-checks.md`` explains every code
and what to do about it. Probes that depend only on the (model, defense) pair run once, with
the clean pass; per-cell probes run after the cell's attack; checks across cells (the eps
curve) are derived from the stored outcomes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.attacks.base import Attack
from robustbench_cl.attacks.pgd import PGD
from robustbench_cl.engine.records import flag, label
from robustbench_cl.models.adapters import IMAGENET_MEAN, IMAGENET_STD
from robustbench_cl.models.wrappers import Normalize, is_randomized, uses_eot
from robustbench_cl.threat import ThreatModel

#: a flag as the records hold it: ``{"code", "message"}`` (``engine.records.flag``)
Flag = dict[str, str]

ZERO_GRADIENT_FRACTION = 0.1


def gradient_health(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Fraction of samples whose input gradient of the loss is all zero, or has a NaN."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    rows = grad.reshape(grad.shape[0], -1)
    nan = torch.isnan(rows).any(dim=1)
    zero = (rows == 0).all(dim=1) & ~nan
    return {"zero_fraction": float(zero.float().mean()), "nan_fraction": float(nan.float().mean())}


def randomization(model: nn.Module, x: torch.Tensor) -> dict[str, bool]:
    """Declared randomization (``is_randomized``) and observed: two passes that disagree."""
    with torch.no_grad():
        observed = not torch.equal(model(x), model(x))
    return {"declared": is_randomized(model), "observed": observed, "eot": uses_eot(model)}


def full_range_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds: tuple[float, float]
) -> float:
    """Accuracy under linf PGD with eps = the whole input range: should be (near) zero."""
    threat = ThreatModel(norm="linf", eps=bounds[1] - bounds[0], bounds=bounds)
    adv = PGD(steps=20, random_start=True).perturb(model, x, y, threat).adv
    with torch.no_grad():
        return float((model(adv).argmax(1) == y).float().mean())


def pair_flags(probes: dict[str, Any], n_classes: int) -> list[Flag]:
    """Flags that follow from the (model, defense) probes and apply to its gradient cells."""
    flags = []
    gradients = probes.get("gradients")
    if gradients:
        if gradients["nan_fraction"] > 0:
            flags.append(
                flag(
                    "nan_gradients",
                    f"{gradients['nan_fraction']:.0%} of probed samples have NaN input gradients",
                )
            )
        if gradients["zero_fraction"] > ZERO_GRADIENT_FRACTION:
            flags.append(
                flag(
                    "zero_gradients",
                    f"{gradients['zero_fraction']:.0%} of probed samples have all-zero input "
                    "gradients (gradient masking?)",
                )
            )
    randomness = probes.get("randomization")
    if randomness and (randomness["declared"] or randomness["observed"]) and not randomness["eot"]:
        flags.append(
            flag(
                "randomized_without_eot",
                "the model is randomized but gradients are not averaged over draws (EOT)",
            )
        )
    return flags


#: the normalisation probe needs this many clean samples (and uses up to the larger size when
#: the run has them), and this gap, to speak
NORMALIZATION_PROBE_MIN = 64
NORMALIZATION_PROBE_MAX = 256
NORMALIZATION_GAP = 0.10
#: the one-sided sign test on the samples the two conventions disagree on
NORMALIZATION_P_VALUE = 0.01


def normalization_inside(model: nn.Module) -> str:
    """Which input normalisation sits inside ``model``: "none", "imagenet" or "mean/std"."""
    found = [m for m in model.modules() if isinstance(m, Normalize)]
    if not found:
        return "none"
    first = found[0]
    imagenet = first.mean.numel() == 3 and torch.allclose(
        first.mean.flatten().cpu(), torch.tensor(IMAGENET_MEAN)
    )
    imagenet = imagenet and torch.allclose(first.std.flatten().cpu(), torch.tensor(IMAGENET_STD))
    return "imagenet" if imagenet else "mean/std"


def normalization_probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Clean accuracy as loaded and under the other convention, on ``x`` (>= 64 samples).

    With a ``Normalize`` inside, the other convention is none (mean 0, std 1 for the probe,
    restored after); without one, on 3-channel images, ImageNet mean/std in front. A model
    trained on [0, 1] inputs and loaded with ImageNet normalisation (the torchvision adapter's
    default) loses accuracy silently; this is what tells.
    """
    inside = normalization_inside(model)
    result: dict[str, Any] = {"inside": inside, "probed": int(len(y))}
    if len(y) < NORMALIZATION_PROBE_MIN:
        return {**result, "skipped": f"fewer than {NORMALIZATION_PROBE_MIN} evaluated samples"}
    with torch.no_grad():
        hits = model(x).argmax(1) == y
        if inside != "none":
            wrappers = [m for m in model.modules() if isinstance(m, Normalize)]
            saved = [(m.mean.clone(), m.std.clone()) for m in wrappers]
            try:
                for m in wrappers:
                    m.mean.zero_()
                    m.std.fill_(1.0)
                other_hits = model(x).argmax(1) == y
            finally:
                for m, (mean, std) in zip(wrappers, saved):
                    m.mean.copy_(mean)
                    m.std.copy_(std)
            convention = "none"
        elif x.dim() == 4 and x.shape[1] == 3:
            mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            other_hits = model((x - mean) / std).argmax(1) == y
            convention = "imagenet"
        else:
            return {**result, "skipped": "no normalisation inside and not 3-channel images"}
    only_other = int((other_hits & ~hits).sum())
    only_loaded = int((hits & ~other_hits).sum())
    return {
        **result,
        "accuracy": float(hits.float().mean()),
        "other": convention,
        "other_accuracy": float(other_hits.float().mean()),
        "majority_share": float(torch.bincount(y.cpu()).max()) / len(y),
        "only_other_correct": only_other,
        "only_loaded_correct": only_loaded,
        "sign_test_p": _sign_test(only_other, only_loaded),
    }


def _sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(at least ``wins`` of the discordant pairs by chance)."""
    total = wins + losses
    if total == 0:
        return 1.0
    return sum(math.comb(total, k) for k in range(wins, total + 1)) / 2**total


def normalization_flag(probe: dict[str, Any] | None) -> list[Flag]:
    """``normalization_mismatch`` when the other convention is 10+ points more accurate, beats
    always answering the probe's most common class by 10+ points, and wins the sign test on the
    samples the two disagree on (p < 0.01): a random-weight model that switches from one
    constant answer to another under the other convention must not fire it."""
    if not probe or "other_accuracy" not in probe:
        return []
    gap = probe["other_accuracy"] - probe["accuracy"]
    if gap < NORMALIZATION_GAP:
        return []
    if probe["other_accuracy"] < probe.get("majority_share", 0.0) + NORMALIZATION_GAP:
        return []
    if probe.get("sign_test_p", 0.0) >= NORMALIZATION_P_VALUE:
        return []
    if probe["other"] == "none":
        fix = (
            f"the model holds {probe['inside']} normalisation; it was probably trained on [0, 1] "
            "inputs: add normalize=none to a torchvision:/timm: spec (or drop the Normalize "
            "your factory adds)"
        )
    else:
        fix = (
            "no normalisation layer was detected and the model probably expects "
            "ImageNet-normalised inputs: return robustbench_cl.Normalize(model, mean, std) "
            "from your python: factory (torchvision:/timm: specs add it unless normalize=none)"
        )
    return [
        flag(
            "normalization_mismatch",
            f"clean accuracy {probe['accuracy']:.0%} as loaded, {probe['other_accuracy']:.0%} "
            f"with normalisation {probe['other']} (probe of {probe['probed']} samples): {fix}",
        )
    ]


def missing_classes_flag(histogram: list[int]) -> list[Flag]:
    """``missing_classes`` when some class has no evaluated sample."""
    missing = [k for k, count in enumerate(histogram) if count == 0]
    if not missing:
        return []
    shown = ", ".join(str(k) for k in missing[:10]) + (" ..." if len(missing) > 10 else "")
    return [
        flag(
            "missing_classes",
            f"{len(missing)} of {len(histogram)} classes have no evaluated sample ({shown}): "
            "accuracy is over the others only; raise data.n to at least the number of classes",
        )
    ]


#: a defense may cost this much clean accuracy before it is flagged (10 points)
DEFENSE_CLEAN_MARGIN = 0.10


def defense_degrades_clean_flag(
    defended: float,
    undefended: float,
    defense: str,
    settings: dict[str, Any],
    kind: str = "preprocessor",
) -> list[Flag]:
    """``defense_degrades_clean`` when the defended model's clean accuracy on the evaluated
    samples is more than :data:`DEFENSE_CLEAN_MARGIN` below the same model's undefended."""
    if undefended - defended <= DEFENSE_CLEAN_MARGIN + 1e-12:
        return []
    shown = ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "its defaults"
    advice = (
        "adversarial training trades clean accuracy for robustness: report both, and check "
        "the drop against the method's published trade-off at this eps"
        if kind == "training"
        else "differentially private training trades accuracy for privacy: report it beside "
        "the accountant's epsilon, and tune clipping, learning rate and batch size for this "
        "data before reading the drop as the price of privacy"
        if kind == "privacy"
        else "tune it for this data (a preprocessor's settings made for another input size "
        "or range do not carry over)"
    )
    return [
        flag(
            "defense_degrades_clean",
            f"{defense} ({shown}) drops clean accuracy from {undefended:.1%} undefended to "
            f"{defended:.1%} on the same samples, more than {DEFENSE_CLEAN_MARGIN:.0%} points: "
            f"its robust accuracy is bought with utility; {advice}",
        )
    ]


def full_range_flag(accuracy: float | None, n_classes: int) -> list[Flag]:
    if accuracy is None:
        return []
    chance = 1.0 / n_classes
    if accuracy > chance:
        return [
            flag(
                "above_chance_full_range",
                f"accuracy {accuracy:.0%} under linf PGD at full-range eps is above chance "
                f"({chance:.0%}): the attack cannot be working",
            )
        ]
    return []


def convergence_probe(
    attack: Attack,
    model: nn.Module,
    x_probe: torch.Tensor,
    y_probe: torch.Tensor,
    threat: ThreatModel,
) -> dict[str, Any]:
    """Run the stronger attack on the probe; ``{}`` when there is none or nothing to probe.

    Split from :func:`convergence_verdict` so that a sample shard can run the probe and the
    driver can judge it once the cell's survivors are counted over every shard.
    """
    stronger = attack.stronger()
    if stronger is None or len(y_probe) == 0:
        return {}
    # every probed sample is clean-correct and survived the attack: no clean pass needed
    known = torch.ones(len(y_probe), dtype=torch.bool, device=y_probe.device)
    result = stronger(model, x_probe, y_probe, threat, clean_correct=known)
    return {
        "probed": len(y_probe),
        "newly_broken": int(result.success.sum()),
        "stronger": stronger.settings(),
        "stronger_class": type(stronger).__name__,
        "cost": result.cost.to_dict(),
    }


def merge_probes(probes: list[dict[str, Any]]) -> dict[str, Any]:
    """The probes of a cell's shards as one probe (the one itself when there is one)."""
    done = [probe for probe in probes if probe]
    if len(done) <= 1:
        return done[0] if done else {}
    return {
        **done[0],
        "probed": sum(probe["probed"] for probe in done),
        "newly_broken": sum(probe["newly_broken"] for probe in done),
        "cost": {key: sum(probe["cost"][key] for probe in done) for key in done[0]["cost"]},
    }


def convergence_verdict(
    probe: dict[str, Any], n_total: int, n_survivors: int | None = None
) -> tuple[list[Flag], dict[str, Any]]:
    """Scale a probe's newly broken fraction to the cell's survivors, and flag >= 1 point."""
    if not probe:
        return [], {}
    probed, newly_broken, name = probe["probed"], probe["newly_broken"], probe["stronger_class"]
    n_survivors = probed if n_survivors is None else n_survivors
    overstated = newly_broken / probed * n_survivors / n_total
    probe = {
        "probed": probed,
        "survivors": n_survivors,
        "newly_broken": newly_broken,
        "estimated_overstatement": overstated,
        "stronger": probe["stronger"],
        "cost": probe["cost"],
    }
    if newly_broken >= 1 and overstated >= 0.01:
        return [
            flag(
                "not_converged",
                f"{name} with more steps and restarts broke {newly_broken} of "
                f"{probed} probed samples this attack left robust: robust accuracy is "
                f"likely overstated by about {100 * overstated:.1f} points",
            )
        ], probe
    return [], probe


def eps_curve_flags(points: list[tuple[float, float]], n: int) -> dict[float, Flag]:
    """For (eps, robust accuracy) points of one attack: flag each eps where accuracy rises."""
    flags: dict[float, Flag] = {}
    ordered = sorted(points)
    tolerance = max(1.0 / max(n, 1), 0.01)
    for (eps_low, acc_low), (eps_high, acc_high) in zip(ordered, ordered[1:]):
        if acc_high > acc_low + tolerance:
            flags[eps_high] = flag(
                "accuracy_rises_with_eps",
                f"robust accuracy rises from {acc_low:.1%} at eps={eps_low:g} to "
                f"{acc_high:.1%} at eps={eps_high:g}",
            )
    return flags


def autoattack_version_flag(version: str | None) -> Flag:
    return flag(
        "autoattack_not_rand",
        f"the model is randomized and AutoAttack ran its {version} version, whose components "
        "take one gradient per step; evaluate randomized defenses with version: rand (EOT over "
        "20 draws), as the original AutoAttack prescribes",
    )


def non_adaptive_flag() -> Flag:
    return flag(
        "preprocessor_non_adaptive",
        "this preprocessor defense was only attacked by transfer attacks crafted on the bare "
        "model; add an end-to-end (or BPDA/EOT) white-box attack through the preprocessor",
    )


def black_box_flag(cell: Any, beaten: str, count: int) -> Flag:
    """A weaker attack won: the stronger (gradient / white-box) attacks are probably masked.
    ``cell`` is its record; ``count`` the samples it broke that the stronger ones left."""
    name = label(cell.attack)
    if beaten == "gradient":
        return flag(
            "black_box_beats_white_box",
            f"{name} (gradient-free) broke {count} samples that the gradient attacks before it "
            "left robust: the gradients may be masked; trust the worst case, not single attacks",
        )
    return flag(
        "transfer_beats_white_box",
        f"{name} (transfer) broke {count} samples that every white-box attack at this threat "
        "left robust: the white-box attacks fail on this model; suspect gradient masking",
    )
