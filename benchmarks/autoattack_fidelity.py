"""Is our AutoAttack the original one? Per-sample outcomes and time against fra31's code.

On the quickstart's models (builtin:digits-cnn undefended and with PGD-AT linf 0.1, as the
quickstart trains it) and the 360 digits of its full profile, at linf eps 0.1 (the quickstart's
AutoAttack cell): the original standard AutoAttack (``pyautoattack``, fra31/auto-attack on PyPI,
``pip install -e '.[bench]'``) and ours, both seeded 0. Reports the robust accuracy of each, the
number of samples whose outcome (robust or not) differs, and the wall time of each.

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


def original_robust(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float):
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm="Linf", eps=eps, version="standard", seed=0, device="cpu")
    adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(y))  # (x_adv, y_adv)
    with torch.no_grad():
        return model(adv).argmax(1) == y


def ours_robust(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float):
    attack = rbcl.make_attack("autoattack", seed=0)
    result = attack(model, x, y, rbcl.ThreatModel(norm="linf", eps=eps))
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    return clean & ~result.success


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=360)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
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
    rows = []
    for label, model in models.items():
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        timings, robust = {}, {}
        for name, fn in (("original", original_robust), ("ours", ours_robust)):
            start = time.perf_counter()
            robust[name] = fn(model, x, y, args.eps)
            timings[name] = time.perf_counter() - start
        differ = int((robust["original"] != robust["ours"]).sum())
        row = {
            "model": label,
            "n": len(y),
            "eps": args.eps,
            "robust_accuracy_original": float(robust["original"].float().mean()),
            "robust_accuracy_ours": float(robust["ours"].float().mean()),
            "outcomes_differ": differ,
            "seconds_original": round(timings["original"], 2),
            "seconds_ours": round(timings["ours"], 2),
            "time_ratio_ours_over_original": round(timings["ours"] / timings["original"], 3),
        }
        rows.append(row)
        print(
            f"{label:<20} robust acc original {100 * row['robust_accuracy_original']:.1f}% "
            f"ours {100 * row['robust_accuracy_ours']:.1f}%  outcomes differ {differ}/{len(y)}  "
            f"time {row['seconds_original']:.1f}s vs {row['seconds_ours']:.1f}s "
            f"(ours/original {row['time_ratio_ours_over_original']:.2f})"
        )
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
