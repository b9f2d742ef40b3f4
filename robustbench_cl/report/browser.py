"""Render a report in a real headless Chromium: screenshots, and a check that its JS ran cleanly.

Used by ``robustbench-cl report --screenshot`` and by the browser test. Chromium runs with a
fresh profile, no network features and no sandbox (CI containers run as root).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from robustbench_cl.errors import UserError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    """The Chromium binary: ``$CHROMIUM`` if set, else the first candidate on ``PATH``."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit if shutil.which(explicit) else None
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@dataclass
class Rendered:
    dom: str
    console: str
    js_errors: int
    js_ran: bool


def _run(binary: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="rbcl-chromium-") as profile:
        command = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def render(html: str | Path, timeout: float = 60.0) -> Rendered:
    """Load ``html`` and return the DOM after its scripts ran, plus what they logged."""
    binary = _require()
    url = Path(html).resolve().as_uri()
    done = _run(
        binary,
        ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=2000", "--dump-dom", url],
        timeout,
    )
    root = re.search(r"<html[^>]*>", done.stdout)
    attributes = root.group(0) if root else ""
    errors = re.search(r'data-js-errors="(\d+)"', attributes)
    return Rendered(
        dom=done.stdout,
        console="\n".join(line for line in done.stderr.splitlines() if "CONSOLE" in line),
        js_errors=int(errors.group(1)) if errors else 0,
        js_ran='data-js="ok"' in attributes,
    )


def screenshot(
    html: str | Path, output: str | Path, width: int = 1280, height: int = 2000, timeout=60.0
) -> Path:
    """A PNG of the top ``width`` x ``height`` pixels of ``html``."""
    binary = _require()
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    _run(
        binary,
        [
            f"--window-size={width},{height}",
            f"--screenshot={output}",
            Path(html).resolve().as_uri(),
        ],
        timeout,
    )
    if not output.exists():
        raise RuntimeError(f"chromium wrote no screenshot to {output}")
    return output


def _require() -> str:
    binary = find_chromium()
    if binary is None:
        raise UserError(
            "chromium",
            "no Chromium browser found",
            "install it (Debian: apt-get install chromium) or set CHROMIUM=/path/to/chrome",
        )
    return binary
