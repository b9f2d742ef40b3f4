"""Is our AutoAttack the original one? Per-sample outcomes and time against fra31's code.

On the quickstart's models (builtin:digits-cnn undefended and with PGD-AT linf 0.1, as the
quickstart trains it) and the 360 digits of its full profile, at linf eps 0.1 (the quickstart's
AutoAttack cell): the original AutoAttack (``pyautoattack``, fra31/auto-attack on PyPI,
``pip install -e '.[bench]'``) and ours, both seeded 0, for each version:

- ``standard`` and ``plus`` on the two deterministic models: the robust accuracy of each, the
  number of samples whose outcome (robust or not) differs, and the wall time of each;
- ``rand`` on a randomized defense (the PGD-AT model behind Gaussian input noise, sigma 0.1,
  drawn afresh at every forward pass), where per-sample outcomes are themselves random, at
  three seeds (each seeds the model's noise and both attacks): the robust accuracy of each (its
  own verdict: a sample is broken when any draw it was checked on misclassified it) with its 95%
  Wilson interval, whether the intervals overlap, and the mean over 50 fresh draws of each one's
  adversarial examples being classified correctly (the examples' strength, without the luck).

Our components are torchattacks' ports, so the random streams differ from the original's; a
handful of borderline samples may flip. Writes reports/bench/autoattack_fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import robustbench_cl as rbcl
from robustbench_cl.utils import device_name

ROOT = Path(__file__).resolve().parent.parent


class GaussianNoise(torch.nn.Module):
    """A randomized defense: fresh Gaussian noise on the input at every forward pass."""

    is_randomized = True

    def __init__(self, model: torch.nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x + self.sigma * torch.randn_like(x))


def original_robust(model, x, y, eps: float, version: str, seed: int = 0):  # noqa: ANN001
    from pyautoattack import AutoAttack

    torch.manual_seed(seed)
    adversary = AutoAttack(model, norm="Linf", eps=eps, version=version, seed=seed, device="cpu")
    adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=len(y))
    return y_adv == y, adv  # the original's own verdict: clean-wrong or fooled at a check


def ours_robust(model, x, y, eps: float, version: str, seed: int = 0):  # noqa: ANN001
    torch.manual_seed(seed)
    with torch.no_grad():  # one clean draw, as the engine's clean pass and the original's
        clean = model(x).argmax(1) == y
    attack = rbcl.make_attack("autoattack", version=version, seed=seed)
    result = attack(model, x, y, rbcl.ThreatModel(norm="linf", eps=eps), clean_correct=clean)
    return ~result.success, result.adv  # clean-wrong samples count as broken in the verdict


#: draws of a randomized model per adversarial example for its expected robust accuracy
DRAWS = 50


def expected_robust(model, advs: dict, y) -> dict:  # noqa: ANN001
    """Each implementation's adversarial examples scored by the mean over DRAWS fresh draws of
    the model: the chance a user's single query is still classified correctly. A verdict (any
    draw the cascade checked) is itself random; this measures the examples, not the luck."""
    out = {}
    with torch.no_grad():
        for name, adv in advs.items():
            correct = torch.stack([model(adv).argmax(1) == y for _ in range(DRAWS)])
            out[f"expected_robust_accuracy_{name}"] = round(float(correct.float().mean()), 4)
    return out


def compare(label: str, model, x, y, eps: float, version: str, seed: int = 0) -> dict:  # noqa: ANN001
    from robustbench_cl.engine.metrics import wilson_interval

    timings, robust, advs = {}, {}, {}
    for name, fn in (("original", original_robust), ("ours", ours_robust)):
        start = time.perf_counter()
        robust[name], advs[name] = fn(model, x, y, eps, version, seed)
        timings[name] = time.perf_counter() - start
    differ = int((robust["original"] != robust["ours"]).sum())
    counts = {name: int(value.sum()) for name, value in robust.items()}
    intervals = {name: list(wilson_interval(count, len(y))) for name, count in counts.items()}
    overlap = (
        intervals["ours"][0] <= intervals["original"][1]
        and intervals["original"][0] <= intervals["ours"][1]
    )
    row = {
        "version": version,
        "seed": seed,
        "model": label,
        "n": len(y),
        "eps": eps,
        "robust_accuracy_original": counts["original"] / len(y),
        "robust_accuracy_ours": counts["ours"] / len(y),
        "ci95_original": [round(v, 4) for v in intervals["original"]],
        "ci95_ours": [round(v, 4) for v in intervals["ours"]],
        "intervals_overlap": overlap,
        "outcomes_differ": differ,
        **(expected_robust(model, advs, y) if getattr(model, "is_randomized", False) else {}),
        "seconds_original": round(timings["original"], 2),
        "seconds_ours": round(timings["ours"], 2),
        "time_ratio_ours_over_original": round(timings["ours"] / timings["original"], 3),
    }
    print(
        f"{version:<8} {label:<36} robust acc original {100 * row['robust_accuracy_original']:.1f}% "
        f"ours {100 * row['robust_accuracy_ours']:.1f}%  outcomes differ {differ}/{len(y)}  "
        f"time {row['seconds_original']:.1f}s vs {row['seconds_ours']:.1f}s "
        f"(ours/original {row['time_ratio_ours_over_original']:.2f})",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=360)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--versions", default="standard,plus,rand")
    parser.add_argument("--sigma", type=float, default=0.1, help="rand: the input noise")
    parser.add_argument(
        "--rand-seeds",
        default="0,1,2",
        help="rand: seeds (of the model's noise and both attacks); outcomes are random there",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "reports" / "bench" / "autoattack_fidelity.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x, y = rbcl.load_dataset("digits", split="test").tensors(n=args.n)
    train = rbcl.load_dataset("digits", split="train")
    base = rbcl.load_model("builtin:digits-cnn")
    models = {"undefended": base}
    at = rbcl.make_defense("pgd-at", norm="linf", eps=0.1, steps=7, epochs=30)
    models["PGD-AT (linf 0.1)"] = at.build(base, "builtin:digits-cnn", train).eval()
    for model in models.values():
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    randomized = {
        f"PGD-AT + Gaussian noise (sigma {args.sigma:g})": GaussianNoise(
            models["PGD-AT (linf 0.1)"], args.sigma
        ).eval()
    }
    rows = []
    for version_name in args.versions.split(","):
        chosen = randomized if version_name == "rand" else models
        seeds = [int(s) for s in args.rand_seeds.split(",")] if version_name == "rand" else [0]
        for label, model in chosen.items():
            for seed in seeds:
                rows.append(compare(label, model, x, y, args.eps, version_name, seed))
    from importlib.metadata import version

    report = {
        "benchmark": "autoattack_fidelity",
        "device": device_name(torch.device("cpu")),
        "threads": args.threads,
        "pyautoattack": version("pyautoattack"),
        "torchattacks": version("torchattacks"),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
