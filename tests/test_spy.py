"""One path for every task: the same generic functions plan, run, store, summarize and render
the example task written outside the package (tests/example_task) and a packaged task
(classification), in one run. Spies on the engine's and the report's functions record which
task each call served."""

from __future__ import annotations

import collections

import robustbench_cl as rbcl
from robustbench_cl.engine import loop, results, runner
from robustbench_cl.engine.store import ResultsStore
from robustbench_cl.engine.summary import RunSummary
from robustbench_cl.report import html
from tests.example_task import calibration  # noqa: F401  (registers the task)

CONFIG = {
    "suite": "spy",
    "data": {"name": "digits", "n": 20},
    "models": [{"spec": "builtin:digits-cnn"}],
    "attacks": [{"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
    "engine": {"sanity_checks": False, "examples": 0},
    "tasks": {"calibration": {"models": ["builtin:digits-cnn"], "n": 40, "shard_size": 40}},
}


def test_one_generic_path_plans_runs_stores_summarizes_and_renders_both_tasks(
    tmp_path, monkeypatch
):
    seen: dict[str, set[str]] = collections.defaultdict(set)
    types = {"clean": "classification", "cell": "classification", "calibration": "calibration"}

    def spy(owner, name, record):  # noqa: ANN001, ANN202
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            value = original(*args, **kwargs)
            record(args, kwargs, value)
            return value

        monkeypatch.setattr(owner, name, wrapper)

    # plan: the loop receives every task's plan; run: one _record per unit of any task
    spy(runner, "execute", lambda a, k, v: seen["plan"].update(t.name for t, _ in a[0]))
    spy(loop, "_record", lambda a, k, v: seen["run"].add(a[0].name))
    # store: one append for every record, whichever task wrote it
    spy(ResultsStore, "append", lambda a, k, v: seen["store"].add(types[a[1]["type"]]))
    # summarize: each task reads its own record types through the one accessor
    spy(
        RunSummary,
        "of",
        lambda a, k, v: seen["summarize"].update(types[t] for t in a[1:] if t in types),
    )
    # render: one function renders every task's section from its template
    spy(html, "task_sections", lambda a, k, v: seen["render"].update(s["name"] for s in v))

    run_dir = rbcl.run(CONFIG, out=tmp_path / "run", profile=None)
    built = results.load_results(run_dir)
    html.render_results(built, run_dir)

    both = {"classification", "calibration"}
    for step in ("plan", "run", "store", "summarize", "render"):
        assert both <= seen[step], (step, seen[step])
    assert built["pairs"] and built["calibration"]
