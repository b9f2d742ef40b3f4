"""One large cell, locally vs as Ray shard tasks on the same machine.

PGD-20 linf 0.1 on builtin:digits-cnn over 10,000 samples (the 360 digits test images tiled,
in a ``safetensors:DIR`` dataset), batch 256, ``engine.shard_size`` 2,500 (four shards):
locally with one torch thread, locally with one thread per core, and with ``--executor ray`` on
a local Ray with one worker per core, each shard a task (a task uses the driver's thread count,
here one). The one-thread local run and the Ray run must give identical per-sample outcomes; the
script checks it. Reported: wall time of the whole run (Ray's start-up excluded: ``ray.init``
runs first) and the speed-ups. Medians of ``--repeats`` interleaved runs.
Writes reports/bench/ray_shards.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import robustbench_cl as rbcl
from robustbench_cl.data import load_dataset
from robustbench_cl.data.files import write_tensors

ROOT = Path(__file__).resolve().parent.parent


def config(data: Path, n: int, shard: int, steps: int = 20, batch_size: int = 256) -> dict:
    """One PGD cell on digits-cnn over the ``safetensors:`` folder ``data``, sharded."""
    return {
        "suite": "bench-ray-shards",
        "data": {"name": f"safetensors:{data}", "n": n},
        "models": [{"spec": "builtin:digits-cnn", "name": "cnn"}],
        "attacks": [
            {"attack": "pgd", "params": {"steps": steps}, "threat": {"norm": "linf", "eps": 0.1}}
        ],
        "engine": {
            "batch_size": batch_size,
            "shard_size": shard,
            "sanity_checks": False,
            "examples": 0,
        },
    }


def write_tiled_digits(directory: Path, n: int) -> None:
    """The 360 digits test images tiled up to ``n``, as a ``safetensors:`` folder."""
    digits = load_dataset("digits", split="test")
    tiles = -(-n // len(digits))
    x, y = digits.x.repeat(tiles, 1, 1, 1)[:n], digits.y.repeat(tiles)[:n]
    write_tensors(directory, "test", x, y, digits.n_classes)


def outcomes(run_dir: Path) -> list[int]:
    lines = (run_dir / "cells.jsonl").read_text().splitlines()
    return [o for r in map(json.loads, lines) if r["type"] == "cell" for o in r["outcomes"]]


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--shard-size", type=int, default=2500)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "ray_shards.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rbcl.load_model("builtin:digits-cnn")  # trained and cached before anything is timed
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    modes = {"local, 1 thread": ("local", 1), f"local, {cores} threads": ("local", cores)}
    modes[f"ray, {cores} workers x 1 thread"] = ("ray", 1)
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    identical = True
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        write_tiled_digits(root / "data", args.n)
        matrix = config(root / "data", args.n, args.shard_size)
        for repeat in range(args.repeats):  # interleaved, so drifts in machine load hit all
            runs = {}
            for index, (mode, (executor, threads)) in enumerate(modes.items()):
                torch.set_num_threads(threads)
                started = time.perf_counter()
                runs[executor, threads] = rbcl.run(
                    matrix, out=root / f"{index}-{repeat}", profile=None, executor=executor
                )
                seconds[mode].append(time.perf_counter() - started)
            identical &= outcomes(runs["local", 1]) == outcomes(runs["ray", 1])
    ray.shutdown()
    medians = {mode: statistics.median(values) for mode, values in seconds.items()}
    baseline = medians["local, 1 thread"]
    report = {
        "benchmark": "ray_shards",
        "setup": f"PGD-20 linf 0.1, digits-cnn, n {args.n}, shard {args.shard_size}, batch 256",
        "cores": cores,
        "shards": -(-args.n // args.shard_size),
        "repeats": args.repeats,
        "seconds": medians,
        "speedup_over_one_thread": {mode: baseline / value for mode, value in medians.items()},
        "identical_outcomes": identical,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for mode, value in medians.items():
        print(f"{mode:<28} {value:7.1f} s  {baseline / value:5.2f}x")
    print(f"identical outcomes (local 1 thread vs Ray): {identical}")


if __name__ == "__main__":
    main()
