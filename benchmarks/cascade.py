"""What does the cascade save? The same attacks with and without it, on the same models.

The quickstart's linf 0.1 threat group (FGSM, PGD-20, standard AutoAttack) on digits-cnn,
undefended and PGD-AT, n = 360. With the cascade each attack only attacks the samples still
robust after the attacks before it; without it every attack attacks every clean-correct sample.
The worst case over the group is the same quantity either way (a sample counts as robust only if
no attack broke it); it can differ slightly because random starts are drawn for different sample
sets, and the script reports both. Reported: forward and backward passes (counted
per sample by the engine), attack seconds, and their ratios. Medians of ``--repeats`` runs.
Writes reports/bench/cascade.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

import robustbench_cl as rbcl
from robustbench_cl.engine.summary import load_run
from robustbench_cl.tasks.classification.summary import pair_summaries
from robustbench_cl.utils import device_name

ROOT = Path(__file__).resolve().parent.parent


def config(cascade: bool, n: int) -> dict:
    return {
        "suite": f"bench-cascade-{'on' if cascade else 'off'}",
        "data": {"name": "digits", "n": n},
        "models": [{"spec": "builtin:digits-cnn", "name": "digits-cnn"}],
        "defenses": [
            {"defense": "none", "name": "undefended"},
            {
                "defense": "pgd-at",
                "name": "PGD-AT",
                "params": {"norm": "linf", "eps": 0.1, "steps": 7, "epochs": 30},
            },
        ],
        "attacks": [
            {"attack": "fgsm", "name": "FGSM", "threat": {"norm": "linf", "eps": 0.1}},
            {
                "attack": "pgd",
                "name": "PGD-20",
                "params": {"steps": 20},
                "threat": {"norm": "linf", "eps": 0.1},
            },
            {"attack": "autoattack", "name": "AutoAttack", "threat": {"norm": "linf", "eps": 0.1}},
        ],
        "engine": {"cascade": cascade, "sanity_checks": False, "examples": 0},
    }


def measure(cascade: bool, n: int) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        run_dir = rbcl.run(config(cascade, n), out=Path(directory) / "run", profile=None)
        summary = load_run(run_dir)
    cells = [cell for pair in pair_summaries(summary) for cell in pair.cells]
    return {
        "forward": sum(cell.cost["forward"] for cell in cells),
        "backward": sum(cell.cost["backward"] for cell in cells),
        # seconds in the attacks' calls (the unit's wall_time adds building and probes)
        "seconds": sum(cell.attack_seconds or cell.wall_time for cell in cells),
        "worst_case": {
            pair.defense: [w.robust_accuracy for w in pair.worst_case]
            for pair in pair_summaries(summary)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=360)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "cascade.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = {"on": [], "off": []}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        for mode in ("on", "off"):
            runs[mode].append(measure(mode == "on", args.n))
    worst = {mode: runs[mode][0]["worst_case"] for mode in runs}
    median = {
        mode: {
            k: statistics.median(r[k] for r in runs[mode])
            for k in ("forward", "backward", "seconds")
        }
        for mode in runs
    }
    result = {
        "benchmark": "cascade",
        "n": args.n,
        "repeats": args.repeats,
        "device": device_name(torch.device("cpu")),
        "threads": 1,
        "cascade": median["on"],
        "every_sample": median["off"],
        "ratio_forward": median["off"]["forward"] / median["on"]["forward"],
        "ratio_backward": median["off"]["backward"] / median["on"]["backward"],
        "ratio_seconds": median["off"]["seconds"] / median["on"]["seconds"],
        "worst_case_cascade": worst["on"],
        "worst_case_every_sample": worst["off"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'':24s}{'cascade':>12s}{'every sample':>14s}{'ratio':>8s}")
    for key in ("forward", "backward", "seconds"):
        on, off = median["on"][key], median["off"][key]
        print(f"{key:24s}{on:12.1f}{off:14.1f}{off / on:8.2f}")
    print(f"worst case (robust accuracy) with the cascade: {worst['on']}; without: {worst['off']}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
