"""The HTML report: self-contained, and every string from a config is escaped."""

from __future__ import annotations

import re
from pathlib import Path

from robustbench_cl.report.html import render_report

GOLDEN_RUN = Path(__file__).parent / "golden" / "run"


def test_report_escapes_config_strings_and_is_self_contained():
    html = render_report(GOLDEN_RUN)
    assert "&lt;b&gt;undefended&lt;/b&gt;" in html
    assert "<b>undefended" not in html
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)
    assert "<script src" not in html
    assert "Worst case over attacks" in html and "linf 0.2" in html
