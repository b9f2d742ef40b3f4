"""``run``: a config into a run directory, through the engine loop.

Validates the config and every task's plan before touching the disk, writes ``config.yaml``
and ``meta.json``, runs the units of every task whose section the config has
(:mod:`robustbench_cl.engine.loop`), and derives ``results.json``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import yaml

from robustbench_cl.engine.config import MatrixConfig, config_model, load_config
from robustbench_cl.engine.loop import execute
from robustbench_cl.engine.results import write_results
from robustbench_cl.engine.store import ResultsStore, write_json_atomic
from robustbench_cl.engine.task import (
    Progress,
    RunContext,
    active_tasks,
    validate_task_sections,
)
from robustbench_cl.engine.threads import apply_threads
from robustbench_cl.errors import RunInterrupted, UserError
from robustbench_cl.models.artifacts import collect_artifact_uses
from robustbench_cl.paths import inside, slug
from robustbench_cl.utils import allow_remote_code, cache_home, device_name, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["Progress", "default_run_dir", "run"]


def _meta(
    config: MatrixConfig, device: torch.device, command: str | None, profile: str | None
) -> dict[str, Any]:
    from robustbench_cl._version import __version__

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "robustbench_cl": __version__,
    }
    # read from the installed metadata, never by importing: importing ART writes ~/.art/
    for key, distribution in (
        ("torchattacks", "torchattacks"),
        ("art", "adversarial-robustness-toolbox"),
        ("sklearn", "scikit-learn"),
        ("numpy", "numpy"),
    ):
        try:
            versions[key] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:  # an optional package is just not recorded
            pass
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "suite": config.suite,
        "profile": profile,
        "config_hash": config.config_hash(),
        "seed": config.seed,
        "device": str(device),
        "device_name": device_name(device),
        "host": socket.gethostname(),
        "versions": versions,
        "git_commit": commit,
        "command": command or " ".join(sys.argv),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


#: where units run: here, as Ray tasks, or in local worker processes
EXECUTORS = ("local", "ray", "processes")


def _remote_executor(
    executor: str,
    address: str | None,
    gpus_per_task: float,
    workers: int | None,
    threads: int,
) -> Any:
    """The executor object for ``executor`` (None for local), with the driver's settings."""
    if executor == "local":
        return None
    from robustbench_cl.utils import TRUST_REMOTE_CODE_ENV, trust_remote_code

    env = {"ROBUSTBENCH_CL_HOME": str(cache_home())}
    if trust_remote_code():
        env[TRUST_REMOTE_CODE_ENV] = "1"
    if executor == "ray":
        from robustbench_cl.engine.executors import RayExecutor

        return RayExecutor(address, gpus_per_task, env)
    from robustbench_cl.engine.executors import ProcessExecutor
    from robustbench_cl.engine.threads import available_cores

    return ProcessExecutor(workers or max(1, available_cores() // threads), env)


def _resume_command(command: str | None, run_dir: Path) -> str | None:
    """The command that resumes an interrupted run: the ``run`` that ran, into its run
    directory (a run without ``--out`` went to a new timestamped folder) and without
    ``--fresh``; None for a command that runs in a temporary folder (``attack``)."""
    import shlex

    if not command:
        return f"run(..., out={str(run_dir)!r}) again (resume=True)"
    try:
        words = shlex.split(command)
    except ValueError:  # not a shell line (quotes that do not close): no exact command
        return f"the same command with --out {shlex.quote(str(run_dir))}"
    if words[:1] != ["robustbench-cl"] or "run" not in words[1:]:
        return None
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word == "--out":
            skip = True
        elif word == "--fresh" or word.startswith("--out="):
            continue
        else:
            kept.append(word)
    return shlex.join([*kept, "--out", str(run_dir)])


def default_run_dir(suite: str) -> Path:
    """``runs/<slug of the suite>-<timestamp>``, with a suffix if that second is already taken.
    The suite name comes from a config: :func:`~robustbench_cl.paths.slug` keeps it one safe
    folder name inside ``runs/``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = slug(suite)
    candidate = inside("runs", f"{name}-{stamp}")
    counter = 2
    while candidate.exists():
        candidate = inside("runs", f"{name}-{stamp}-{counter}")
        counter += 1
    return Path("runs") / candidate.name


def run(
    source: str | Path | dict[str, Any] = "quickstart",
    out: str | Path | None = None,
    profile: str | None = "quick",
    device: str | torch.device | None = "auto",
    resume: bool = True,
    seed: int | None = None,
    progress: Progress | None = None,
    command: str | None = None,
    engine: dict[str, Any] | None = None,
    executor: str = "local",
    address: str | None = None,
    gpus_per_task: float = 0.0,
    threads: int | None = None,
    workers: int | None = None,
) -> Path:
    """Run a matrix (a packaged suite name, a YAML path or a dict) into a run directory.

    ``engine`` overrides keys of the config's ``engine`` section (``batch_size``, ``precision``).
    ``executor="ray"`` runs every task's units (and sample shards) as Ray tasks (``address`` of
    a cluster, or a local one); ``executor="processes"`` runs them in ``workers`` local worker
    processes (default: as many as the cores hold at the thread count). Either way the records
    are identical to the local executor's. ``threads`` is torch's CPU thread count per process
    (default: half the cores, see :mod:`robustbench_cl.engine.threads`).
    """
    if executor not in EXECUTORS:
        raise UserError(
            "--executor", f"unknown executor {executor!r}", f"use one of {', '.join(EXECUTORS)}"
        )
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise UserError("--workers", f"{workers!r} is not a whole number", "give e.g. 2")
    if workers is not None and workers < 1:
        raise UserError("--workers", f"{workers} workers", "give at least 1")
    if workers is not None and executor != "processes":
        raise UserError(
            "--workers", "sets the processes executor's size", "add --executor processes"
        )
    used_threads = apply_threads(threads)
    # torch's compile cache (created the first time an optimiser runs) goes to our cache, not
    # to /tmp/torchinductor_<user>: a run writes only in its folder and the cache
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_home() / "torchinductor"))
    config = validate_task_sections(load_config(source, profile=profile, seed=seed, engine=engine))
    if config.trust_remote_code:
        allow_remote_code()
    resolved_device = resolve_device(device)
    progress = progress or Progress()
    run_dir = Path(out) if out is not None else default_run_dir(config.suite)
    config_path = run_dir / "config.yaml"
    resolved = config.model_dump(mode="json")
    if resume and config_path.exists():
        previous = yaml.safe_load(config_path.read_text())
        previous.pop("task", None)  # a label of older versions, gone
        with contextlib.suppress(Exception):  # a run by an older version: compare like with like
            previous = config_model().model_validate(previous).model_dump(mode="json")
        if previous != resolved:
            raise UserError(
                "--out",
                f"{run_dir} holds a run of a different config",
                "use --fresh to overwrite it, or another --out",
            )
    # a resumed run's records came from several invocations: keep the artifacts the earlier
    # ones used (an artifact used again, under whatever hash it has now, is replaced below)
    earlier: dict[str, str] = {}
    if resume and (run_dir / "meta.json").exists():
        with contextlib.suppress(ValueError, OSError):
            earlier = dict(json.loads((run_dir / "meta.json").read_text()).get("artifacts") or {})
    ctx = RunContext(config, run_dir, resolved_device, progress, resume=resume)
    # the cached artifacts this run (planning included) and its Ray workers use
    with collect_artifact_uses() as used:
        # every task validates its section and plans its units before anything is written
        tasks = [task_class(ctx) for task_class in active_tasks(config)]
        plans = [(task, task.plan()) for task in tasks]
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path.write_text(yaml.safe_dump(resolved, sort_keys=False))
        meta = _meta(config, resolved_device, command, profile)
        write_json_atomic(run_dir / "meta.json", meta)
        meta["data"] = next((d for t in tasks if (d := t.describe_data()) is not None), None)
        started = time.perf_counter()
        remote = _remote_executor(executor, address, gpus_per_task, workers, used_threads)
        try:
            execute(plans, ctx, ResultsStore(run_dir / "cells.jsonl"), remote)
        except BaseException as error:  # an error or Ctrl-C: stop the workers, keep the records
            if remote is not None:
                remote.close(abort=True)
            if isinstance(error, KeyboardInterrupt) and not isinstance(error, RunInterrupted):
                kept = len(ResultsStore(run_dir / "cells.jsonl").read())
                total = sum(len(units) for _, units in plans)
                partial = any((run_dir / "partial").glob("*/*.safetensors"))
                resume = _resume_command(command, run_dir)
                if resume is None:  # a temporary run directory: nothing outlives the command
                    raise RunInterrupted(str(run_dir), 0, total, None, False) from None
                raise RunInterrupted(str(run_dir), kept, total, resume, partial) from None
            raise
        if remote is not None:
            remote.close()
    meta["executor"] = executor
    if executor == "processes":
        meta["workers"] = remote.workers
    meta["threads"] = used_threads
    # content hashes of the cached weights this run and its Ray workers used
    meta["artifacts"] = dict(sorted({**earlier, **used}.items()))
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["wall_time"] = time.perf_counter() - started
    write_json_atomic(run_dir / "meta.json", meta)
    write_results(run_dir)
    logger.info("run written to %s", run_dir)
    return run_dir
