"""Sanity flags beyond classification: membership, retrieval, jailbreak and screens entries are
flagged from their stored records, counted, documented and shown in the report."""

from __future__ import annotations

import re
from pathlib import Path

from robustbench_cl.engine.results import flag_rows, load_results
from robustbench_cl.tasks.jailbreak.results import jailbreak_flags
from robustbench_cl.tasks.membership.results import membership_flags
from robustbench_cl.tasks.retrieval.results import retrieval_flags
from robustbench_cl.tasks.screens.results import screens_flags

ROOT = Path(__file__).resolve().parent.parent


def _rate(rate, low, high):
    return {"rate": rate, "k": 0, "n": 24, "ci95": [low, high]}


def test_a_membership_auc_significantly_below_chance_is_flagged():
    # the case: LiRA-online on PGD-AT, quick profile
    (flag,) = membership_flags({"auc": 0.428, "auc_ci95": [0.369, 0.481]})
    assert flag["code"] == "auc_below_chance" and "miscalibrated" in flag["message"]
    assert membership_flags({"auc": 0.49, "auc_ci95": [0.43, 0.55]}) == []
    assert membership_flags({"auc": 0.7, "auc_ci95": [0.65, 0.75]}) == []


def test_forced_and_judged_asr_that_disagree_beyond_their_intervals_are_flagged():
    apart = {"forced_asr": _rate(0.9, 0.7, 0.97), "judged_asr": _rate(0.1, 0.03, 0.3)}
    assert [f["code"] for f in jailbreak_flags(apart)] == ["forced_judged_disagree"]
    close = {"forced_asr": _rate(0.3, 0.15, 0.5), "judged_asr": _rate(0.2, 0.08, 0.4)}
    assert jailbreak_flags(close) == []


def test_a_jailbreak_attack_whose_loss_still_falls_at_the_end_is_flagged():
    close = {"forced_asr": _rate(0.3, 0.15, 0.5), "judged_asr": _rate(0.2, 0.08, 0.4)}
    falling = [3.0 - 0.1 * step for step in range(20)]  # 1.3 -> 1.1 over the last fifth
    (flag,) = jailbreak_flags(close, falling)
    assert flag["code"] == "attack_not_converged" and "20 steps" in flag["message"]
    flat = [3.0 - 0.1 * min(step, 10) for step in range(20)]  # converged by step 10
    assert jailbreak_flags(close, flat) == []
    assert jailbreak_flags(close, falling[:5]) == []  # too short to judge


def _retrieval_cell(cell_id, attack, asr, history=None, access="white-box", target="a"):
    return {
        "id": cell_id,
        "source": "a",
        "target": target,
        "access": access,
        "threat_label": "linf 12/255 universal",
        "attack": {"attack": attack},
        "asr": {"tr@1": {"asr": asr}, "ir@1": {"asr": asr}, "tr@5": {"asr": 0.0}},
        "fit": {"history": history or []},
    }


def test_retrieval_flags_a_still_falling_fit_once_and_an_attack_noise_beats():
    cells = [
        _retrieval_cell("noise", "uniform-noise", 0.2),
        _retrieval_cell("weak", "pgd-uap", 0.1, history=[1.0, 0.99]),
        _retrieval_cell("falling", "cpgc", 0.6, history=[-1.0, -1.5]),
        _retrieval_cell(
            "transfer", "cpgc", 0.3, history=[-1.0, -1.5], access="transfer", target="b"
        ),
    ]
    flags = retrieval_flags(cells)
    assert [f["code"] for f in flags["weak"]] == ["noise_beats_attack"]  # converged, but weak
    assert [f["code"] for f in flags["falling"]] == ["uap_not_converged"]
    assert "50%" in flags["falling"][0]["message"]
    assert flags["transfer"] == [] and flags["noise"] == []  # the fit is flagged once
    # an ASR that is undefined (no query correct before the attack) is not compared
    undefined = _retrieval_cell("undefined", "pgd-uap", None)
    assert retrieval_flags([cells[0], undefined])["undefined"] == []


def _screen_row(protector, router, plr, tsr=0.5, eps=0.5):
    return {
        "id": protector,
        "label": protector,
        "protector": protector,
        "router": router,
        "eps": eps,
        "plr": {"rate": plr},
        "tsr": {"rate": tsr},
    }


def test_a_protector_that_leaks_more_than_noise_of_its_eps_is_flagged_per_router():
    rows = [
        _screen_row("clean", "easyocr", 1.0, eps=None),
        _screen_row("noise", "easyocr", 0.6),
        _screen_row("noise", "tesseract", 0.0, tsr=0.0),
        _screen_row("dualtap", "easyocr", 0.2),
        _screen_row("dualtap", "tesseract", 0.2, tsr=0.9),
    ]
    flags = screens_flags(rows)
    assert [len(f) for f in flags] == [0, 0, 0, 0, 1]
    assert "20%" in flags[4][0]["message"] and "task success 90% vs 0%" in flags[4][0]["message"]


def test_committed_runs_carry_task_flags_in_results_and_the_report(tmp_path):
    from robustbench_cl.report.html import render_report

    results = load_results(ROOT / "reports" / "quickstart")
    rows = flag_rows(results)
    assert {row["task"] for row in rows} >= {"retrieval", "screens"}
    html = render_report(ROOT / "reports" / "quickstart")
    section = html[html.index('<section id="sanity">') :]
    section = section[: section.index("</section>")]
    for row in rows:
        assert row["code"] in section
    assert len(re.findall(r'<span class="badge">', section)) == results["flag_count"]


def test_every_flag_code_is_documented():
    doc = (ROOT / "docs" / "sanity-checks.md").read_text()
    tasks = ROOT / "robustbench_cl" / "tasks"
    source = "\n".join(path.read_text() for path in sorted(tasks.rglob("*.py")))
    codes = set(re.findall(r'flag\(\s*"([a-z_]+)"', source))
    codes |= set(re.findall(r'"code": "([a-z_]+)"', source))
    assert {"auc_below_chance", "uap_not_converged", "forced_judged_disagree"} <= codes
    missing = sorted(code for code in codes if f"`{code}`" not in doc)
    assert not missing, f"docs/sanity-checks.md does not explain {missing}"
