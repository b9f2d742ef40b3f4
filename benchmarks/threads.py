"""Why the engine uses half the cores by default: torch threads on an idle and a busy machine.

Standard AutoAttack (the demo's slowest column) on ``--n`` digits against digits-cnn, each
setting in a fresh subprocess: torch with 1 thread and with every core, first on idle cores, then
beside ``--load`` busy-loop processes (a user's machine is rarely idle). With every core taken,
the thread that loses its core to the busy loop stalls each parallel region's barrier. Writes
reports/bench/threads.json and prints a table. The outcomes must not differ between settings.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from robustbench_cl.attacks.autoattack import AutoAttack
from robustbench_cl.data import load_dataset
from robustbench_cl.models import load_model
from robustbench_cl.threat import ThreatModel
model = load_model("builtin:digits-cnn").eval()
for parameter in model.parameters():
    parameter.requires_grad_(False)
x, y = load_dataset("digits", split="test").tensors(int(sys.argv[2]))
start = time.perf_counter()
result = AutoAttack().perturb(model, x, y, ThreatModel(norm="linf", eps=0.1))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "robust": int((~result.known_success).sum())}))
"""


def _busy() -> None:
    while True:
        pass


def measure(threads: int, n: int) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads), str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--load", type=int, default=1, help="busy loops in the loaded setting")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "threads.json")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    counts = sorted({1, cores})
    measure(1, 8)  # builds the model into the cache if it is not there yet
    rows = []
    for loaded in (False, True):
        hogs = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
        if loaded:
            for hog in hogs:
                hog.start()
        try:
            for threads in counts:
                result = measure(threads, args.n)
                rows.append(
                    {
                        "busy_loops_beside": args.load if loaded else 0,
                        "threads": threads,
                        "seconds": round(result["seconds"], 1),
                        "robust": result["robust"],
                    }
                )
                print(rows[-1], flush=True)
        finally:
            for hog in hogs if loaded else []:
                hog.terminate()
    assert len({row["robust"] for row in rows}) == 1, "outcomes differ between thread counts"
    report = {
        "benchmark": "threads",
        "attack": "standard AutoAttack, linf eps 0.1",
        "model": "builtin:digits-cnn (undefended)",
        "n": args.n,
        "cores": cores,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'busy loops':>10} {'threads':>7} {'seconds':>8}")
    for row in rows:
        print(f"{row['busy_loops_beside']:>10} {row['threads']:>7} {row['seconds']:>8}")


if __name__ == "__main__":
    main()
