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
    import json, os, sys
    from pathlib import Path

    import tempfile

    allowed = [Path(p).resolve() for p in sys.argv[1:3]] + [Path("/dev/null")]
    scratch = Path(tempfile.gettempdir()).resolve()
    outside, temporary = [], []
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def check(path):
        if isinstance(path, int) or path is None:
            return
        path = Path(os.fsdecode(path)).resolve()
        if any(path == root or path.is_relative_to(root) for root in allowed):
            return
        # the temp dir is scratch (Python probes it on first use): allowed if gone at the end
        (temporary if path.is_relative_to(scratch) else outside).append(str(path))

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
                (flags or 0) & WRITE_FLAGS
            )
            if writes:
                check(path)
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree",
                       "tempfile.mkstemp", "tempfile.mkdtemp"):
            check(args[0])
        elif event in ("os.rename", "os.replace", "os.link", "os.symlink", "shutil.copyfile",
                       "shutil.move"):
            check(args[1])

    sys.addaudithook(hook)
    import robustbench_cl as rbcl

    config = json.loads(sys.argv[3])
    os.chdir(sys.argv[1])
    run_dir = rbcl.run(config, profile=None)
    rbcl.write_report(run_dir)
    outside += [p for p in temporary if Path(p).exists()]  # scratch left behind
    print(json.dumps({"run_dir": str(Path(run_dir).resolve()), "outside": outside}))
    """
)


@pytest.mark.xdist_group("cache")
def test_a_real_suite_writes_only_inside_its_run_and_the_cache(tmp_path):
    """Everything a run writes (records, meta, artifacts, a trained defense in the cache, the
    report) is checked by an audit hook on open, mkdir, rename and friends; the suite's name
    tries to climb out of runs/."""
    work = tmp_path / "work"
    work.mkdir()
    cache = Path(os.environ["ROBUSTBENCH_CL_HOME"]).resolve()
    config = {
        "suite": "../../../elsewhere/escaped-suite",
        "seed": 0,
        "data": {"name": "digits", "n": 16},
        "models": [{"spec": "builtin:digits-cnn", "name": "../model"}],
        "defenses": [
            {"defense": "none", "name": "../../none"},
            {"defense": "rae", "name": "/abs/rae", "params": {"epochs": 1, "steps": 1}},
        ],
        "attacks": [{"attack": "fgsm", "name": "../fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
    }
    env = {
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLCONFIGDIR": str(cache / "matplotlib"),
        "ROBUSTBENCH_CL_THREADS": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", AUDITED_RUN, str(work), str(cache), json.dumps(config)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["run_dir"]).is_relative_to(work / "runs")
    assert report["outside"] == [], sorted(set(report["outside"]))
    assert not (tmp_path / "elsewhere").exists()
