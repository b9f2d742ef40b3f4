"""The llm quick profile's GCG column, locally vs its behaviour shards as Ray tasks.

GCG-40 (the quick profile's settings) on builtin:tiny-chat-lm against the 24 held-out harmful
behaviours, for the quick profile's defenses (``--defenses`` picks some by name; they are
trained or loaded from the cache in an untimed warm-up run). The cells split into
``jailbreak.shard_size`` behaviour shards (12: two per cell). Modes: locally with one torch
thread (shards one after the other), locally with one thread per core, and ``--executor ray`` on
a local Ray with one worker per core (a shard per task, one thread each). The one-thread local
run and the Ray run must give identical records; the script checks it. Reported: the wall time
of the GCG units (Ray's start-up excluded: ``ray.init`` runs first; each Ray worker loads the
model once) and the ratios to the one-thread local run. Medians of ``--repeats`` runs.
Writes reports/bench/ray_gcg.json and prints a table.
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
from robustbench_cl.engine.config import load_config
from robustbench_cl.shipped import without_timings

ROOT = Path(__file__).resolve().parent.parent


def config(defenses: list[str] | None, shard_size: int) -> dict:
    """The llm suite's quick profile with only its GCG column, sharded over behaviours."""
    quick = load_config("llm", profile="quick").model_dump(mode="json")
    section = quick["jailbreak"]
    if defenses:
        section["defenses"] = [d for d in section["defenses"] if d["name"] in defenses]
    section["attacks"] = [a for a in section["attacks"] if a["attack"] == "gcg"]
    section["shard_size"] = shard_size
    return {"suite": "bench-ray-gcg", "seed": quick["seed"], "jailbreak": section}


def gcg_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "cells.jsonl").read_text().splitlines()
    return [without_timings(r) for r in map(json.loads, lines) if r["type"] == "jailbreak"]


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--shard-size", type=int, default=12)
    parser.add_argument("--defenses", nargs="*", default=None, help="defense names (all)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "ray_gcg.json")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    matrix = config(args.defenses, args.shard_size)
    modes = {"local, 1 thread": ("local", 1), f"local, {cores} threads": ("local", cores)}
    modes[f"ray, {cores} workers x 1 thread"] = ("ray", 1)
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    identical = True
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        torch.set_num_threads(cores)
        rbcl.run(matrix, out=root / "warm-up", profile=None)  # defenses trained or loaded
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        for repeat in range(args.repeats):
            runs = {}
            for index, (mode, (executor, threads)) in enumerate(modes.items()):
                torch.set_num_threads(threads)
                out = root / f"{index}-{repeat}"
                started = time.perf_counter()
                runs[executor, threads] = rbcl.run(matrix, out=out, profile=None, executor=executor)
                seconds[mode].append(time.perf_counter() - started)
            identical &= gcg_records(runs["local", 1]) == gcg_records(runs["ray", 1])
        cells = len(gcg_records(runs["local", 1]))
    ray.shutdown()
    medians = {mode: statistics.median(values) for mode, values in seconds.items()}
    baseline = medians["local, 1 thread"]
    report = {
        "benchmark": "ray_gcg",
        "setup": (
            f"llm quick profile, GCG column only: GCG-40 on tiny-chat-lm, 24 harmful behaviours, "
            f"{cells} cells (defenses: {', '.join(d['name'] for d in matrix['jailbreak']['defenses'])}), "
            f"shard_size {args.shard_size}"
        ),
        "cores": cores,
        "repeats": args.repeats,
        "seconds": medians,
        "speedup_over_one_thread": {mode: baseline / value for mode, value in medians.items()},
        "identical_records": identical,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for mode, value in medians.items():
        print(f"{mode:<28} {value:7.1f} s  {baseline / value:5.2f}x")
    print(f"identical records (local 1 thread vs Ray): {identical}")


if __name__ == "__main__":
    main()
