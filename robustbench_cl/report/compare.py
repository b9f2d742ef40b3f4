"""``compare``: the same numbers of several runs side by side, subtracted only on the same data.

Every registered task lines up its own numbers (:meth:`Task.compare_rows`) and says what they
were measured on (:meth:`Task.data_fingerprint`: for the image tasks the dataset, split, drawn
subset and seed). A row is matched across runs by task, row and measure; a run whose data
fingerprint for that task differs from the first run's shows its value beside the others but
gets no delta: a CIFAR-binary run minus an ImageFolder run is not a robustness difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from robustbench_cl.engine.results import load_results
from robustbench_cl.errors import UserError
from robustbench_cl.utils import stable_hash


def _fingerprints(
    results: dict[str, Any], config: dict[str, Any] | None, tasks: list[Any]
) -> dict[str, Any]:
    """Per task with comparable numbers: ``{"id": short hash, "data": the fingerprint}``."""
    prints = {}
    for task in tasks:
        fingerprint = task.data_fingerprint(results, config)
        prints[task.name] = {"id": stable_hash(fingerprint, length=8), "data": fingerprint}
    return prints


def compare_results(
    runs: list[dict[str, Any]], configs: list[dict[str, Any] | None] | None = None
) -> dict[str, Any]:
    """``rows``: one per (task, row, measure) with a value per run (``None`` where a run lacks
    it), ``same_data`` per run (its task fingerprint equals the first run's) and ``deltas``
    against the first run, in rate units, only where the data is the same."""
    from robustbench_cl.engine.task import task_classes

    configs = configs or [None] * len(runs)
    # each task's rows of each run, computed once
    per_run = [{task: task.compare_rows(results) for task in task_classes()} for results in runs]
    prints = [
        _fingerprints(results, config, [task for task, rows in by_task.items() if rows])
        for results, config, by_task in zip(runs, configs, per_run, strict=True)
    ]
    keys: list[tuple[str, str, str]] = []
    values: dict[tuple[str, str, str], list[float | None]] = {}
    better: dict[tuple[str, str, str], str] = {}
    for index, by_task in enumerate(per_run):
        for task, task_rows in by_task.items():
            for row in task_rows:
                key = (task.name, row["row"], row["measure"])
                if key not in values:
                    keys.append(key)
                    values[key] = [None] * len(runs)
                    better[key] = row.get("better", "higher")
                values[key][index] = row["value"]
    task_order = {task.name: i for i, task in enumerate(task_classes())}
    position = {key: i for i, key in enumerate(keys)}
    keys.sort(key=lambda k: (task_order.get(k[0], 99), position[k]))
    rows = []
    for key in keys:
        task = key[0]
        reference = prints[0].get(task, {}).get("id")
        same = [p.get(task, {}).get("id") == reference for p in prints]
        row_values = values[key]
        first = row_values[0]
        deltas = [
            None if v is None or first is None or not same[i] else v - first
            for i, v in enumerate(row_values)
        ]
        rows.append(
            {
                "task": task,
                "pair": key[1],
                "measure": key[2],
                "values": row_values,
                "deltas": deltas,
                "same_data": same,
                "better": better[key],
            }
        )
    return {
        "runs": [
            {
                "suite": r["run"]["suite"],
                "profile": r["run"]["profile"],
                "config_hash": r["run"]["config_hash"],
                "started": r["run"]["started"],
                "data": p,
            }
            for r, p in zip(runs, prints, strict=True)
        ],
        "rows": rows,
    }


def _config(run_dir: Path) -> dict[str, Any] | None:
    try:
        loaded = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def write_comparison(
    run_dirs: list[str | Path],
    output: str | Path,
    names: list[str] | None = None,
    force: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Compare ``run_dirs`` and write the HTML to ``output`` (refused if it exists, unless
    ``force``); a comparison with nothing in common is a :class:`UserError`."""
    from robustbench_cl.report.html import _environment

    path = Path(output)
    if path.exists() and not force:
        raise UserError(
            "--output", f"{path} exists", "pass --force to overwrite it, or another -o PATH"
        )
    comparison = compare_results(
        [load_results(d) for d in run_dirs], [_config(Path(d)) for d in run_dirs]
    )
    if not comparison["rows"]:
        from robustbench_cl.engine.task import Task, task_classes

        default = Task.compare_rows.__func__  # type: ignore[attr-defined]
        lining_up = [t.name for t in task_classes() if t.compare_rows.__func__ is not default]
        raise UserError(
            "RUN_DIRS",
            "these runs have no numbers that compare knows how to line up",
            f"compare runs of tasks that line up their numbers ({', '.join(lining_up)})",
        )
    short = [Path(d).name for d in run_dirs]
    if len(set(short)) < len(short):  # same folder names: show the paths as given
        short = [str(d) for d in run_dirs]
    for run, default, name in zip(
        comparison["runs"], short, names or [None] * len(run_dirs), strict=True
    ):
        run["name"] = name or default
    html = _environment().get_template("compare.html.j2").render(comparison=comparison)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path, comparison
