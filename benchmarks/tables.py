"""Write the benchmark tables of reports/README.md from reports/bench/*.json.

``make bench`` runs this last. Each table sits between two markers,
``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``, and is rewritten from the JSON the
benchmark wrote; the prose around it is left alone. A table whose JSON is missing is kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "reports" / "bench"
README = ROOT / "reports" / "README.md"


def _load(name: str) -> dict | None:
    path = BENCH / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def overhead() -> list[str] | None:
    runs = [run for run in (_load("attack_overhead"), _load("attack_overhead_batch32")) if run]
    if not runs:
        return None
    header = " | ".join(f"batch {run['batch_size']}" for run in runs)
    lines = [
        f"| metric | {header} | target |",
        "|---|" + "---:|" * len(runs) + "---|",
    ]
    metrics = [
        ("limit ratio: our PGD-k / (k x bare forward+backward)", "limit_ratio"),
        ("ours / torchattacks PGD", "ours_vs_torchattacks"),
        ("ours, last iterate / torchattacks PGD", "ours_last_iterate_vs_torchattacks"),
        ("ART ProjectedGradientDescentPyTorch / ours", "art_vs_ours"),
    ]
    for label, key in metrics:
        cells = " | ".join(f"{run[key]:.3f} ({run['min_based'][key]:.3f})" for run in runs)
        lines.append(f"| {label} | {cells} | {runs[0]['targets'].get(key, '')} |")
    return lines


def cascade() -> list[str] | None:
    run = _load("cascade")
    if run is None:
        return None
    on, off = run["cascade"], run["every_sample"]
    lines = [
        f"n = {run['n']}, {run['threads']} thread, "
        + (f"medians of {run['repeats']} interleaved runs." if run["repeats"] > 1 else "one run."),
        "",
        "| | cascade | every sample | saving |",
        "|---|---:|---:|---:|",
        f"| forward passes | {on['forward']:,} | {off['forward']:,} | {run['ratio_forward']:.2f}x |",
        f"| backward passes | {on['backward']:,} | {off['backward']:,} "
        f"| {run['ratio_backward']:.2f}x |",
        f"| attack seconds | {on['seconds']:.1f} | {off['seconds']:.1f} "
        f"| {run['ratio_seconds']:.2f}x |",
    ]
    worst = [
        f"{name} {100 * run['worst_case_cascade'][name][0]:.1f}% / "
        f"{100 * run['worst_case_every_sample'][name][0]:.1f}%"
        for name in run["worst_case_cascade"]
    ]
    lines += ["", "Worst case, cascade / every sample: " + "; ".join(worst) + "."]
    return lines


def embedding() -> list[str] | None:
    run = _load("embedding_attack")
    if run is None:
        return None
    bare = run["bare_step_seconds"]
    return [
        "| per step | seconds | x bare forward+backward |",
        "|---|---:|---:|",
        f"| bare forward+backward | {bare:.4f} | 1.00 |",
        "| embedding attack (sign step, per-token projection, keep-best, masks) | "
        f"{run['embedding_step_seconds']:.4f} | **{run['embedding_limit_ratio']:.2f}** |",
        f"| GCG (one-hot gradient + {run['gcg_candidates']} candidates per prompt scored) | "
        f"{run['gcg_step_seconds']:.3f} | {run['gcg_step_in_bare_steps']:.1f} |",
    ]


def streaming() -> list[str] | None:
    run = _load("streaming_memory")
    if run is None:
        return None
    labels = {
        "unsharded": "unsharded: every input read into memory",
        "shard 1000": "`engine.shard_size: 1000`: one shard held at a time",
    }
    lines = [
        "| | peak at 1k (MiB) | peak at 10k (MiB) | 10k / 1k | seconds at 10k |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in run["rows"].items():
        lines.append(
            f"| {labels.get(name, name)} | {row['peak_mib_1k']:,.0f} | {row['peak_mib_10k']:,.0f} "
            f"| **{row['ratio_10k_over_1k']:.2f}** | {row['seconds_10k']:.1f} |"
        )
    return lines


def ray_shards() -> list[str] | None:
    run = _load("ray_shards")
    if run is None:
        return None
    lines = [
        f"{run['setup']} ({run['shards']} shards), {run['cores']} cores, medians of "
        f"{run['repeats']} interleaved runs; identical outcomes, local vs Ray: "
        f"{'yes' if run['identical_outcomes'] else 'NO'}.",
        "",
        "| executor | seconds | speed-up over 1 thread |",
        "|---|---:|---:|",
    ]
    for mode, seconds in run["seconds"].items():
        lines.append(f"| {mode} | {seconds:.1f} | {run['speedup_over_one_thread'][mode]:.2f}x |")
    return lines


def ray_gcg() -> list[str] | None:
    run = _load("ray_gcg")
    if run is None:
        return None
    lines = [
        f"{run['setup']}, {run['cores']} cores, medians of {run['repeats']} run(s); identical "
        f"records, local vs Ray: {'yes' if run['identical_records'] else 'NO'}.",
        "",
        "| executor | seconds | speed-up over 1 thread |",
        "|---|---:|---:|",
    ]
    for mode, seconds in run["seconds"].items():
        lines.append(f"| {mode} | {seconds:.1f} | {run['speedup_over_one_thread'][mode]:.2f}x |")
    return lines


def threads() -> list[str] | None:
    run = _load("threads")
    if run is None:
        return None
    lines = [
        f"{run['attack']} on {run['n']} digits, {run['model']}, {run['cores']} cores; outcomes "
        "identical in every setting.",
        "",
        "| busy loops beside | torch threads | seconds |",
        "|---:|---:|---:|",
    ]
    for row in run["rows"]:
        lines.append(f"| {row['busy_loops_beside']} | {row['threads']} | {row['seconds']:.1f} |")
    return lines


def demo_time() -> list[str] | None:
    run = _load("demo_time")
    if run is None:
        return None
    return [
        f"`robustbench-cl run quickstart` (the quick profile), {run['cpus']} cores, "
        f"{run['busy_loops_beside']} busy loop(s) beside it, shipped artifacts "
        f"{'on' if run['shipped_artifacts'] else 'off'}; `make demo` adds the venv and install.",
        "",
        "| cache | seconds |",
        "|---|---:|",
        f"| cold (empty) | {run['cold_seconds']:.0f} |",
        f"| warm | {run['warm_seconds']:.0f} |",
    ]


TABLES: dict[str, Callable[[], list[str] | None]] = {
    "threads": threads,
    "demo_time": demo_time,
    "attack_overhead": overhead,
    "cascade": cascade,
    "embedding_attack": embedding,
    "streaming_memory": streaming,
    "ray_shards": ray_shards,
    "ray_gcg": ray_gcg,
}


def write(text: str) -> str:
    """``text`` with every marked table rewritten from its JSON."""
    for name, render in TABLES.items():
        lines = render()
        if lines is None:
            continue
        pattern = re.compile(rf"(<!-- bench:{name} -->\n).*?(<!-- /bench:{name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"reports/README.md has no <!-- bench:{name} --> markers")
        body = "\n".join(lines) + "\n"
        text = pattern.sub(lambda match, body=body: match.group(1) + body + match.group(2), text)
    return text


def main() -> None:
    README.write_text(write(README.read_text()))
    print(f"tables written to {README.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
