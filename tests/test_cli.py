"""The command line: golden outputs, and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robustbench_cl.cli.main import cli
from robustbench_cl.data.base import TensorData
from robustbench_cl.registry import DATASETS

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def invoke(*args: str):
    return CliRunner().invoke(
        cli, list(args), env={"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"}
    )


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), (
        f"output differs from {path}; rerun with UPDATE_GOLDEN=1 if intended"
    )


def test_show_prints_the_matrix_golden():
    result = invoke("show", str(GOLDEN / "run"))
    assert result.exit_code == 0, result.output
    check_golden("show.txt", result.stdout)
    assert "worst case" in result.stdout and "clean" in result.stdout


def test_show_json_golden():
    result = invoke("show", str(GOLDEN / "run"), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    data.pop("run_dir")  # an absolute path: differs between checkouts
    check_golden("show.json", json.dumps(data, indent=1, sort_keys=True) + "\n")
    assert {row["defense"] for row in data["rows"]} == {"<b>undefended</b>", "at"}


def test_list_attacks_with_wildcard():
    result = invoke("list", "attacks", "*gd*")
    assert result.exit_code == 0
    assert "pgd" in result.stdout and "fgsm" not in result.stdout
    for kind in ("defenses", "models", "suites", "datasets"):
        assert invoke("list", kind).exit_code == 0
    assert "quickstart" in invoke("list", "suites").stdout


def test_one_off_attack_json():
    result = invoke("attack", "pgd", "--eps", "0.1", "--n", "32", "--param", "steps=5", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["settings"]["steps"] == 5
    assert 0 <= data["robust_accuracy"] <= data["clean_accuracy"] <= 1
    # the engine attacks the clean-correct samples only
    assert data["attacked"] == round(32 * data["clean_accuracy"])
    assert data["cost"]["backward"] == 5 * data["attacked"]


def test_a_one_off_targeted_attack_is_the_engine_cell_of_the_same_config(tmp_path):
    import yaml

    args = ("attack", "pgd", "--eps", "0.1", "--n", "40", "--targeted", "--param", "steps=4")
    result = invoke(*args, "--json", "--out", str(tmp_path / "one-off"))
    assert result.exit_code == 0, result.output
    one_off = json.loads(result.stdout)
    config = {
        "suite": "attack",
        "seed": 0,
        "data": {"name": "digits", "n": 40},
        "models": [{"spec": "builtin:digits-cnn"}],
        "attacks": [
            {
                "attack": "pgd",
                "params": {"steps": 4},
                "threat": {"norm": "linf", "eps": 0.1, "targeted": True},
            }
        ],
        "engine": {"examples": 0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert invoke("run", str(path), "--out", str(tmp_path / "run"), "--json").exit_code == 0

    def outcomes(run_dir):
        lines = (run_dir / "cells.jsonl").read_text().splitlines()
        return [json.loads(line)["outcomes"] for line in lines if '"type": "cell"' in line]

    # random targets drawn by the engine (not y + 1), identical outcomes per sample
    assert outcomes(tmp_path / "one-off") == outcomes(tmp_path / "run")
    assert one_off["threat"]["targeted"] is True


def test_report_command_writes_html(tmp_path):
    result = invoke("report", str(GOLDEN / "run"), "-o", str(tmp_path / "r.html"))
    assert result.exit_code == 0
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")


@pytest.fixture
def nan_dataset():
    name = "nan-digits"
    if name not in DATASETS:

        @DATASETS.register(name)
        def _nan(split: str = "test") -> TensorData:
            x = torch.rand(8, 1, 16, 16)
            x[0, 0, 0, 0] = float("nan")
            return TensorData(name, split, x, torch.zeros(8, dtype=torch.long), 10)

    return name


def _bad_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


BASE = "suite: t\nmodels: [{spec: 'builtin:digits-cnn'}]\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["attack", "pgdd", "--eps", "0.1"], "did you mean 'pgd'"),
        (
            ["attack", "pgd", "--eps", "0.1", "--model", "builtin:digits-cnnn"],
            "unknown model 'digits-cnnn'",
        ),
        (["run", "quickstrat"], "unknown suite 'quickstrat'"),
        (["attack", "pgd", "--eps", "-0.1"], "eps: must be a finite number >= 0"),
        (["attack", "pgd", "--eps", "1.5"], "larger than the bounds allow"),
        (
            ["attack", "pgd", "--eps", "0.1", "--model", "python:tests.conftest:tiny_factory"],
            "does not fit the model",
        ),
        (["attack", "pgd", "--eps", "0.1", "--data", "nan-digits"], "NaN or Inf"),
        (["run", "BROKEN_YAML"], "broken YAML at line"),
        (["run", "UNKNOWN_KEY"], "attacks[0].threat.epsilon: unknown config key"),
    ],
)
def test_bad_input_gets_one_line_and_exit_2(args, message, tmp_path, nan_dataset):
    if args[-1] == "BROKEN_YAML":
        args = ["run", _bad_config(tmp_path, BASE + "attacks: [{attack: pgd, threat: {eps: 0.1}\n")]
    if args[-1] == "UNKNOWN_KEY":
        args = [
            "run",
            _bad_config(tmp_path, BASE + "attacks: [{attack: pgd, threat: {epsilon: 0.1}}]\n"),
            "--out",
            str(tmp_path / "out"),
        ]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.output


def test_debug_shows_the_traceback():
    from robustbench_cl.errors import UserError

    result = invoke("--debug", "attack", "pgdd", "--eps", "0.1")
    assert isinstance(result.exception, UserError)  # re-raised, so the traceback is shown


# ---------------------------------------------------------------------- progress in a pipe
def test_line_progress_prints_units_eta_and_a_heartbeat_without_a_tty():
    import io

    from rich.console import Console

    from robustbench_cl.cli.progress import LineProgress

    buffer = io.StringIO()
    now = [0.0]
    progress = LineProgress(Console(file=buffer, width=60), heartbeat=30, clock=lambda: now[0])
    progress.run_started(n_cells=3, n_todo=2)
    progress.cell_done({"id": "a"}, skipped=True)
    progress.message("training DualTAP 128/255 (100 steps)")
    now[0] = 20.0
    progress.beat_if_quiet()  # quiet for 20 s only: no heartbeat yet
    progress.step(40, 100)
    now[0] = 31.0
    progress.beat_if_quiet()
    progress.cell_started("screens | DualTAP", 1)
    progress.message("locating boxes")  # a message inside a cell keeps the cell's label
    now[0] = 40.0
    progress.cell_done({"id": "b"}, skipped=False)
    progress.cell_started("screens | noise", 1)
    now[0] = 44.0
    progress.cell_done({"id": "c"}, skipped=False)
    lines = buffer.getvalue().splitlines()
    assert lines[0].endswith("resuming: 1 of 3 cells already done")
    assert any("training DualTAP" in line for line in lines)
    assert [line for line in lines if "still running" in line] == [
        "[   31s] still running: training DualTAP 128/255 (100 steps) (31s, step 40/100)"
    ]
    # the remaining cell is estimated from this one's own 9 s, not from the 40 s elapsed
    assert "[   40s] cell 2/3 done in 9s: screens | DualTAP, ETA ~9s" in lines
    assert lines[-1] == "[   44s] cell 3/3 done in 4s: screens | noise"
    assert all(len(line) < 100 for line in lines)


def test_etas_come_from_the_cells_own_pace_and_its_kinds_measured_time():
    """An AutoAttack cell is not estimated from earlier cheap cells: inside it, from its own
    batches or its components' share of the budget; for the run, from finished cells of the
    same kind, and the cells of kinds not timed yet are counted, not guessed."""
    import io

    from rich.console import Console

    from robustbench_cl.cli.progress import LineProgress

    buffer = io.StringIO()
    now = [0.0]
    progress = LineProgress(Console(file=buffer, width=120), heartbeat=30, clock=lambda: now[0])
    kinds = ["clean", "fgsm", "autoattack", "clean", "fgsm", "autoattack"]
    progress.run_started(n_cells=6, n_todo=6, kinds=kinds)
    progress.cell_started("a | clean", 1, "clean")
    now[0] = 1.0
    progress.cell_done({"id": "c1"}, skipped=False, kind="clean")
    progress.cell_started("a | fgsm", 1, "fgsm")
    now[0] = 3.0
    progress.cell_done({"id": "f1"}, skipped=False, kind="fgsm")
    progress.cell_started("a | autoattack", 1, "autoattack")
    now[0] = 63.0
    progress.step(1, 4, 0.1)  # apgd-ce done: a tenth of the budget in 60 s
    now[0] = 100.0
    progress.beat_if_quiet()
    now[0] = 603.0
    progress.cell_done({"id": "a1"}, skipped=False, kind="autoattack")
    progress.cell_started("b | clean", 4, "clean")
    now[0] = 604.0
    progress.message("loading the defense")  # setup inside the cell: not the batches' pace
    now[0] = 606.0
    progress.batch_done()
    lines = buffer.getvalue().splitlines()
    assert "[    1s] cell 1/6 done in 1s: a | clean, ETA ~1s + 4 cells not timed yet" in lines
    assert "[    3s] cell 2/6 done in 2s: a | fgsm, ETA ~3s + 2 cells not timed yet" in lines
    # a tenth of its budget took 60 s: 600 s for the cell, 97 s of which have passed
    (beat,) = [line for line in lines if "still running" in line]
    assert beat.endswith("(1m37s, step 1/4, cell ETA ~8m23s)")
    assert "[10m03s] cell 3/6 done in 10m00s: a | autoattack, ETA ~10m03s" in lines
    assert lines[-1] == "[10m06s] first of 4 batches in 2s: this cell ETA ~6s"


def test_the_bars_show_the_same_etas_on_a_terminal():
    import io

    from rich.console import Console

    from robustbench_cl.cli.progress import RichProgress

    now = [0.0]
    progress = RichProgress(Console(file=io.StringIO()), clock=lambda: now[0])
    progress.run_started(n_cells=3, n_todo=3, kinds=["clean", "pgd", "pgd"])
    progress.cell_started("a | clean", 1, "clean")
    now[0] = 2.0
    progress.cell_done({"id": "c"}, skipped=False, kind="clean")
    progress.cell_started("a | pgd", 4, "pgd")
    now[0] = 12.0
    progress.batch_done()
    fields = {task.description.split()[0]: task.fields["eta"] for task in progress.bars.tasks}
    assert fields["batches"] == "cell ETA ~30s"  # 3 more batches of 10 s
    now[0] = 42.0
    progress.cell_done({"id": "p"}, skipped=False, kind="pgd")
    fields = {task.description.split()[0]: task.fields["eta"] for task in progress.bars.tasks}
    assert fields["cells"] == "ETA ~40s"


def test_line_progress_names_units_that_ran_in_workers():
    """A remote executor calls no cell_started: the line names the unit and its own time."""
    import io

    from rich.console import Console

    from robustbench_cl.cli.progress import LineProgress

    buffer = io.StringIO()
    now = [0.0]
    progress = LineProgress(Console(file=buffer, width=80), heartbeat=30, clock=lambda: now[0])
    progress.run_started(n_cells=2, n_todo=2)
    progress.message("2 units run in 2 worker processes, as their inputs are ready")
    now[0] = 50.0
    progress.cell_done({"id": "a", "wall_time": 48.2}, skipped=False, label="cnn | AutoAttack")
    now[0] = 81.0
    progress.beat_if_quiet()  # the others still run: the heartbeat says where
    lines = buffer.getvalue().splitlines()
    # workers run units at once: the run's ETA is its elapsed time per finished unit
    assert "[   50s] cell 1/2 done in 48s: cnn | AutoAttack, ETA ~50s" in lines
    assert lines[-1].startswith("[ 1m21s] still running: 2 units run in 2 worker processes")


def test_list_covers_every_registry_and_every_data_source():
    from robustbench_cl import registry
    from robustbench_cl.defenses.protectors import PROTECTORS
    from robustbench_cl.models import SCHEMES
    from robustbench_cl.privacy.membership import MEMBERSHIP_ATTACKS
    from robustbench_cl.privacy.routers import ROUTERS

    expected = {
        "attacks": registry.ATTACKS.names(),
        "defenses": registry.DEFENSES.names(),
        "membership": MEMBERSHIP_ATTACKS.names(),
        "models": [f"builtin:{n}" for n in registry.MODELS.names()]
        + [f"{n}:" for n in SCHEMES.names()],
        "datasets": registry.DATASETS.names()
        + ["shapes", "karpathy:", "behaviors:", "privscreen-mini", "privscreen:", "hf-disk:"],
        "protectors": PROTECTORS.names(),
        "routers": list(ROUTERS),
    }
    for kind, names in expected.items():
        result = CliRunner().invoke(cli, ["list", kind], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        missing = [name for name in names if name not in result.output]
        assert not missing, f"list {kind} misses {missing}"
    for section in ("classification", "retrieval", "jailbreak", "screens"):
        assert section in CliRunner().invoke(cli, ["list", "datasets"]).output
