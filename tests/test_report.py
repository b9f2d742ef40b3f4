"""Reports: results.json against its schema, the HTML sections, escaping, no external URL,
PII masking, compare, the size budget, and a real headless-Chromium render."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from robustbench_cl.cli.main import cli
from robustbench_cl.engine.results import (
    SCHEMA_VERSION,
    load_results,
    results_schema,
    validate_results,
)
from robustbench_cl.report.compare import compare_results
from robustbench_cl.report.html import render_report, render_results
from robustbench_cl.report.media import mask_pii, truncate

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
GOLDEN_RUN = GOLDEN / "run"
QUICKSTART = ROOT / "reports" / "quickstart"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
PAYLOAD = "<script>document.documentElement.setAttribute('data-pwned','1')</script>"
IMG_PAYLOAD = "<img src=x onerror=\"document.documentElement.setAttribute('data-pwned','2')\">"


class _Outline(HTMLParser):
    """Section ids, every URL-bearing attribute, and the text of script elements."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        attrs = dict(attrs)
        if tag == "section" and "id" in attrs:
            self.sections.append(attrs["id"])
        for name in ("src", "href", "xlink:href", "action"):
            if attrs.get(name):
                self.urls.append(attrs[name])
        self._in_script = tag == "script"

    def handle_endtag(self, tag):  # noqa: ANN001
        self._in_script = False

    def handle_data(self, data):  # noqa: ANN001
        if self._in_script:
            self.scripts.append(data)


def outline(html: str) -> _Outline:
    parser = _Outline()
    parser.feed(html)
    return parser


def external_urls(html: str) -> list[str]:
    parsed = outline(html)
    found = [u for u in parsed.urls if re.match(r"\s*(https?:)?//", u)]
    found += re.findall(r"url\(\s*['\"]?\s*(?:https?:)?//[^)]*\)", html)
    return found


def hostile_results() -> dict:
    """The golden run with every display name replaced by markup that would run if unescaped."""
    results = load_results(GOLDEN_RUN)
    for pair in results["pairs"]:
        pair["label"] = pair["model"] = f"{PAYLOAD} / {IMG_PAYLOAD}"
    for cell in results["cells"]:
        cell["pair"] = PAYLOAD
        cell["attack"]["label"] = IMG_PAYLOAD
        cell["column"] = f"{IMG_PAYLOAD} linf"
        for flag in cell["flags"]:
            flag["message"] = PAYLOAD
    results["run"]["command"] = PAYLOAD
    results["run"]["suite"] = PAYLOAD
    return results


def privacy_results() -> dict:
    """The committed quickstart's results with hostile strings in records that reach the
    privacy, LLM and sanity sections: a membership flag, a jailbreak prompt and completion."""
    results = load_results(QUICKSTART)
    results["membership"][0]["flags"] = [{"code": "auc_below_chance", "message": PAYLOAD}]
    results["flag_count"] += 1
    example = results["jailbreak"]["cells"][0]["examples"][0]
    example["prompt"] = "Tell me " + "x" * 1000
    example["completion"] = PAYLOAD
    return results


# ---------------------------------------------------------------------- results.json
def test_results_json_follows_the_schema_and_the_golden_file():
    results = load_results(GOLDEN_RUN)
    validate_results(results)
    results["run"].pop("command")  # holds nothing machine-specific, but keep the golden stable
    text = json.dumps(results, indent=1, sort_keys=True) + "\n"
    path = GOLDEN / "results.json"
    if UPDATE or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), "results.json changed; UPDATE_GOLDEN=1 if intended"


def test_results_json_numbers_are_numbers_and_cells_carry_their_threat():
    results = load_results(QUICKSTART)
    validate_results(results)
    assert results["schema_version"] == SCHEMA_VERSION
    for cell in results["cells"]:
        assert isinstance(cell["robust_accuracy"], float)
        assert all(isinstance(v, float) for v in cell["robust_ci95"])
        assert {"norm", "eps", "bounds", "space"} <= set(cell["threat"])
        assert set(cell["cost"]) == {"forward", "backward", "queries"}
    from robustbench_cl.engine.results import flag_rows

    cell_flags = sum(len(c["flags"]) for c in results["cells"])
    pair_flags = sum(len(p["flags"]) for p in results["pairs"])
    assert results["flag_count"] == len(flag_rows(results)) >= cell_flags + pair_flags


def test_the_schema_rejects_a_malformed_result():
    import jsonschema

    results = load_results(GOLDEN_RUN)
    broken = copy.deepcopy(results)
    broken["cells"][0]["robust_accuracy"] = "72%"
    with pytest.raises(jsonschema.ValidationError):
        validate_results(broken)
    broken = copy.deepcopy(results)
    broken["cells"][0]["threat"]["norm"] = "linfinity"
    with pytest.raises(jsonschema.ValidationError):
        validate_results(broken)


def test_the_schema_doc_describes_every_field():
    doc = (ROOT / "docs" / "results-schema.md").read_text()
    schema = results_schema()
    assert f"`{SCHEMA_VERSION}`" in doc
    outside = {"calibration"}  # a task a test registers documents itself
    names = set(schema["properties"]) - outside
    for definition in (
        "CellEntry",
        "PairEntry",
        "WorstCase",
        "MembershipEntry",
        "GenerationEntry",
        "Run",
    ):
        names |= set(schema["$defs"][definition]["properties"])
    missing = sorted(name for name in names if f"`{name}`" not in doc)
    assert not missing, f"docs/results-schema.md does not describe {missing}"


# ---------------------------------------------------------------------- HTML
def test_quickstart_report_has_every_section_with_data():
    html = render_report(QUICKSTART)
    sections = outline(html).sections
    for section in (
        "threats",
        "matrix",
        "worst",
        "curves",
        "cost",
        "examples",
        "privacy",
        "generation",
        "retrieval",
        "jailbreak",
        "llm",
        "reproduce",
    ):
        assert section in sections, section
    assert ("sanity" in sections) == (load_results(QUICKSTART)["flag_count"] > 0)
    assert "<svg" in html and "data:image/png;base64," in html
    assert re.search(r"robustbench-cl( --\S+ \S+)* run quickstart", html)  # reproduce: the command
    assert load_results(QUICKSTART)["run"]["config_hash"] in html
    assert "privacy" in sections and "Membership inference" in html  # the LOSS/LiRA slice
    # the jailbreak slice: prompts and completions, escaped (the apostrophe is an entity)
    assert "Sorry, I can&#39;t do that." in html and "Sure, here is how to" in html


def test_sections_without_data_are_left_out():
    sections = outline(render_report(GOLDEN_RUN)).sections
    assert "examples" not in sections  # the golden run kept no example images
    assert load_results(GOLDEN_RUN)["flag_count"] == 0 and "sanity" not in sections
    assert "matrix" in sections and "curves" in sections


def test_display_names_and_hostile_strings_are_escaped():
    html = render_results(hostile_results())
    assert "&lt;script&gt;document.documentElement" in html
    assert PAYLOAD not in html and "<img src=x" not in html
    scripts = outline(html).scripts
    assert scripts and not any("data-pwned" in script for script in scripts)


def test_report_has_no_external_url():
    for html in (render_report(QUICKSTART), render_results(privacy_results())):
        assert external_urls(html) == []
        assert "<script src" not in html and "<link" not in html


def test_privacy_and_llm_sections_mask_and_truncate():
    results = privacy_results()
    validate_results(results)
    html = render_results(results)
    assert "Membership inference" in html and "TPR @ 1% FPR" in html
    sections = outline(html).sections
    assert "privacy" in sections and "llm" in sections
    assert html.count("<svg") >= 2  # the log-log ROCs
    assert "x" * 500 not in html  # truncated
    assert "&lt;script&gt;" in html
    assert PAYLOAD not in html  # a flag message from a record is escaped too
    assert "sanity" in sections
    sanity = html[html.index('<section id="sanity">') :]
    assert "auc_below_chance" in sanity[: sanity.index("</section>")]


def test_mask_pii_keeps_shape_but_not_content():
    assert mask_pii("john.doe@example.com") == "j***.d**@e******.c**"
    assert mask_pii("+1 (555) 123-4567") == "+* (***) ***-****"
    assert truncate("abc", 10) == "abc" and len(truncate("a" * 50, 10)) == 10


def test_quickstart_report_fits_the_size_budget():
    html = render_report(QUICKSTART)
    assert len(html.encode("utf-8")) <= 3 * 1024 * 1024


# ---------------------------------------------------------------------- compare
def test_compare_matches_cells_and_shows_deltas(tmp_path):
    other = tmp_path / "other"
    shutil.copytree(GOLDEN_RUN, other)
    lines = (other / "cells.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["type"] == "clean"
    index = first["correct"].index(1)
    first["correct"][index] = 0
    first["clean_accuracy"] = sum(first["correct"]) / first["n"]
    lines[0] = json.dumps(first)
    (other / "cells.jsonl").write_text("\n".join(lines) + "\n")

    comparison = compare_results([load_results(GOLDEN_RUN), load_results(other)])
    clean = next(r for r in comparison["rows"] if r["measure"] == "clean")
    assert clean["deltas"][0] == 0 and clean["deltas"][1] == pytest.approx(-1 / first["n"])
    assert all(len(row["values"]) == 2 for row in comparison["rows"])

    output = tmp_path / "compare.html"
    result = CliRunner().invoke(
        cli, ["compare", str(GOLDEN_RUN), str(other), "-o", str(output)], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.output
    assert "delta" in result.stdout and f"{-100 / first['n']:+.1f}" in result.stdout
    html = output.read_text()
    assert external_urls(html) == [] and "&lt;b&gt;undefended&lt;/b&gt;" in html


def _with_data(source, target, **data):
    """A copy of a run whose meta.json says it evaluated other data."""
    shutil.copytree(source, target)
    meta = json.loads((target / "meta.json").read_text())
    meta["data"] = {**(meta.get("data") or {}), **data}
    (target / "meta.json").write_text(json.dumps(meta))
    return target


def test_compare_never_subtracts_runs_on_other_data(tmp_path):
    other = _with_data(GOLDEN_RUN, tmp_path / "other", name="imagefolder:/elsewhere")
    comparison = compare_results([load_results(GOLDEN_RUN), load_results(other)])
    rows = [r for r in comparison["rows"] if r["task"] == "classification"]
    assert rows and all(r["values"][1] is not None for r in rows)  # shown side by side
    assert all(r["deltas"][1] is None and not r["same_data"][1] for r in rows)  # not subtracted
    output = tmp_path / "c.html"
    result = CliRunner().invoke(
        cli, ["compare", str(GOLDEN_RUN), str(other), "-o", str(output)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "other data" in result.stdout and "other data" in output.read_text()
    # the same data again: deltas come back
    same = _with_data(GOLDEN_RUN, tmp_path / "same")
    comparison = compare_results([load_results(GOLDEN_RUN), load_results(same)])
    assert all(r["deltas"][1] == 0 for r in comparison["rows"] if r["values"][1] is not None)


def test_compare_lines_up_every_task_and_refuses_to_overwrite(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(QUICKSTART, copy, ignore=shutil.ignore_patterns("artifacts", "report.html"))
    output = tmp_path / "c.html"
    args = ["compare", str(QUICKSTART), str(copy), "-o", str(output), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)
    tasks = {row["task"] for row in comparison["rows"]}
    assert {
        "classification",
        "membership",
        "generation",
        "retrieval",
        "jailbreak",
        "screens",
    } <= tasks
    jailbreak = [r for r in comparison["rows"] if r["task"] == "jailbreak"]
    assert jailbreak and all(r["deltas"][1] == 0 for r in jailbreak)
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 2 and "--force" in again.output and "Traceback" not in again.output
    assert CliRunner().invoke(cli, [*args, "--force"]).exit_code == 0


def test_compare_needs_two_runs():
    result = CliRunner().invoke(cli, ["compare", str(GOLDEN_RUN)])
    assert result.exit_code == 2 and "at least two" in result.output


def test_report_command_writes_results_and_html(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(GOLDEN_RUN, run)
    result = CliRunner().invoke(cli, ["report", str(run), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    validate_results(json.loads((run / "results.json").read_text()))
    assert 'id="matrix"' in (tmp_path / "r.html").read_text()


# ---------------------------------------------------------------------- a real browser
@pytest.fixture(scope="module")
def chromium():
    from robustbench_cl.report.browser import find_chromium

    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "Chromium is not installed and could not be installed: .ci/run and `make test` "
            "install Debian's chromium with apt-get when they run as root"
        )
    return binary


@pytest.mark.xdist_group("chromium")
def test_chromium_renders_the_quickstart_report(chromium, tmp_path):
    from PIL import Image, ImageStat

    from robustbench_cl.report.browser import render, screenshot

    page = tmp_path / "report.html"
    page.write_text(render_report(QUICKSTART), encoding="utf-8")
    rendered = render(page)
    assert rendered.js_ran, "the report's script did not run to its end"
    assert rendered.js_errors == 0 and "Uncaught" not in rendered.console, rendered.console
    assert 'id="matrix"' in rendered.dom

    png = screenshot(page, tmp_path / "report.png", width=1200, height=900)
    image = Image.open(png).convert("L")
    assert image.size == (1200, 900)
    stats = ImageStat.Stat(image)
    assert stats.stddev[0] > 10, "the screenshot is blank"
    assert image.getextrema()[0] < 80, "no dark text or plot on the page"


@pytest.mark.xdist_group("chromium")
def test_chromium_runs_no_script_from_data(chromium, tmp_path):
    from robustbench_cl.report.browser import render

    page = tmp_path / "hostile.html"
    page.write_text(render_results(hostile_results()), encoding="utf-8")
    rendered = render(page)
    assert rendered.js_ran and rendered.js_errors == 0
    assert "data-pwned" not in rendered.dom.split(">", 1)[0]


def test_python_api_writes_the_report(tmp_path):
    import robustbench_cl as rbcl

    run = tmp_path / "run"
    shutil.copytree(GOLDEN_RUN, run)
    path = rbcl.write_report(run)
    assert path == run / "report.html" and 'id="worst"' in path.read_text()
    assert rbcl.load_results(run)["schema_version"] == SCHEMA_VERSION


def test_transfer_points_never_join_the_white_box_curves():
    from robustbench_cl.tasks.classification.report import security_curves

    results = load_results(ROOT / "reports" / "vision")
    titles = [title for title, _ in security_curves(results)]
    assert "linf" in titles and not any("transfer" in t for t in titles)  # one eps: no curve


def test_a_dollar_sign_in_a_name_is_text_not_mathtext():
    results = load_results(GOLDEN_RUN)
    for pair in results["pairs"]:
        pair["label"] = "cnn $\\foo$ / 100$"
    assert "$\\foo$" in render_results(results)


# ---------------------------------------------------------------------- plots
def test_log_axis_ticks_are_numbers_and_dollar_names_stay_text():
    """The log-log ROC's ticks read '0.01', not raw mathtext; a '$' in a label stays literal."""
    from robustbench_cl.tasks.membership.report import membership_roc

    curve = {"label": "cost $5 model", "auc": 0.6, "fpr": [0.0, 0.001, 0.1, 1.0]}
    curve["tpr"] = [0.0, 0.01, 0.3, 1.0]
    svg = membership_roc([curve])
    assert "mathdefault" not in svg and "$" in svg and "cost $5 model" in svg
    assert re.search(r">0\.01<", svg) and re.search(r">1<", svg)


@pytest.mark.parametrize("report", sorted((ROOT / "reports").glob("*/report.html")), ids=str)
def test_no_committed_report_shows_raw_mathtext(report):
    assert "mathdefault" not in report.read_text()


def test_compare_says_when_runs_used_other_weights(tmp_path):
    from robustbench_cl.cli.main import weight_differences

    runs = []
    for index, digest in enumerate(("aaaa", "aaaa", "bbbb")):
        run = tmp_path / f"run{index}"
        shutil.copytree(GOLDEN_RUN, run)
        meta = json.loads((run / "meta.json").read_text())
        meta["artifacts"] = {"models/digits-cnn-1": digest, "defenses/rae-2": "cccc"}
        (run / "meta.json").write_text(json.dumps(meta))
        runs.append(run)
    assert weight_differences(runs[:2]) == []
    (line,) = weight_differences([runs[0], runs[2]])
    assert "used other weights" in line and "models/digits-cnn-1" in line and "rae" not in line
    result = CliRunner().invoke(
        cli, ["compare", str(runs[0]), str(runs[2]), "-o", str(tmp_path / "c.html")]
    )
    assert result.exit_code == 0 and "used other weights" in result.output


def test_a_run_records_the_content_hash_of_each_artifact_it_used(tmp_path):
    from robustbench_cl.engine.runner import run

    config = {
        "suite": "tiny",
        "data": {"name": "digits", "n": 16},
        "models": [{"spec": "builtin:digits-cnn"}],
        "attacks": [{"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
    }
    out = run(config, out=tmp_path / "run", device="cpu")
    artifacts = json.loads((out / "meta.json").read_text())["artifacts"]
    (name,) = [key for key in artifacts if key.startswith("models/digits-cnn-")]
    assert re.fullmatch(r"[0-9a-f]{16}", artifacts[name])
    # a resumed run keeps the artifacts its earlier invocation used (it loads nothing new here)
    meta = json.loads((out / "meta.json").read_text())
    meta["artifacts"]["defenses/earlier-run"] = "0123456789abcdef"
    (out / "meta.json").write_text(json.dumps(meta))
    run(config, out=out, device="cpu")
    resumed = json.loads((out / "meta.json").read_text())["artifacts"]
    assert resumed["defenses/earlier-run"] == "0123456789abcdef" and name in resumed
    # another run in the same process lists only what it used itself
    other = run({**config, "models": [{"spec": "builtin:digits-judge"}]}, out=tmp_path / "other")
    listed = json.loads((other / "meta.json").read_text())["artifacts"]
    assert name not in listed and any(k.startswith("models/digits-judge-") for k in listed)
