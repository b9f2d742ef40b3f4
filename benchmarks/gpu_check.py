"""A short GPU check (run by benchmarks/gpu_check.sh on a CUDA machine; <= 8 minutes).

Prints one table:
- PGD-10 linf throughput (images per second) and the limit ratio (PGD-10 time over ten bare
  forward+backward passes) on a randomly initialised ResNet-18 at 32x32, batch 512, fp32;
- the same under bf16 autocast, and the fp32 vs bf16 agreement of PGD-10 robust accuracy
  on the quickstart (digits-cnn, PGD-AT) with the engine's --precision option;
- the engine's automatic batch size on that GPU.
The Ray executor is not implemented yet (issue 10); its row says so.
No number is claimed until this has been run on a GPU.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

import robustbench_cl as rbcl


def synced(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA device")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = torchvision.models.resnet18(num_classes=10).to(device).eval()
    model = model.to(memory_format=torch.channels_last).requires_grad_(False)
    x = torch.rand(512, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (512,), device=device)
    threat = rbcl.ThreatModel(norm="linf", eps=8 / 255)
    attack = rbcl.make_attack("pgd", steps=10, random_start=True)

    def bare() -> None:
        xi = x.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(model(xi), y).backward()

    rows = {}
    for precision in ("fp32", "bf16"):
        context = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if precision == "bf16"
            else torch.autocast("cuda", enabled=False)
        )
        with context:
            attack(model, x, y, threat)  # warm-up
            pgd = synced(lambda: attack(model, x, y, threat))
            step = synced(bare)
        rows[precision] = {"images_per_second": len(x) / pgd, "limit_ratio": pgd / (10 * step)}

    agreement = {}
    with tempfile.TemporaryDirectory() as directory:
        for precision in ("fp32", "bf16"):
            run_dir = rbcl.run(
                "quickstart",
                out=Path(directory) / precision,
                device="cuda",
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
    disagreements = [
        key
        for key, (value, (low, high)) in agreement["fp32"].items()
        if not low <= agreement["bf16"][key][0] <= high
    ]
    print(f"GPU: {torch.cuda.get_device_name(0)}")
    print(f"{'ResNet-18 32x32, PGD-10, batch 512':40s}{'images/s':>12s}{'limit ratio':>14s}")
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
    print("Ray executor with one GPU: not implemented yet (issue 10)")
    out = Path("reports/bench/gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "disagreements": disagreements}, indent=2) + "\n")


if __name__ == "__main__":
    main()
