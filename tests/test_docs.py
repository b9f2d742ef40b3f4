"""The docs hold: the README and docs/ pages are current, their configs run, their commands parse,
every parameter and config key has a meaning, and the site builds in strict mode."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from robustbench_cl.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
TASK_PAGES = ("classification", "membership", "generation", "retrieval", "jailbreak")
TASK_PAGES += ("screens", "textret", "chat_membership")

#: what each page's config is run with in the tests: fewer samples (the config is unchanged
#: otherwise, so a key the page shows that the code refused would fail here)
SMOKE = {
    "classification": {"data": {"n": 12}},
    "retrieval": {"retrieval": {"data": {"n": 16, "train_n": 24}}},
    "jailbreak": {"jailbreak": {"data": {"n_harmful": 2, "n_benign": 4, "n_borderline": 4}}},
    "screens": {},
    "membership": {},
    "generation": {"generation": {"n_per_class": 2}},
    "textret": {"textret": {"data": {"n_test": 6}}},
    "chat_membership": {"chat_membership": {"n": 20}},
}


#: where each page's run keeps its records, and how many its config makes
EXPECTED = {
    "classification": ("cells", 2 * 3),  # 2 pairs x (PGD at 2 eps + AutoAttack)
    "membership": ("membership", 2),  # 1 pair x (LOSS, LiRA)
    "generation": ("generation", 1),  # 1 pair
    "retrieval": ("retrieval.cells", 2),  # 1 model x (noise, C-PGC), white-box
    "jailbreak": ("jailbreak.cells", 2 * 2),  # 2 defenses x (direct, GCG)
    "screens": ("screens.rows", 2),  # clean, noise
    "textret": ("textret.cells", 1),  # 1 pair x HotFlip at 1 eps
    "chat_membership": ("chat_membership", 2),  # base and C-AdvUL
}


def _count(results: dict, expected: tuple[str, int]) -> int:
    value = results
    for key in expected[0].split("."):
        value = value[key]
    return len(value)


def test_the_readme_is_one_screen_per_question_without_dated_history() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "dated history goes to reports/README.md"
    for link in re.findall(r"\]\(([^)#]+)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_generated_regions_are_current() -> None:
    """The key tables and config blocks come from the code: `make docs` rewrites them."""
    from robustbench_cl.docs import stale_pages

    assert [page.name for page in stale_pages()] == [], "run `make docs`"


def packaged_tasks() -> list[str]:
    """The tasks the package registers (a test may register tests/example_task's too)."""
    from robustbench_cl.engine.task import TASKS

    return [n for n in TASKS.names() if TASKS.get(n).__module__.startswith("robustbench_cl.")]


def test_every_task_has_a_page_with_its_config_and_keys() -> None:
    assert set(TASK_PAGES) == set(packaged_tasks())
    for task in TASK_PAGES:
        text = (DOCS / f"{task}.md").read_text()
        assert f"<!-- BEGIN GENERATED: config configs/{task}.yaml -->" in text
        assert f"<!-- BEGIN GENERATED: keys {task} -->" in text


def test_every_config_key_has_a_meaning() -> None:
    from robustbench_cl.docs import task_key_rows

    missing = [
        f"{task}: {key}"
        for task in ["frame", *packaged_tasks()]
        for key, _, _, meaning in task_key_rows(task)
        if not meaning
    ]
    assert missing == []


def test_the_key_tables_read_the_models() -> None:
    """A key's type, default and meaning are its field's (the `#:` comment above it)."""
    from robustbench_cl.docs import task_key_rows

    rows = {key: row for key, *row in task_key_rows("jailbreak")}
    assert rows["jailbreak.max_new_tokens"] == [
        "int",
        "`24`",
        "greedy decoding; the judge reads this many new tokens",
    ]
    assert rows["jailbreak.models[].spec"][1] == "required"
    frame = {key: row for key, *row in task_key_rows("frame")}
    assert "trust_remote_code" not in frame  # a permission, not part of a written config
    assert frame["engine.precision"][0] == "'fp32' \\| 'bf16'"


def _registries() -> list[tuple[str, object]]:
    from robustbench_cl import registry
    from robustbench_cl.defenses.protectors import PROTECTORS
    from robustbench_cl.privacy.membership import MEMBERSHIP_ATTACKS

    return [
        ("attacks", registry.ATTACKS),
        ("defenses", registry.DEFENSES),
        ("membership", MEMBERSHIP_ATTACKS),
        ("protectors", PROTECTORS),
    ]


def test_every_parameter_of_every_registry_has_a_meaning() -> None:
    from robustbench_cl.registry import describe_parameters

    missing = []
    for kind, registry in _registries():
        for name in registry.names():
            for parameter in describe_parameters(registry.get(name)):
                if not parameter.meaning:
                    missing.append(f"{kind} {name}.{parameter.name}")
    assert missing == []


def test_docstring_args_sections_are_parsed() -> None:
    from robustbench_cl.registry import documented_parameters

    doc = """One line.

    Args:
        steps: iterations
            per restart.
        step_size (float): the step; ``None`` derives it.

    Returns:
        nothing: not a parameter.
    """
    assert documented_parameters(doc) == {
        "steps": "iterations per restart.",
        "step_size": "the step; `None` derives it.",
    }


@pytest.mark.parametrize(
    ("kind", "name", "rows"),
    [
        ("attacks", "pgd", [("step_size", "None", "Madry's"), ("steps", "10", "iterations")]),
        ("defenses", "cadv-ipo", [("beta", "0.25", "IPO's beta"), ("attack_steps", "10", "steps")]),
        ("defenses", "discrete-at", [("eps", "0.3", "not used")]),  # a parent's, overridden
        ("membership", "lira", [("reference_models", "8", "reference models")]),
        ("protectors", "pgd", [("eot_samples", "2", "random crops")]),
        ("protectors", "dualtap", [("attention_from", "'truth'", "attention"), ("seed", "0", "")]),
        ("models", "hf", [("dtype", "see meaning", "bfloat16")]),
        ("models", "timm", [("normalize", "see meaning", "imagenet")]),
        ("models", "builtin:tiny-chat-lm", [("(none)", "", "takes no parameters")]),
    ],
)
def test_list_params_prints_defaults_and_meanings(kind: str, name: str, rows: list) -> None:
    """Each parameter's row holds its default and the start of its meaning."""
    result = CliRunner().invoke(cli, ["list", kind, name, "--params"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for parameter, default, meaning in rows:
        row = next(line for line in lines if line.startswith(f"│ {parameter} "))
        cells = [cell.strip() for cell in row.strip().strip("│").split("│")]
        assert cells[1] == default and meaning in cells[3], row


def test_every_documented_parameter_exists() -> None:
    """An `Args:` entry names a parameter the factory takes (a renamed one fails here)."""
    from robustbench_cl.registry import describe_parameters, documented_parameters

    stale = []
    for kind, registry in _registries():
        for name in registry.names():
            factory = registry.get(name)
            accepted = {p.name for p in describe_parameters(factory)}
            for owner in getattr(factory, "__mro__", [factory]):
                for documented in documented_parameters(owner.__doc__):
                    if documented not in accepted:
                        stale.append(f"{kind} {name}: {owner.__name__} documents {documented}")
    assert stale == []


def test_list_params_refuses_what_has_none() -> None:
    result = CliRunner().invoke(cli, ["list", "suites", "--params"])
    assert result.exit_code == 2
    assert "suites take no parameters" in result.output
    result = CliRunner().invoke(cli, ["list", "attacks", "pgdd", "--params"])
    assert result.exit_code == 2 and "no attacks match 'pgdd'" in result.output


def test_a_misspelt_parameter_names_the_command_that_lists_them() -> None:
    from robustbench_cl.errors import UserError
    from robustbench_cl.registry import ATTACKS

    with pytest.raises(UserError, match=r"robustbench-cl list attacks pgd --params"):
        ATTACKS.create("pgd", stpes=3)


def test_resolved_settings_show_a_derived_step_size() -> None:
    from robustbench_cl.attacks.pgd import PGD
    from robustbench_cl.threat import ThreatModel

    settings = PGD(steps=20).resolved_settings(10, ThreatModel(norm="linf", eps=0.1))
    assert settings["step_size"] == pytest.approx(2.5 * 0.1 / 20)
    assert settings["step_size_rule"] == "2.5 * eps / steps"
    given = PGD(steps=20, step_size=0.01).resolved_settings(10, ThreatModel(norm="linf", eps=0.1))
    assert given["step_size"] == 0.01 and "step_size_rule" not in given


# ------------------------------------------------------------------------- the commands
def documented_commands() -> list[tuple[str, str]]:
    """``(page, command)`` of every `robustbench-cl ...` line in a fenced block or a code span
    of the README and the docs pages."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
            for line in block.splitlines():
                line = line.strip().removeprefix("$ ")
                if line.startswith("robustbench-cl "):
                    found.append((page.name, line))
        prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
        for span in re.findall(r"`(robustbench-cl [^`]+)`", prose):
            found.append((page.name, span))
    return found


def _parse(arguments: list[str]) -> click.Context:
    """Parse a command line with the CLI's own parser, down to the leaf command, without
    running it (a usage error raises)."""
    ctx = cli.make_context("robustbench-cl", list(arguments))
    command: click.Command = cli
    while isinstance(command, click.Group):
        rest = ctx._protected_args + ctx.args  # noqa: SLF001 (what Group.invoke reads)
        if not rest:
            break
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx


def _without_comment(line: str) -> list[str]:
    arguments = shlex.split(line, comments=True)
    assert arguments[0] == "robustbench-cl"
    return arguments[1:]


def test_every_documented_command_parses() -> None:
    commands = documented_commands()
    assert len(commands) > 30
    failures = []
    for page, line in commands:
        arguments = _without_comment(line)
        if len(arguments) == 1 and not arguments[0].startswith("-"):  # names a command
            if cli.get_command(click.Context(cli), arguments[0]) is None:
                failures.append(f"{page}: {line}: no such command")
            continue
        try:
            _parse(arguments)
        except (click.UsageError, click.BadParameter, ValueError) as error:
            failures.append(f"{page}: {line}: {error}")
    assert failures == []


def test_the_parser_check_catches_a_wrong_command() -> None:
    with pytest.raises(click.UsageError):
        _parse(["list", "attakcs"])
    with pytest.raises(click.UsageError):
        _parse(["run", "quickstart", "--profle", "full"])


QUICK = ("list", "artifacts list")


def test_the_quick_documented_commands_run() -> None:
    """The commands that only read (list, artifacts list) run and exit 0."""
    ran = 0
    for _, line in documented_commands():
        arguments = _without_comment(line)
        if any(re.fullmatch(r"[A-Z][A-Z_]*", argument) for argument in arguments):
            continue  # a placeholder (NAME, RUN_DIR): parsed above, not run
        if " ".join(arguments[:2]) in QUICK or arguments[0] in QUICK:
            result = CliRunner().invoke(cli, arguments, env={"COLUMNS": "200"})
            assert result.exit_code == 0, f"{line}: {result.output}"
            ran += 1
    assert ran >= 10


# ---------------------------------------------------------------------------- the configs
def _task_params() -> list:
    # the membership config uses the shipped reference models of digits-cnn: with the other
    # tests that train or read them, so two workers never train the same one
    group = {"membership": pytest.mark.xdist_group("digits-references")}
    return [pytest.param(task, marks=group.get(task, ())) for task in TASK_PAGES]


@pytest.mark.slow
@pytest.mark.parametrize("task", _task_params())
def test_each_task_page_config_runs(task: str, tmp_path: Path) -> None:
    """The page's config, as shown, on fewer samples: a run directory with the task's results
    and a report."""
    import json

    from robustbench_cl.engine.config import _deep_merge
    from robustbench_cl.engine.runner import run
    from robustbench_cl.paths import absolute_paths
    from robustbench_cl.report.html import write_report

    path = DOCS / "configs" / f"{task}.yaml"
    raw = absolute_paths(yaml.safe_load(path.read_text()), path.parent)
    run_dir = run(_deep_merge(raw, SMOKE[task]), out=tmp_path / "run", profile=None)
    results = json.loads((run_dir / "results.json").read_text())
    assert _count(results, EXPECTED[task]) == EXPECTED[task][1]
    report = write_report(run_dir).read_text()
    assert "<html" in report and "Traceback" not in report


# ------------------------------------------------------------------------------- the site
def test_the_docs_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """`mkdocs build --strict`: a broken link, a page missing from the nav or a bad anchor
    fails it."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    assert mkdocs is not None, "mkdocs is in the dev extra: `make test` installs it"
    result = subprocess.run(
        [mkdocs, "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "jailbreak.html").is_file()
