"""``robustbench-cl export RUN --format NAME``: a run's results in another project's format.

Tasks register their formats here (:func:`register_export`); an exporter reads the run's
``results.json`` (re-derived from its records) and its ``config.yaml``, and returns the files
to write, as ``{relative path: JSON value}``. An exporter refuses, with a one-line error, a run whose numbers
the format would misstate: it never writes a number under a name that promises more than the
run measured (e.g. an AutoAttack accuracy from a reduced or non-adaptive evaluation).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustbench_cl.registry import Registry

#: name -> exporter(results, options, config) -> {relative path: JSON value}
EXPORTS: Registry[Callable[..., dict[str, Any]]] = Registry("export format")


def register_export(name: str) -> Callable[[Any], Any]:
    return EXPORTS.register(name)


def export_run(
    run_dir: str | Path, fmt: str, out: str | Path, options: dict[str, str] | None = None
) -> list[Path]:
    """Write ``fmt``'s files for ``run_dir`` under ``out``; returns the paths written."""
    import yaml

    from robustbench_cl.engine.results import load_results
    from robustbench_cl.paths import inside

    exporter = EXPORTS.get(fmt)
    config_path = Path(run_dir) / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    options = dict(options or {})
    options["run_dir"] = str(run_dir)  # formats that need the per-sample records read them
    files = exporter(load_results(run_dir), options, config or {})
    written = []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for relative, value in files.items():
        path = inside(out, relative)  # names come from run labels: never outside ``out``
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value, indent=2) + "\n")
        written.append(path)
    return written
