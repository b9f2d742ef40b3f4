"""A short GPU check (run by benchmarks/gpu_check.sh on a CUDA machine; <= 10 minutes).

Prints one table:
- PGD-10 linf throughput (images per second) and the limit ratio (PGD-10 time over ten bare
  forward+backward passes) on a randomly initialised ResNet-18 at 32x32, batch 512, fp32;
- the same under bf16 autocast, and the fp32 vs bf16 agreement of PGD-10 robust accuracy
  on the quickstart (digits-cnn, PGD-AT) with the engine's --precision option;
- the engine's automatic batch size on that GPU;
- AutoAttack at CIFAR-10 scale: each standard component (APGD-CE, APGD-T, FAB-T, Square) on
  a randomly initialised WideResNet-28-10 (RobustBench's Standard architecture), fp32, 25
  iterations (Square: 25 queries), 9 target classes, on 512 random 32x32 images labelled with
  the clean prediction, ours against the original (pyautoattack): time and peak device memory
  as ratios (benchmarks/autoattack_field_size.py does it on the CPU at 8 images);
- the Ray executor with one GPU: a PGD-10 cell on 4,000 samples in 4 shards as Ray tasks
  sharing the GPU (0.25 each), its wall time against the same sharded run locally, and
  how many per-sample outcomes differ (cuDNN's autotuned kernels are not bitwise
  deterministic, so a few may).
No number is claimed until this has been run on a GPU. ``--smoke`` runs every part on the CPU
at a toy size, to check the script itself; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import robustbench_cl as rbcl


def synced(fn, device: torch.device, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def classification_only(profile: str) -> dict:
    """The quickstart's classification matrix (its screens, LLM and retrieval slices do not
    depend on the attack precision)."""
    from robustbench_cl.engine.config import load_config

    config = load_config("quickstart", profile=profile).model_dump(mode="json")
    for section in ("retrieval", "jailbreak", "screens", "membership", "generation"):
        config[section] = [] if section == "membership" else None
    return config


def ray_row(device: torch.device, n: int, directory: Path) -> dict:
    """Local vs Ray (4 shards, one GPU shared by the tasks) on one PGD-10 cell."""
    import ray
    from ray_shards import config, outcomes, write_tiled_digits  # beside this script

    write_tiled_digits(directory / "data", n)
    matrix = config(directory / "data", n, n // 4, steps=10, batch_size=512)
    started = time.perf_counter()
    local = rbcl.run(matrix, out=directory / "local", device=device, profile=None)
    local_seconds = time.perf_counter() - started
    ray.init(num_cpus=4, num_gpus=1 if device.type == "cuda" else 0, include_dashboard=False)
    started = time.perf_counter()
    remote = rbcl.run(
        matrix,
        out=directory / "ray",
        device=device,
        profile=None,
        executor="ray",
        gpus_per_task=0.25 if device.type == "cuda" else 0.0,
    )
    ray_seconds = time.perf_counter() - started
    ray.shutdown()

    differ = sum(a != b for a, b in zip(outcomes(local), outcomes(remote), strict=True))
    return {"n": n, "local_seconds": local_seconds, "ray_seconds": ray_seconds, "differ": differ}


def autoattack_rows(device: torch.device, n: int, iterations: int) -> dict:
    """Each standard AutoAttack component, ours and the original's, on a WRN-28-10."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import autoattack_field_size as field_size

    from robustbench_cl.models.robustbench import WideResNet

    torch.manual_seed(0)
    model = WideResNet(28, 10).to(device).eval().requires_grad_(False)
    x = torch.rand(n, 3, 32, 32, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)
    if device.type == "cuda":
        components = field_size.cuda_rows(model, x, y, iterations, 9, 8 / 255)
    else:  # --smoke: only that every component runs
        components = {}
        for name in field_size.COMPONENTS:
            for build in (field_size._ours, field_size._original):
                build(name, model, iterations, 9, 8 / 255)(x, y)
            components[name] = {"time_ratio": float("nan"), "peak_memory_ratio": float("nan")}
    return {"n": n, "iterations": iterations, "components": components}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="every part on the CPU, toy sizes")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA device (or --smoke to check the script on the CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    torch.backends.cudnn.benchmark = True
    batch = 16 if args.smoke else 512
    model = torchvision.models.resnet18(num_classes=10).to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model = model.requires_grad_(False)
    x = torch.rand(batch, 3, 32, 32, device=device)
    if device.type == "cuda":
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    threat = rbcl.ThreatModel(norm="linf", eps=8 / 255)
    attack = rbcl.make_attack("pgd", steps=10, random_start=True)

    def bare() -> None:
        xi = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xi), y).backward()

    rows = {}
    for precision in ("fp32", "bf16"):
        context = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else torch.autocast(device.type, enabled=False)
        )
        with context:
            attack(model, x, y, threat)  # warm-up
            pgd = synced(lambda: attack(model, x, y, threat), device)
            step = synced(bare, device)
        rows[precision] = {"images_per_second": len(x) / pgd, "limit_ratio": pgd / (10 * step)}

    agreement = {}
    with tempfile.TemporaryDirectory() as directory:
        quickstart = classification_only("quick")
        if args.smoke:
            quickstart["data"]["n"] = 16
            quickstart["defenses"] = quickstart["defenses"][:1]
            quickstart["attacks"] = quickstart["attacks"][:2]
        for precision in ("fp32", "bf16"):
            run_dir = rbcl.run(
                quickstart,
                out=Path(directory) / precision,
                device=device,
                profile=None,
                engine={"precision": precision, "batch_size": "auto"},
            )
            results = rbcl.load_results(run_dir)
            agreement[precision] = {
                cell["pair"] + " | " + cell["column"]: (
                    cell["robust_accuracy"],
                    cell["robust_ci95"],
                )
                for cell in results["cells"]
            }
        scaling = ray_row(device, 64 if args.smoke else 4000, Path(directory))
    autoattack = autoattack_rows(device, 4 if args.smoke else 512, 2 if args.smoke else 25)
    disagreements = [
        key
        for key, (value, (low, high)) in agreement["fp32"].items()
        if not low <= agreement["bf16"][key][0] <= high
    ]
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (smoke run)"
    print(f"device: {name}")
    print(f"{f'ResNet-18 32x32, PGD-10, batch {batch}':40s}{'images/s':>12s}{'limit ratio':>14s}")
    for precision, row in rows.items():
        print(f"{precision:40s}{row['images_per_second']:12.0f}{row['limit_ratio']:14.2f}")
    print(
        f"quickstart fp32 vs bf16: {len(agreement['fp32']) - len(disagreements)}/"
        f"{len(agreement['fp32'])} cells agree within the fp32 95% interval"
    )
    for key in disagreements:
        print(
            f"  differs: {key}: fp32 {agreement['fp32'][key][0]:.3f} bf16 {agreement['bf16'][key][0]:.3f}"
        )
    print(
        f"Ray, one device, PGD-10 on {scaling['n']} samples in 4 shards: "
        f"{scaling['ray_seconds']:.1f} s vs {scaling['local_seconds']:.1f} s locally; "
        f"{scaling['differ']} of {scaling['n']} outcomes differ"
    )
    print(f"AutoAttack components, WRN-28-10 fp32, {autoattack['n']} images: ours / original")
    for name, row in autoattack["components"].items():
        print(
            f"  {name:8s} time {row['time_ratio']:.2f}  peak memory {row['peak_memory_ratio']:.2f}"
        )
    if args.smoke:
        return  # toy sizes on the CPU: nothing to record
    out = Path("reports/bench/gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "rows": rows,
        "disagreements": disagreements,
        "ray": scaling,
        "autoattack_field_size": autoattack,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
