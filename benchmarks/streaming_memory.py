"""Does memory stay flat as the evaluation grows? Peak memory at 1k vs 10k samples.

A PGD-5 evaluation (linf 8/255, batch 250) of a small CNN on 3x64x64 inputs, read from a
``safetensors:DIR`` dataset on disk (uint8, 10,000 images; the labels are the model's own clean
predictions, so every sample is attacked). Each evaluation runs in a fresh process and reports
its peak resident memory (``ru_maxrss``): once unsharded, where the engine reads every input
of the evaluation into memory, and once with ``engine.shard_size: 1000``, where it holds one
shard of inputs at a time. Streaming holds when the 10k/1k ratio of the sharded runs stays
near 1. Medians of ``--repeats`` processes per setting.
Writes reports/bench/streaming_memory.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64
N_MAX = 10_000


def model() -> nn.Module:
    """The victim: a fixed, seeded small CNN (its accuracy is beside the point here)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()


def write_data(directory: Path) -> None:
    from robustbench_cl.data.files import write_tensors

    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N_MAX, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    net = model()
    with torch.no_grad():
        y = torch.cat([net(x[i : i + 1000].float() / 255).argmax(1) for i in range(0, N_MAX, 1000)])
    write_tensors(directory, "test", x, y, 10)


def child(data: str, n: int, shard: int | None, out: str) -> None:
    import robustbench_cl as rbcl

    config = {
        "suite": "bench-streaming",
        "data": {"name": f"safetensors:{data}", "n": n},
        "models": [{"spec": "python:streaming_memory:model", "name": "cnn"}],
        "attacks": [
            {
                "attack": "pgd",
                "params": {"steps": 5},
                "threat": {"norm": "linf", "eps": 8 / 255},
            }
        ],
        "engine": {
            "batch_size": 250,
            "shard_size": shard,
            "sanity_checks": False,
            "examples": 0,
        },
    }
    start = time.perf_counter()
    rbcl.run(config, out=out, profile=None)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"peak_mib": peak_mib, "seconds": time.perf_counter() - start}))


def measure(data: Path, n: int, shard: int | None) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        command = [sys.executable, __file__, "--child", str(data), "--n", str(n)]
        command += ["--shard", str(shard)] if shard else []
        command += ["--run", str(Path(directory) / "run")]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shard", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=str, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "reports" / "bench" / "streaming_memory.json"
    )
    args = parser.parse_args()
    if args.child:
        torch.set_num_threads(1)
        child(args.child, args.n, args.shard, args.run)
        return
    settings = {"unsharded": None, "shard 1000": 1000}
    peaks: dict[str, dict[int, list[float]]] = {name: {1000: [], N_MAX: []} for name in settings}
    seconds: dict[str, dict[int, list[float]]] = {name: {1000: [], N_MAX: []} for name in settings}
    with tempfile.TemporaryDirectory() as data:
        write_data(Path(data))
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all alike
            for name, shard in settings.items():
                for n in (1000, N_MAX):
                    result = measure(Path(data), n, shard)
                    peaks[name][n].append(result["peak_mib"])
                    seconds[name][n].append(result["seconds"])
    rows = {}
    for name in settings:
        small, large = (statistics.median(peaks[name][n]) for n in (1000, N_MAX))
        rows[name] = {
            "peak_mib_1k": small,
            "peak_mib_10k": large,
            "ratio_10k_over_1k": large / small,
            "seconds_1k": statistics.median(seconds[name][1000]),
            "seconds_10k": statistics.median(seconds[name][N_MAX]),
        }
    inputs_mib = N_MAX * 3 * SIZE * SIZE * 4 / 2**20
    report = {
        "benchmark": "streaming_memory",
        "setup": f"PGD-5 linf 8/255, small CNN, 3x{SIZE}x{SIZE} uint8 on disk, batch 250",
        "inputs_mib_at_10k_float32": inputs_mib,
        "repeats": args.repeats,
        "threads": 1,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'setting':<12} {'peak 1k MiB':>12} {'peak 10k MiB':>13} {'10k/1k':>7}")
    for name, row in rows.items():
        print(
            f"{name:<12} {row['peak_mib_1k']:>12.0f} {row['peak_mib_10k']:>13.0f} "
            f"{row['ratio_10k_over_1k']:>7.2f}"
        )
    print(f"(the 10k inputs are {inputs_mib:.0f} MiB as float32)")


if __name__ == "__main__":
    main()
