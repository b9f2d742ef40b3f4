"""Every reader of user files, fuzzed (tests/fuzz_readers.py): mutations of a valid file either
load or give one UserError line; no traceback, no hang, no write outside its folder. Each reader
runs in its own subprocess, so a native decoder's crash fails its test instead of the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz_readers import READERS

HARNESS = Path(__file__).with_name("fuzz_readers.py")
EXAMPLES = 200


@pytest.mark.parametrize("reader", READERS)
def test_mutated_files_load_or_give_one_line(reader, tmp_path):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        result = subprocess.run(
            [sys.executable, str(HARNESS), reader, str(EXAMPLES), "0", str(tmp_path / "work")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{reader}: the fuzzing did not finish within 300 s (a hang?)")
    assert result.returncode >= 0, f"{reader}: the reader crashed the process ({result.returncode})"
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    outcome = json.loads(lines[-1])
    assert outcome["failure"] is None, outcome["failure"]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    # both kinds of input were made: the mutations neither all load nor all die at a magic check
    assert outcome["loaded"] > 0 and outcome["refused"] > 0, outcome
