"""The ``robustbench-cl`` command line: run, list, show, report, compare and one-off attacks."""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from robustbench_cl.errors import RunInterrupted, ThreatModelViolation, UserError
from robustbench_cl.paths import inside

console = Console(stderr=True)
stdout = Console()


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit code 2 (a traceback with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (UserError, ThreatModelViolation) as error:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as error:  # Ctrl-C: what is kept, and how to go on
            if ctx.obj and ctx.obj.get("debug"):
                raise
            message = str(error) if isinstance(error, RunInterrupted) else "interrupted"
            click.echo(message, err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Log what the engine does.")
@click.option(
    "--trust-remote-code",
    is_flag=True,
    help="Load pickled checkpoints (weights_only=False): only for files you trust.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="torch CPU threads (default: half the cores, which a busy machine runs fastest).",
)
@click.version_option(package_name="robustbench-cl")
@click.pass_context
def cli(
    ctx: click.Context, debug: bool, verbose: bool, trust_remote_code: bool, threads: int | None
) -> None:
    """Attack x defense matrices under one threat model, with honest reports."""
    ctx.obj = {"debug": debug}
    if threads is not None:  # read by engine.threads.apply_threads in every command that computes
        import os

        os.environ["ROBUSTBENCH_CL_THREADS"] = str(threads)
    if trust_remote_code:
        from robustbench_cl.utils import allow_remote_code

        allow_remote_code()
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )


@cli.command()
@click.argument("suite", default="quickstart")
@click.option(
    "--profile",
    default="quick",
    show_default=True,
    help="a profile of the suite: quick, full, or one the suite defines (e.g. vlp's seeds)",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run directory (default runs/<suite>-<timestamp>).",
)
@click.option(
    "--device", default="auto", show_default=True, help="auto (CUDA if present), cpu or cuda[:N]."
)
@click.option(
    "--resume/--fresh",
    default=True,
    show_default=True,
    help="Reuse the records already in --out (resume), or start over.",
)
@click.option("--seed", type=int, default=None, help="Override the config's seed.")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default=None,
    help="Attack precision (bf16 autocast is opt-in; outcomes are judged in fp32).",
)
@click.option("--batch-size", default=None, help="Samples per attack call, or 'auto'.")
@click.option(
    "--shard-size",
    type=click.IntRange(min=1),
    default=None,
    help="Samples per shard: inputs are held one shard at a time, and each is one Ray task.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray", "processes"]),
    default="local",
    show_default=True,
    help="Run cascade groups and shards in this process, as Ray tasks, or in local worker "
    "processes (same records).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes of --executor processes (default: cores / threads).",
)
@click.option("--address", default=None, help="Ray cluster address (default: a local Ray).")
@click.option("--gpus-per-task", type=float, default=0.0, show_default=True)
@click.option(
    "--json", "as_json", is_flag=True, help="Print every task's summary as JSON on stdout."
)
def run(
    suite: str,
    profile: str,
    out: Path | None,
    device: str,
    resume: bool,
    seed: int | None,
    precision: str | None,
    batch_size: str | None,
    shard_size: int | None,
    executor: str,
    address: str | None,
    gpus_per_task: float,
    workers: int | None,
    as_json: bool,
) -> None:
    """Run SUITE (a packaged suite name or a YAML config path)."""
    from robustbench_cl.cli.progress import LineProgress, RichProgress
    from robustbench_cl.engine import load_run
    from robustbench_cl.engine import run as run_matrix

    command = shlex.join(["robustbench-cl", *sys.argv[1:]])  # as a shell reads it back
    # bars on a terminal; in a pipe, a log or CI, lines with elapsed times and a heartbeat
    drawn = RichProgress(console) if console.is_terminal else LineProgress(console)
    with drawn as progress:
        run_dir = run_matrix(
            suite,
            out=out,
            profile=profile,
            device=device,
            resume=resume,
            seed=seed,
            progress=progress,
            command=command,
            engine=_engine_overrides(precision, batch_size, shard_size),
            executor=executor,
            address=address,
            gpus_per_task=gpus_per_task,
            workers=workers,
        )
    summary = load_run(run_dir)
    _write_report(run_dir)
    if as_json:
        stdout.print_json(json.dumps(_summary_json(summary)))
    else:
        _print_summary(summary)
        console.print(f"run directory: {run_dir}")


def _engine_overrides(
    precision: str | None, batch_size: str | None, shard_size: int | None = None
) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if shard_size is not None:
        overrides["shard_size"] = shard_size
    if precision is not None:
        overrides["precision"] = precision
    if batch_size is not None:
        if batch_size != "auto" and not batch_size.isdigit():
            raise UserError(
                "--batch-size", f"expected a number or auto, got {batch_size!r}", "e.g. 256"
            )
        overrides["batch_size"] = batch_size if batch_size == "auto" else int(batch_size)
    return overrides


def _write_report(run_dir: Path) -> None:
    from robustbench_cl.report.html import write_report

    path = write_report(run_dir)
    console.print(f"report: {path}")


def _print_summary(summary: Any) -> None:
    """Every task's terminal table, in task order, then the sanity flags of all of them."""
    from robustbench_cl.engine.results import build_results
    from robustbench_cl.engine.task import task_classes
    from robustbench_cl.report.table import flags_table

    tables = [task.table(summary) for task in task_classes()]
    for table in [*tables, flags_table(build_results(summary))]:
        if table is not None:
            stdout.print(table)


def _summary_json(summary: Any) -> dict[str, Any]:
    """``run --json`` and ``show --json``: the run and each task's part (``Task.summary_json``)."""
    from robustbench_cl.engine.task import task_classes

    output: dict[str, Any] = {"run_dir": str(summary.run_dir), "suite": summary.meta.get("suite")}
    for task in task_classes():
        output.update(task.summary_json(summary) or {})
    return output


LIST_KINDS = (
    "attacks",
    "defenses",
    "models",
    "datasets",
    "suites",
    "membership",
    "protectors",
    "routers",
    "exports",
    "judges",
)

#: the classification data sources; every task lists its own (``Task.data_sources``)
DATASET_SOURCES = (
    ("safetensors:DIR", "classification", "your own x/y tensors (test.safetensors), streamed"),
    ("imagefolder:DIR[?size=N]", "classification", "a torchvision ImageFolder tree, streamed"),
    (
        "cifar10:DIR",
        "classification",
        "CIFAR-10's binary batches (data_batch_*.bin, test_batch.bin)",
    ),
    (
        "cifar100:DIR",
        "classification",
        "CIFAR-100's binary files (train.bin, test.bin), fine labels",
    ),
    (
        "hf-disk:DIR[?image=COL&label=COL&size=N]",
        "classification",
        "a Hugging Face save_to_disk folder, streamed (extra: datasets)",
    ),
)


def _doc_line(obj: Any) -> str:
    """The first sentence of a docstring."""
    paragraph = (getattr(obj, "__doc__", None) or "").strip().split("\n\n")[0]
    sentence = " ".join(paragraph.split()).replace("``", "").split(". ")[0]
    return sentence.rstrip(".")


@cli.command(name="list")
@click.argument("kind", type=click.Choice(LIST_KINDS), default="attacks")
@click.argument("pattern", default="*")
@click.option(
    "--params",
    "with_params",
    is_flag=True,
    help="Print each matching entry's parameters: default, type and meaning.",
)
def list_command(kind: str, pattern: str, with_params: bool) -> None:
    """List registered names, optionally filtered by a wildcard PATTERN ('pgd*').

    With --params, each matching entry's parameters, as a config's `params:` (or a model
    spec's `?key=value` options) sets them: `robustbench-cl list attacks pgd --params`.
    """
    import fnmatch

    from robustbench_cl import registry
    from robustbench_cl.engine.config import list_suites

    if with_params:
        _print_parameters(kind, pattern)
        return
    table = Table(title=kind, title_justify="left")
    table.add_column("name", style="bold")
    rows: list[tuple[str, ...]] = []
    if kind == "suites":
        from robustbench_cl.engine.config import read_yaml, resolve_suite_path

        for name in list_suites():
            description = read_yaml(resolve_suite_path(name)).get("description", "")
            rows.append((name, description or "packaged suite"))
    elif kind == "datasets":
        table.add_column("section")
        rows += [
            (name, "classification", registry.DATASETS.summary(name))
            for name in registry.DATASETS.names()
        ]
        from robustbench_cl.engine.task import task_classes

        rows += list(DATASET_SOURCES)
        rows += [(spec, t.name, text) for t in task_classes() for spec, text in t.data_sources]
    elif kind == "routers":
        from robustbench_cl.privacy.routers import ROUTERS

        rows += [(name, _doc_line(router)) for name, router in ROUTERS.items()]
    elif kind == "judges":
        from robustbench_cl.tasks.jailbreak.judges import JUDGE_SCHEMES, JUDGES

        rows += [(name, JUDGES.summary(name)) for name in JUDGES.names()]
        rows += [(f"{name}:DIR", _doc_line(factory)) for name, factory in JUDGE_SCHEMES.items()]
    else:
        reg = _named_registry(kind)
        for name in reg.names():
            rows.append((f"builtin:{name}" if kind == "models" else name, reg.summary(name)))
        if kind == "attacks":
            rows.append(("torchattacks:NAME", "any torchattacks attack, under our threat model"))
            rows.append(("art:NAME", "any ART evasion attack, under our threat model"))
        if kind == "models":
            from robustbench_cl.models import SCHEMES

            rows += [(f"{name}:...", _doc_line(SCHEMES.get(name))) for name in SCHEMES.names()]
            from robustbench_cl.models.robustbench import ZOO

            for (dataset, threat), entries in ZOO.items():
                query = "" if (dataset, threat) == ("cifar10", "Linf") else f"?threat={threat}"
                rows += [
                    (f"robustbench:{name}{query}", f"{dataset} {threat}: {entry.architecture}")
                    for name, entry in entries.items()
                ]
    table.add_column("summary")
    for row in rows:
        if fnmatch.fnmatch(row[0], pattern):
            table.add_row(*row)
    stdout.print(table)


def _named_registry(kind: str) -> Any:
    """The registry behind ``list KIND`` for attacks, defenses, models, membership, protectors."""
    from robustbench_cl import registry
    from robustbench_cl.defenses.protectors import PROTECTORS
    from robustbench_cl.engine.export import EXPORTS
    from robustbench_cl.privacy.membership import MEMBERSHIP_ATTACKS

    return {
        "attacks": registry.ATTACKS,
        "defenses": registry.DEFENSES,
        "models": registry.MODELS,
        "membership": MEMBERSHIP_ATTACKS,
        "protectors": PROTECTORS,
        "exports": EXPORTS,
    }[kind]


class _SpecOptions:
    """A model scheme's parameters: the ``?key=value`` options its docstring's ``Options:``
    section lists (the loader's own signature is always ``(target, options)``)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def describe_parameters(self) -> list[Any]:
        from robustbench_cl.registry import Parameter, documented_parameters

        options = documented_parameters(self.loader.__doc__)
        return [Parameter(name, "see meaning", "str", text) for name, text in options.items()]


def _parameter_sources(kind: str) -> list[tuple[str, str, Any]]:
    """``(shown name, summary, factory)`` of each entry of ``kind`` that takes parameters."""

    if kind in ("suites", "datasets", "routers", "judges"):
        raise UserError(
            "--params",
            f"{kind} take no parameters in a config",
            "use it with attacks, defenses, models, membership or protectors",
        )
    reg = _named_registry(kind)
    prefix = "builtin:" if kind == "models" else ""
    sources = [(prefix + name, reg.summary(name), reg.get(name)) for name in reg.names()]
    if kind == "models":
        from robustbench_cl.models import SCHEMES

        sources += [
            (name, _doc_line(SCHEMES.get(name)), _SpecOptions(SCHEMES.get(name)))
            for name in SCHEMES.names()
        ]
    return sources


def _print_parameters(kind: str, pattern: str) -> None:
    """One table per matching entry: parameter, default, type, meaning."""
    import fnmatch

    from robustbench_cl.registry import describe_parameters

    sources = _parameter_sources(kind)
    matched = [
        entry
        for entry in sources
        if fnmatch.fnmatch(entry[0], pattern) or fnmatch.fnmatch(entry[0], f"builtin:{pattern}")
    ]
    if not matched:
        names = ", ".join(name for name, _, _ in sources)
        raise UserError("pattern", f"no {kind} match {pattern!r}", f"use one of {names}")
    for name, summary, factory in matched:
        parameters = describe_parameters(factory)
        table = Table(title=f"{name}: {summary}", title_justify="left")
        for column in ("parameter", "default", "type", "meaning"):
            table.add_column(column, style="bold" if column == "parameter" else None)
        for parameter in parameters:
            table.add_row(
                parameter.name, parameter.default, parameter.annotation, parameter.meaning
            )
        if not parameters:
            table.add_row("(none)", "", "", "takes no parameters")
        stdout.print(table)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    required=True,
    help="An export format (`robustbench-cl list exports`), e.g. robustbench.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=Path("exported"),
    show_default=True,
    help="The folder the format's files go in.",
)
@click.option("--name", default=None, help="The entry's file name (a run with one entry).")
@click.option(
    "--dataset", default=None, help="The dataset's name in the entry (default: the run's)."
)
@click.option(
    "--allow-subset",
    is_flag=True,
    help="Export an evaluation on fewer test images than the leaderboard's (said in its footnote).",
)
def export(
    run_dir: Path, fmt: str, out: Path, name: str | None, dataset: str | None, allow_subset: bool
) -> None:
    """Write RUN_DIR's results in another project's format, e.g. RobustBench's leaderboard
    entries: `export RUN --format robustbench -o model_info`."""
    from robustbench_cl.engine.export import export_run

    options = {k: v for k, v in (("name", name), ("dataset", dataset)) if v}
    if allow_subset:
        options["allow_subset"] = "yes"
    for path in export_run(run_dir, fmt, out, options):
        stdout.print(f"wrote {path}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="Print every task's summary as JSON on stdout."
)
def show(run_dir: Path, as_json: bool) -> None:
    """Print every task's table of a finished (or partial) RUN_DIR, then its sanity flags."""
    from robustbench_cl.engine import load_run

    summary = load_run(run_dir)
    if as_json:
        stdout.print_json(json.dumps(_summary_json(summary)))
    else:
        _print_summary(summary)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="HTML file to write (default RUN_DIR/report.html).",
)
@click.option(
    "--screenshot",
    type=click.Path(path_type=Path),
    default=None,
    help="Also save a PNG of the rendered report (needs Chromium).",
)
def report(run_dir: Path, output: Path | None, screenshot: Path | None) -> None:
    """Write RUN_DIR's results.json and its self-contained HTML report."""
    from robustbench_cl.engine.results import write_results
    from robustbench_cl.report.html import write_report

    console.print(f"results: {write_results(run_dir)}")
    path = write_report(run_dir, output)
    console.print(f"report: {path}")
    if screenshot is not None:
        from robustbench_cl.report.browser import screenshot as take_screenshot

        console.print(f"screenshot: {take_screenshot(path, screenshot)}")


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=Path("compare.html"),
    show_default=True,
    help="HTML file to write.",
)
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
def compare(run_dirs: tuple[Path, ...], output: Path, force: bool, as_json: bool) -> None:
    """Compare every task's numbers across RUN_DIRS side by side; deltas against the first run
    only where a run measured the same data (dataset, split, evaluated subset, seed)."""
    from robustbench_cl.report.compare import write_comparison
    from robustbench_cl.report.table import comparison_table

    if len(run_dirs) < 2:
        raise UserError(
            "RUN_DIRS", "compare needs at least two run directories", "pass two or more"
        )
    path, comparison = write_comparison(list(run_dirs), output, force=force)
    for line in weight_differences(list(run_dirs)):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if as_json:
        stdout.print_json(json.dumps(comparison))
    else:
        stdout.print(comparison_table(comparison))
    console.print(f"comparison: {path}")


def weight_differences(run_dirs: list[Path]) -> list[str]:
    """One line per cached artifact that the first run and another used with other weights."""
    metas = []
    for run_dir in run_dirs:
        try:
            metas.append(json.loads((Path(run_dir) / "meta.json").read_text()).get("artifacts"))
        except (OSError, ValueError):
            metas.append(None)
    lines = []
    for run_dir, artifacts in zip(run_dirs[1:], metas[1:]):
        if metas[0] is None or artifacts is None:
            continue  # a run from before artifacts were recorded
        differ = sorted(k for k in set(metas[0]) & set(artifacts) if metas[0][k] != artifacts[k])
        if differ:
            lines.append(
                f"warning: {run_dir} used other weights than {run_dirs[0]} for "
                f"{', '.join(differ)}: its numbers may differ for that reason alone"
            )
    return lines


def _parse_param(values: tuple[str, ...]) -> dict[str, Any]:
    import yaml

    params = {}
    for item in values:
        if "=" not in item:
            raise UserError("--param", f"expected KEY=VALUE, got {item!r}", "e.g. --param steps=20")
        key, _, value = item.partition("=")
        try:
            params[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError("--param", f"cannot read the value of {key!r}", "quote it") from None
    return params


def _eps_option(value: str) -> float | str:
    """``--eps 8/255`` stays the fraction (the report's label), ``--eps 0.1`` a number."""
    from robustbench_cl.threat import parse_budget

    number, label = parse_budget(value, "--eps")
    return label if label is not None else number


@cli.command()
@click.argument("name")
@click.option("--model", "model_spec", default="builtin:digits-cnn", show_default=True)
@click.option("--data", "dataset", default="digits", show_default=True)
@click.option("--n", type=int, default=256, show_default=True, help="Number of test samples.")
@click.option("--norm", type=click.Choice(["linf", "l2", "l1"]), default="linf", show_default=True)
@click.option(
    "--eps",
    required=True,
    callback=lambda ctx, param, value: _eps_option(value),
    help="The budget: a number or a fraction, e.g. 8/255.",
)
@click.option("--targeted", is_flag=True)
@click.option("--param", "params", multiple=True, help="Attack parameter KEY=VALUE (repeatable).")
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the run directory here (cells.jsonl, report); default: a temporary one.",
)
@click.option("--json", "as_json", is_flag=True)
def attack(
    name: str,
    model_spec: str,
    dataset: str,
    n: int,
    norm: str,
    eps: float | str,
    targeted: bool,
    params: tuple[str, ...],
    device: str,
    seed: int,
    out: Path | None,
    as_json: bool,
) -> None:
    """Run one attack NAME against one model, e.g. `attack pgd --eps 8/255`.

    A one-cell matrix through the engine: the same targets, seeds, sanity checks and record
    as the cell would get in a config (no cascade: there is one attack).
    """

    from robustbench_cl.attacks import make_attack
    from robustbench_cl.engine import load_run
    from robustbench_cl.tasks.classification.summary import pair_summaries
    from robustbench_cl.threat import ThreatModel

    parsed = _parse_param(params)
    threat = ThreatModel(norm=norm, eps=eps, targeted=targeted)
    chosen = make_attack(name, **parsed)
    reason = chosen.supports(threat, "classification")
    if reason is not None:
        fix = "choose another attack or --norm"
        from robustbench_cl.attacks.jailbreak import JailbreakAttack
        from robustbench_cl.attacks.universal import UniversalAttack

        if isinstance(chosen, UniversalAttack):
            fix = "run it from a config's `retrieval:` section (see `robustbench-cl run vlp`)"
        if isinstance(chosen, JailbreakAttack):
            fix = "run it from a config's `jailbreak:` section (see `robustbench-cl run llm`)"
        raise UserError("attack", reason, fix)
    if n < 1:
        raise UserError("--n", f"must be >= 1, got {n}")
    config = {
        "suite": "attack",
        "seed": seed,
        "data": {"name": dataset, "n": n},
        "models": [{"spec": model_spec}],
        "attacks": [
            {
                "attack": name,
                "params": parsed,
                "threat": {"norm": norm, "eps": eps, "targeted": targeted},
            }
        ],
        "engine": {"examples": 0},
    }
    with _one_run(config, out, device, "rbcl-attack-") as run_dir:
        (pair,) = pair_summaries(load_run(run_dir))
        (record,) = pair.cells
        cell = record.model_dump(mode="json")  # the one cell, as stored
        if record.attack_seconds is not None:  # the seconds attacking, as the report shows
            cell["wall_time"] = record.attack_seconds
    output = {
        "attack": name,
        "settings": cell["attack"]["settings"],
        "model": model_spec,
        "threat": cell["threat"],
        "n": cell["n"],
        "clean_accuracy": cell["clean_accuracy"],
        "robust_accuracy": cell["robust_accuracy"],
        "robust_ci95": cell["robust_ci95"],
        "attacked": cell["attacked"],
        "attack_success_rate": cell["attack_success_rate"],
        "cost": cell["cost"],
        "normalization": pair.normalization,
        # the clean pass's flags (missing classes, a normalisation mismatch) and the cell's
        "flags": pair.flags + cell["flags"],
        "wall_time": cell["wall_time"],
    }
    if as_json:
        stdout.print_json(json.dumps(output))
        return
    table = Table(title=f"{name} on {model_spec}, {threat.describe()}", title_justify="left")
    for column in ("n", "clean %", "robust %", "95% CI", "forward", "backward", "seconds"):
        table.add_column(column, justify="right")
    low, high = output["robust_ci95"]
    flagged = " !" if output["flags"] else ""
    table.add_row(
        str(output["n"]),
        f"{100 * output['clean_accuracy']:.1f}",
        f"{100 * output['robust_accuracy']:.1f}{flagged}",
        f"{100 * low:.1f}-{100 * high:.1f}",
        str(output["cost"]["forward"]),
        str(output["cost"]["backward"]),
        f"{output['wall_time']:.2f}",
    )
    stdout.print(table)
    for item in output["flags"]:
        console.print(f"! {item['code']}: {item['message']}", highlight=False)


@cli.command()
@click.argument("defense_name", metavar="DEFENSE")
@click.option("--data", "dataset", default="digits", show_default=True)
@click.option("--split", default="train", show_default=True)
@click.option("--param", "params", multiple=True, help="Defense parameter KEY=VALUE (repeatable).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Artifact.")
def defend(
    defense_name: str, dataset: str, split: str, params: tuple[str, ...], output: Path
) -> None:
    """Train a preprocessor DEFENSE (rae) on a dataset alone and save it as an artifact."""
    from robustbench_cl.data import load_dataset
    from robustbench_cl.defenses import make_defense
    from robustbench_cl.models.artifacts import load_artifact_config, save_artifact

    defense = make_defense(defense_name, **_parse_param(params))
    if hasattr(defense, "fit_screens"):
        _defend_screens(defense, dataset, output)
        return
    if not hasattr(defense, "fit"):
        raise UserError(
            "DEFENSE",
            f"{defense_name} is not a standalone preprocessor",
            "use `defend rae`; training defenses are built by `run` from a config",
        )
    data = load_dataset(dataset, split=split)
    preprocessor = defense.fit(data)
    config = load_artifact_config(defense.cache_path("", data))
    out = output.with_suffix("") if output.suffix in (".json", ".safetensors") else output
    save_artifact(out, preprocessor, config)
    console.print(
        f"{defense_name} trained on {dataset} ({split}, n={len(data)}): {out}.safetensors"
    )


def _defend_screens(defense: Any, dataset: str, output: Path) -> None:
    """Train a screenshot protector (dualtap) on the training split of screen data."""
    from robustbench_cl.data.privscreen import load_screens
    from robustbench_cl.defenses.dualtap import screens_key
    from robustbench_cl.models.artifacts import save_artifact

    if dataset == "digits":  # the command's default is for image classifiers
        dataset = "privscreen-mini"
    from robustbench_cl.privacy.routers import easyocr_locator

    data = load_screens(dataset, easyocr_locator())
    train, _ = data.split()
    from robustbench_cl.cli.progress import RichProgress

    with RichProgress(console) as progress:
        progress.cell_started(f"training {defense.name} ({defense.steps} steps)", 1)
        protector = defense.fit_screens(train, screens_key(data.name, train), step=progress.step)
    out = output.with_suffix("") if output.suffix in (".json", ".safetensors") else output
    info = dict(protector.training_info, data=data.name)
    save_artifact(
        out, protector, {"defense": defense.name, "settings": defense.settings(), "training": info}
    )
    console.print(
        f"{defense.name} trained on {data.name} ({len(train)} training screens, "
        f"eps {defense.eps * 255:g}/255): {out}.safetensors\n"
        f"protect screenshots with: robustbench-cl protect --protector {out} IMAGE... -o DIR"
    )


@cli.command()
@click.option(
    "--protector",
    "protector_path",
    type=click.Path(path_type=Path),
    required=True,
    help="A `defend dualtap` artifact.",
)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Folder.")
@click.option(
    "--keep",
    multiple=True,
    help="Text the agent needs (a button label, repeatable); all other text is private.",
)
def protect(
    protector_path: Path, images: tuple[Path, ...], output: Path, keep: tuple[str, ...]
) -> None:
    """Protect your own screenshots with a trained DualTAP protector.

    EasyOCR finds the text on each screenshot; lines that match a --keep keyword are the task,
    everything else is treated as private. The protected PNGs go to OUTPUT.
    """
    from robustbench_cl.defenses.screenshot import protect_files

    rows = protect_files(protector_path, list(images), output, list(keep))
    table = Table(title=f"protected screenshots in {output}", title_justify="left")
    for name in ("image", "private lines", "kept lines", "|delta|inf (/255)", "output"):
        table.add_column(name, justify="left")
    for row in rows:
        table.add_row(
            row["image"], str(row["private"]), str(row["kept"]), f"{row['linf']:.1f}", row["output"]
        )
    stdout.print(table)


@cli.command()
@click.option("--preprocessor", type=click.Path(path_type=Path), required=True)
@click.option("--model", "model_spec", required=True, help="The model to protect (any spec).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def wrap(preprocessor: Path, model_spec: str, output: Path) -> None:
    """Put a preprocessor artifact in front of a model; load it back as `wrapped:OUT`."""
    from robustbench_cl.models import check_spec
    from robustbench_cl.models.autoencoder import write_wrapped

    check_spec(model_spec)
    out = write_wrapped(preprocessor, model_spec, output)
    console.print(f"wrapped model: {out}.json (spec: wrapped:{out})")


@cli.command()
@click.option("--model", "model_spec", default="builtin:digits-cnn-bn", show_default=True)
@click.option(
    "--defense", "defense_name", default="none", show_default=True, help="e.g. dat, pgd-at."
)
@click.option("--param", "params", multiple=True, help="Defense parameter KEY=VALUE (repeatable).")
@click.option("--class", "target_class", type=int, required=True, help="The class to draw.")
@click.option("--n", type=int, default=16, show_default=True, help="Number of samples.")
@click.option("--steps", type=int, default=40, show_default=True)
@click.option("--step-size", type=float, default=0.2, show_default=True)
@click.option("--data", "dataset", default="digits", show_default=True, help="Seeds and FID.")
@click.option(
    "--judge", default="builtin:digits-judge", show_default=True, help="Scores the samples."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Keep the run directory here (cells.jsonl, samples); default: a temporary one.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="PNG grid.")
def generate(
    model_spec: str,
    defense_name: str,
    params: tuple[str, ...],
    target_class: int,
    n: int,
    steps: int,
    step_size: float,
    dataset: str,
    judge: str,
    seed: int,
    device: str,
    out: Path | None,
    output: Path,
) -> None:
    """Draw class-conditional samples from a classifier (a DAT model, or any other).

    A one-pair generation section through the engine: the same seeds, sampler, judge and
    record as the `generation:` section of a config would give, for one class.
    """

    import torch
    from safetensors.torch import load_file

    from robustbench_cl.engine import load_run
    from robustbench_cl.tasks.generation import sample_grid, save_png

    if n < 2:
        raise UserError("--n", f"must be >= 2 (the FID needs two samples), got {n}", "e.g. --n 16")
    if steps < 0 or step_size <= 0:
        raise UserError("--steps/--step-size", "must be >= 0 and > 0", "e.g. --steps 40")
    config = {
        "suite": "generate",
        "seed": seed,
        "data": {"name": dataset},
        "models": [{"spec": model_spec}],
        "defenses": [{"defense": defense_name, "params": _parse_param(params)}],
        "generation": {
            "n_per_class": n,
            "steps": steps,
            "step_size": step_size,
            "judge": judge,
            "classes": [target_class],
        },
        "engine": {"examples": 0},
    }
    with _one_run(config, out, device, "rbcl-generate-", GENERATE_FLAGS) as run_dir:
        (record,) = load_run(run_dir).of("generation")
        samples = load_file(inside(run_dir, record.samples))["samples"]
    columns = min(n, 8)
    rows = -(-n // columns)
    padded = torch.cat([samples, torch.ones(rows * columns - n, *samples.shape[1:])])
    save_png(sample_grid(padded, columns, rows, columns=columns), output)
    console.print(
        f"{n} samples of class {target_class} from {model_spec} + {defense_name} "
        f"({steps} steps of {step_size}): the judge ({judge}) labels "
        f"{100 * record.intended_class_accuracy:.0f}% as the class; mini-FID "
        f"{record.mini_fid:.2f} (training data: {record.fid_train_vs_eval:.2f})"
    )
    console.print(f"grid: {output}")


@contextlib.contextmanager
def _one_run(
    config: dict, out: Path | None, device: str, prefix: str, flags: dict[str, str] | None = None
) -> Iterator[Path]:
    """Run a command's one-section config through the engine; yield its run directory (``out``,
    resumed, or a temporary one). Errors in the config name the flags it came from."""
    import tempfile

    from robustbench_cl.cli.progress import RichProgress
    from robustbench_cl.engine import run as run_matrix

    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        run_dir = out or Path(scratch) / "run"
        # bars on a terminal; silent in a pipe, where stdout is the result (one unit: no ETA)
        drawn = RichProgress(console) if console.is_terminal else contextlib.nullcontext(None)
        with drawn as progress:
            try:
                run_matrix(
                    config,
                    out=run_dir,
                    profile=None,
                    device=device,
                    resume=out is not None,
                    progress=progress,
                    command=shlex.join(["robustbench-cl", *sys.argv[1:]]),
                )
            except UserError as error:  # name the flag, not the config field it became
                raise _as_flag(error, flags or {}) from None
        yield run_dir


#: config fields of `generate`'s one-pair config -> the flags they came from
GENERATE_FLAGS = {
    "generation.classes": "--class",
    "generation.judge": "--judge",
    "generation.n_per_class": "--n",
    "generation.steps": "--steps",
    "generation.step_size": "--step-size",
    "models[0]": "--model",
    "defenses[0].params": "--param",
    "defenses[0]": "--defense",
    "data": "--data",
}


def _as_flag(error: UserError, flags: dict[str, str]) -> UserError:
    """The same error, naming the command-line flag whose value made the config field."""
    for field, flag in flags.items():
        if error.field == field or error.field.startswith((f"{field}.", f"{field}[")):
            return UserError(flag, error.problem, error.fix)
    return error


@cli.group()
def artifacts() -> None:
    """The trained artifacts shipped with the package (copied into the cache on first use)."""


@artifacts.command("list")
def artifacts_list() -> None:
    """Each shipped artifact, its content hash, and whether the cache holds the same bytes."""
    from robustbench_cl.shipped import digest, shipped_entries
    from robustbench_cl.utils import cache_home

    home = cache_home()
    table = Table(title="shipped artifacts", title_justify="left")
    for column in ("artifact", "sha256", "in the cache"):
        table.add_column(column)
    for entry in shipped_entries():
        cached = home / entry.parent.name / entry.name
        state = (
            "missing"
            if not cached.exists()
            else "same"
            if digest(cached) == digest(entry)
            else "differs"
        )
        table.add_row(f"{entry.parent.name}/{entry.name}", digest(entry), state)
    stdout.print(table)


@artifacts.command("verify")
@click.option("--work", type=click.Path(path_type=Path), default=None, help="Scratch folder.")
def artifacts_verify(work: Path | None) -> None:
    """Retrain every shipped artifact from its recipe (the quickstart, cold) and compare.

    Takes as long as a cold quickstart without them (about half an hour on 2 loaded cores).
    Trains with the thread count the shipped set was made with (2) unless --threads is given.
    Exit code 1 when an artifact is not reproduced bit for bit: expected on another CPU, where
    training can round differently; the run's numbers then move within their intervals.
    """
    import os
    import tempfile

    from robustbench_cl.engine.threads import resolve_threads
    from robustbench_cl.shipped import NO_SEEDS_ENV, SEEDS_THREADS, digest, shipped_entries

    threads = resolve_threads() if os.environ.get("ROBUSTBENCH_CL_THREADS") else SEEDS_THREADS

    work = Path(work or tempfile.mkdtemp(prefix="rbcl-verify-"))
    os.environ["ROBUSTBENCH_CL_HOME"] = str(work / "cache")
    os.environ[NO_SEEDS_ENV] = "1"
    from robustbench_cl.cli.progress import LineProgress, RichProgress
    from robustbench_cl.engine import run as run_matrix

    drawn = RichProgress(console) if console.is_terminal else LineProgress(console)
    with drawn as progress:
        run_matrix("quickstart", out=work / "run", progress=progress, resume=False, threads=threads)
    table = Table(title="retrained vs shipped", title_justify="left")
    for column in ("artifact", "shipped", "retrained", "verdict"):
        table.add_column(column)
    mismatches = 0
    for entry in shipped_entries():
        fresh = work / "cache" / entry.parent.name / entry.name
        retrained = digest(fresh) if fresh.exists() else "not produced"
        same = retrained == digest(entry)
        mismatches += not same
        verdict = "identical" if same else "differs"
        table.add_row(f"{entry.parent.name}/{entry.name}", digest(entry), retrained, verdict)
    stdout.print(table)
    if mismatches:
        console.print(
            f"{mismatches} shipped artifacts were not reproduced bit for bit (on another CPU, "
            "training can round differently); the retrained cache is in "
            f"{work / 'cache'}; `artifacts export --from` it to ship those instead"
        )
        sys.exit(1)


@artifacts.command("export")
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="A cache folder (ROBUSTBENCH_CL_HOME) to ship the artifacts of.",
)
def artifacts_export(source: Path) -> None:
    """Replace the shipped artifacts with those of a cache (for maintainers)."""
    from robustbench_cl.shipped import SEEDS, export

    written = export(source)
    console.print(f"{len(written)} artifacts written to {SEEDS}")


def main() -> None:
    cli(prog_name="robustbench-cl")


if __name__ == "__main__":
    main()
