"""AutoAttack's components at the field's scale: a WideResNet-28-10 on 3x32x32 inputs.

Every committed number elsewhere is on 16x16 digits and CNNs of a few thousand parameters. Here
the model is RobustBench's ``Standard`` architecture (WideResNet-28-10, 36.5M parameters, random
weights: nothing is downloaded) and the inputs are 8 random 3x32x32 images. Each AutoAttack
component runs on all 8 samples for the same number of iterations (``--iterations``, 25; Square:
as many queries), ours (torchattacks' components with the settings our ``autoattack`` gives
them) against the original's (``pyautoattack``, fra31/auto-attack). Random weights leave few
samples clean-correct, so the cascade is not used: every component attacks every sample, with the
labels the model predicts clean.

The components are the standard version's (APGD-CE, APGD-T, FAB-T, Square) and the two the plus
version adds (APGD-DLR, and the untargeted FAB, whose every step takes the gradient of each
logit), each with one restart. Each (implementation, component) runs in a fresh process, so the peak resident memory it adds to
a process that has already built the model and run one forward and backward pass is its own.
Reports the time and the peak memory of ours over the original's, per component.
Writes reports/bench/autoattack_field_size.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
#: the standard version's components, then the two that plus adds (each with 1 restart here)
COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square", "apgd-dlr", "fab")


def _setup(seed: int, n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from robustbench_cl.models.robustbench import WideResNet

    torch.manual_seed(seed)
    model = WideResNet(28, 10).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x = torch.rand(n, 3, 32, 32)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample is clean-correct: each component attacks all
    warm = x[:1].clone().requires_grad_(True)
    model(warm).sum().backward()
    return model, x, y


def _ours(name: str, model, iterations: int, targets: int, eps: float):  # noqa: ANN001, ANN202
    from robustbench_cl.attacks.autoattack import AutoAttack
    from robustbench_cl.threat import ThreatModel

    version = "plus" if name in ("apgd-dlr", "fab") else "standard"
    attack = AutoAttack(
        version=version, steps=iterations, square_queries=iterations, n_target_classes=targets
    )
    components = dict(attack.components(model, ThreatModel(norm="linf", eps=eps), 10))
    components[name].n_restarts = 1  # plus runs them with 5: one each, as the original's row
    return components[name]


def _original(name: str, model, iterations: int, targets: int, eps: float):  # noqa: ANN001, ANN202
    from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
    from pyautoattack.fab_pt import FABAttack_PT
    from pyautoattack.square import SquareAttack

    device = next(model.parameters()).device
    common = {"norm": "Linf", "eps": eps, "seed": 0, "device": device, "verbose": False}
    if name in ("apgd-ce", "apgd-dlr"):
        loss = name.removeprefix("apgd-")
        attack = APGDAttack(model, n_iter=iterations, n_restarts=1, loss=loss, rho=0.75, **common)
        return attack.perturb
    if name == "fab":
        attack = FABAttack_PT(model, n_iter=iterations, n_restarts=1, **common)
        attack.targeted = False
        return attack.perturb
    if name == "apgd-t":
        attack = APGDAttack_targeted(
            model, n_iter=iterations, n_restarts=1, n_target_classes=targets, **common
        )
        return attack.perturb
    if name == "fab-t":
        attack = FABAttack_PT(
            model, n_iter=iterations, n_restarts=1, n_target_classes=targets, **common
        )
        attack.targeted = True
        return attack.perturb
    attack = SquareAttack(
        model, n_queries=iterations, n_restarts=1, p_init=0.8, resc_schedule=False, **common
    )
    return attack.perturb


def cuda_rows(model, x, y, iterations: int, targets: int, eps: float) -> dict:  # noqa: ANN001
    """The same comparison on a CUDA device, in one process: time (synchronised) and the peak
    memory each component allocates on the device (benchmarks/gpu_check.py)."""
    rows = {}
    warm = x[:1].clone().requires_grad_(True)
    model(warm).sum().backward()  # kernels chosen before anything is timed
    torch.cuda.synchronize()
    for name in COMPONENTS:
        row = {}
        for impl, build in (("ours", _ours), ("original", _original)):
            attack = build(name, model, iterations, targets, eps)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            started = time.perf_counter()
            adv = attack(x, y)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            with torch.no_grad():
                fooled = int((model(adv).argmax(1) != y).sum())
            row[impl] = {
                "seconds": round(seconds, 3),
                "peak_extra_mib": round((torch.cuda.max_memory_allocated() - base) / 2**20, 1),
                "fooled": fooled,
            }
        row["time_ratio"] = round(row["ours"]["seconds"] / row["original"]["seconds"], 3)
        row["peak_memory_ratio"] = round(
            max(row["ours"]["peak_extra_mib"], 1.0) / max(row["original"]["peak_extra_mib"], 1.0), 3
        )
        rows[name] = row
    return rows


def run_one(impl: str, name: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    model, x, y = _setup(args.seed, args.n)
    attack = (_ours if impl == "ours" else _original)(
        name, model, args.iterations, args.targets, args.eps
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    adv = attack(x, y)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        fooled = int((model(adv).argmax(1) != y).sum())
    inside = float((adv - x).abs().amax()) <= args.eps + 1e-6
    return {
        "seconds": round(seconds, 2),
        "peak_extra_mib": round((peak - before) / 1024, 1),
        "fooled": fooled,
        "inside_ball": inside,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--targets", type=int, default=9, help="target classes of apgd-t, fab-t")
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--components", default=",".join(COMPONENTS))
    parser.add_argument("--one", nargs=2, metavar=("IMPL", "COMPONENT"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other components' rows of an existing --out (same settings)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "reports" / "bench" / "autoattack_field_size.json"
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args)))
        return
    rows = {}
    if args.merge and args.out.exists():
        rows = json.loads(args.out.read_text())["components"]
    forwarded = [f"--{k}={getattr(args, k)}" for k in ("n", "iterations", "targets", "eps")]
    forwarded += [f"--seed={args.seed}", f"--threads={args.threads}"]
    for name in args.components.split(","):
        row = {}
        for impl in ("ours", "original"):
            command = [sys.executable, __file__, "--one", impl, name, *forwarded]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            row[impl] = json.loads(done.stdout.strip().splitlines()[-1])
            print(name, impl, row[impl], flush=True)
        row["time_ratio"] = round(row["ours"]["seconds"] / row["original"]["seconds"], 3)
        original_peak = max(row["original"]["peak_extra_mib"], 1.0)
        row["peak_memory_ratio"] = round(max(row["ours"]["peak_extra_mib"], 1.0) / original_peak, 3)
        rows[name] = row
    import pyautoattack
    import torchattacks

    result = {
        "what": "each standard-AutoAttack component on all samples, no cascade: ours "
        "(torchattacks' components as robustbench-cl's autoattack sets them) / the original "
        "(pyautoattack); peak_extra_mib: peak resident memory above the process after model "
        "setup (a fresh process per row)",
        "model": "RobustBench Standard architecture, WideResNet-28-10 (36.5M parameters), "
        "random weights, fp32",
        "inputs": f"{args.n} x 3x32x32 uniform random, labels = the clean prediction",
        "threat": f"linf eps {args.eps:g}",
        "iterations": args.iterations,
        "square_queries": args.iterations,
        "target_classes": args.targets,
        "threads": args.threads,
        "device": "cpu",
        "versions": {
            "torch": torch.__version__,
            "torchattacks": torchattacks.__version__,
            "pyautoattack": getattr(pyautoattack, "__version__", "0.2.0"),
        },
        "components": {name: rows[name] for name in COMPONENTS if name in rows},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
