"""A config's names never become paths outside the run directory or the cache: the run folder is
a safe slug of the suite name, every file joined from data is checked (``paths.inside``), and a
real suite run under an audit hook writes nowhere else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robustbench_cl.engine.runner import default_run_dir
from robustbench_cl.errors import UserError
from robustbench_cl.paths import SLUG_LIMIT, inside, slug

ROOT = Path(__file__).resolve().parent.parent
SAFE = set("abcdefghijklmnopqrstuvwxyz0123456789._-")

HOSTILE = [
    "../../../elsewhere/escaped-suite",
    "/etc/cron.d/evil",
    "..",
    ".",
    "",
    "a\x00b",
    "x" * 5000,
    "C:\\Windows\\System32",
    "con",
    "~/.ssh/authorized_keys",
    "name with spaces/and/slashes",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_become_one_safe_component(name, tmp_path):
    component = slug(name)
    assert set(component) <= SAFE and component not in ("", ".", "..")
    assert len(component) <= SLUG_LIMIT + 9 and "/" not in component
    assert inside(tmp_path, component).parent == tmp_path.resolve()


def test_names_that_differ_only_in_case_or_unicode_form_get_their_own_folders():
    composed = unicodedata.normalize("NFC", "Résumé")
    decomposed = unicodedata.normalize("NFD", "Résumé")
    assert composed != decomposed
    names = ["suite", "Suite", "SUITE", composed, decomposed, "suite.", "suite-"]
    slugs = [slug(n) for n in names]
    assert len({s.lower() for s in slugs}) == len(names)  # distinct on a case-folding disk too
    assert slug("quickstart") == "quickstart"  # a safe name is kept as it is


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200))
def test_slug_is_safe_and_keeps_names_apart(first, second):
    for name in (first, second):
        component = slug(name)
        assert set(component) <= SAFE and component not in (".", "..")
        assert 0 < len(component) <= SLUG_LIMIT + 9
    if first != second:
        assert slug(first) != slug(second)


def test_inside_refuses_what_resolves_elsewhere(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "out").symlink_to(tmp_path)
    assert inside(tmp_path / "run", "artifacts/examples/x.safetensors").is_relative_to(tmp_path)
    for parts in (("../x",), ("/etc/passwd",), ("a", "..", "..", "x"), ("out/x",), ("a\x00b",)):
        with pytest.raises(UserError, match="path"):
            inside(tmp_path / "run", *parts)


def test_a_traversing_suite_name_writes_inside_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = default_run_dir("../../../elsewhere/escaped-suite")
    assert run_dir.parent == Path("runs") and (tmp_path / run_dir).resolve().is_relative_to(
        tmp_path / "runs"
    )
    assert run_dir.name.startswith("elsewhere-escaped-suite-")


AUDITED_RUN = textwrap.dedent(
    """
    import json, os, sys, tempfile
    from pathlib import Path

    sys.path.insert(0, sys.argv[3])
    from write_audit import install

    writes = []  # every path written, created, removed or renamed onto, from Python
    install(lambda path: writes.append(str(path)))
    import robustbench_cl as rbcl

    config = json.loads(sys.argv[2])
    os.chdir(sys.argv[1])
    run_dir = rbcl.run(config, profile=None)
    report = rbcl.write_report(run_dir)
    print(json.dumps({
        "run_dir": str(Path(run_dir).resolve()),
        "report": str(report.resolve()),
        "writes": writes,
        "temp": str(Path(tempfile.gettempdir()).resolve()),
    }))
    """
)


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.xdist_group("cache")
def test_a_real_suite_writes_only_inside_its_run_and_the_cache(tmp_path):
    """Everything a run writes (records, meta, artifacts, a defense trained into the cache, the
    report) stays in its run folder or the cache, while its suite, model, defense and attack
    names all try to climb out. Python-level writes are caught by an audit hook (open, mkdir,
    rename and friends) anywhere on the machine; writes by native code (safetensors, torch.save)
    raise no audit event, so every file that appears around the working folder is checked too."""
    work = tmp_path / "a" / "b" / "work"  # runs/../../../x from work/ lands in tmp_path/a
    work.mkdir(parents=True)
    cache = Path(os.environ["ROBUSTBENCH_CL_HOME"]).resolve()
    config = {
        "suite": "../../../elsewhere/escaped-suite",
        "seed": 0,
        "data": {"name": "digits", "n": 16},
        "models": [{"spec": "builtin:digits-cnn", "name": "../model"}],
        "defenses": [
            {"defense": "none", "name": "../../none"},
            # a setting no other test uses: trained here, so the cache write is exercised
            {"defense": "rae", "name": "/abs/rae", "params": {"epochs": 1, "steps": 1, "seed": 8}},
        ],
        "attacks": [{"attack": "fgsm", "name": "../fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
    }
    before = _files(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", AUDITED_RUN, str(work), json.dumps(config), str(ROOT / "tests")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "ROBUSTBENCH_CL_THREADS": "1"},
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    run_dir = Path(outcome["run_dir"])
    assert run_dir.parent == (work / "runs").resolve()
    assert run_dir.name.startswith("elsewhere-escaped-suite-")
    # matplotlib's own font cache is the one library cache left where its user keeps it
    library = [Path.home() / ".cache" / "matplotlib", Path.home() / ".config" / "matplotlib"]
    temp = Path(outcome["temp"])
    elsewhere = []
    for written in map(Path, outcome["writes"]):
        if written.is_relative_to(run_dir) or written.is_relative_to(cache):
            continue
        if written in (run_dir.parent, Path("/dev/null")):  # runs/ itself; the null device
            continue
        if any(written.is_relative_to(root) for root in library):
            continue
        if written.is_relative_to(temp) and not written.exists():
            continue  # scratch (Python probes the temp dir on first use), gone again
        elsewhere.append(str(written))
    assert elsewhere == [], sorted(set(elsewhere))
    new = {p for p in _files(tmp_path) - before if not p.resolve().is_relative_to(run_dir)}
    assert {p for p in new if p.is_file()} == set(), sorted(map(str, new))
    assert not (tmp_path / "a" / "elsewhere").exists()
    assert Path(outcome["report"]).is_relative_to(run_dir)
