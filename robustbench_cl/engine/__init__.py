"""The matrix engine: config, cells, cascade, results store, sanity checks and summaries."""

from robustbench_cl.engine.config import MatrixConfig, list_suites, load_config
from robustbench_cl.engine.runner import Progress, run
from robustbench_cl.engine.summary import RunSummary, load_run

__all__ = [
    "MatrixConfig",
    "Progress",
    "RunSummary",
    "list_suites",
    "load_config",
    "load_run",
    "run",
]
