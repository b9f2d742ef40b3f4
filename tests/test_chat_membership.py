"""Chat membership inference: the scores as the reference code bases define them, an audit set
that differs in membership only, the controls, and the section end to end."""

from __future__ import annotations

import collections
import csv
import json
import zlib

import pytest
import torch

import robustbench_cl as rbcl
from robustbench_cl.errors import UserError
from robustbench_cl.privacy.llm_membership import (
    builtin_audit_examples,
    chat_scores,
    load_chat_examples,
    min_k_mean,
)


def test_scores_follow_the_reference_definitions():
    logprobs = [torch.tensor([-0.1, -2.0, -0.5, -3.0, -0.2]), torch.tensor([-1.0])]
    responses = ["a b c", "zz"]
    nll = torch.tensor([1.16, 1.0])
    torch.testing.assert_close(chat_scores("loss", logprobs, responses), -nll)
    sizes = torch.tensor([len(zlib.compress(r.encode())) for r in responses], dtype=torch.float)
    torch.testing.assert_close(chat_scores("zlib", logprobs, responses), -nll / sizes)
    # Min-K% at k 0.2: the lowest floor(0.2 * 5) = 1 token; a one-token response keeps its token
    # (floor(0.2 * 1) = 0 would be a NaN mean)
    torch.testing.assert_close(
        chat_scores("min-k", logprobs, responses, k=0.2), torch.tensor([-3.0, -1.0])
    )
    assert min_k_mean(torch.tensor([-0.1, -2.0, -0.5, -3.0, -0.2]), 0.4) == pytest.approx(-2.5)
    reference = [torch.tensor([-2.0]), torch.tensor([-1.0])]
    torch.testing.assert_close(
        chat_scores("reference", logprobs, responses, reference), torch.tensor([2.0 - 1.16, 0.0])
    )


def test_the_builtin_audit_set_differs_in_membership_only():
    from robustbench_cl.data.chat import sft_corpus

    members, outsiders, pseudo = builtin_audit_examples(120, seed=0)
    assert len(members) == len(outsiders) == len(pseudo) == 120
    key = lambda e: (e.instruction, e.response)  # noqa: E731
    corpus = {key(e) for e in sft_corpus(6000, seed=0).examples}
    reference = {key(e) for e in sft_corpus(6000, seed=1).examples}
    assert all(key(e) in corpus and key(e) not in reference for e in members)
    assert not any(key(e) in corpus or key(e) in reference for e in outsiders)
    # the selection control: chosen by the members' rule from the corpus the target never saw
    assert all(key(e) in reference and key(e) not in corpus for e in pseudo)
    stratum = lambda e: (e.task, len(e.response.split()))  # noqa: E731
    counts = collections.Counter(map(stratum, members))
    assert counts == collections.Counter(map(stratum, outsiders))
    assert counts == collections.Counter(map(stratum, pseudo))
    assert len({key(e) for e in members}) == 120  # no duplicates
    with pytest.raises(UserError, match="chat_membership.n"):
        builtin_audit_examples(100_000, seed=0)


def test_user_csvs_are_read_and_checked(tmp_path):
    good = tmp_path / "members.csv"
    good.write_text('instruction,response\n"say hi","hi"\n"say, bye","bye"\n')
    rows = load_chat_examples(str(good), "chat_membership.members")
    assert [(r.instruction, r.response) for r in rows] == [("say hi", "hi"), ("say, bye", "bye")]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,answer\nx,y\n")
    with pytest.raises(UserError, match="instruction"):
        load_chat_examples(str(bad), "chat_membership.members")


@pytest.fixture(scope="module")
def quick_reference(tmp_path_factory):
    """A tiny-chat-lm-shaped model trained for a few steps on another corpus draw."""
    from robustbench_cl.models import load_model
    from robustbench_cl.models.llm import (
        TINY_CHAT_RECIPE,
        save_chat_lm,
        train_tiny_chat_lm,
        unwrap_chat_lm,
    )

    target = unwrap_chat_lm(load_model("builtin:tiny-chat-lm"))
    recipe = dict(TINY_CHAT_RECIPE, seed=1, steps=4, batch=8, documents=2)
    path = tmp_path_factory.mktemp("reference") / "lm"
    save_chat_lm(train_tiny_chat_lm(recipe, tokenizer=target.tokenizer), path)
    return f"hf:{path}"


def _config(reference: str, **section) -> dict:
    return {
        "suite": "chat-membership-small",
        "chat_membership": {
            "models": [{"spec": "builtin:tiny-chat-lm", "name": "tiny"}],
            "n": 40,
            "reference": reference,
            **section,
        },
    }


@pytest.mark.xdist_group("chat")
def test_the_section_end_to_end_with_controls_report_and_resume(quick_reference, tmp_path):
    from robustbench_cl.engine.results import validate_results
    from robustbench_cl.report.html import render_report

    run = rbcl.run(_config(quick_reference), out=tmp_path / "run", profile=None)
    records = [json.loads(line) for line in (run / "cells.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if r["type"] == "chat_membership"]
    assert record["n_members"] == record["n_nonmembers"] == 40
    assert [a["attack"] for a in record["attacks"]] == ["loss", "zlib", "min-k", "reference"]
    assert all(len(v) == 80 for v in record["scores"].values())
    assert record["shift_auc"] is not None and record["reference"] == quick_reference
    for result in record["attacks"]:
        assert result["epsilon_audit"]["n_counted"] == [20, 20]
        assert result["epsilon_audit"]["certified"] is False
    controls = {r["attack"]: r["control_auc"] for r in record["attacks"]}
    assert controls["reference"] is None  # the reference model's corpus holds the pseudo-members
    assert all(isinstance(controls[a], float) for a in ("loss", "zlib", "min-k"))
    results = json.loads((run / "results.json").read_text())
    validate_results(results)
    (entry,) = results["chat_membership"]
    assert "audit_underpowered" in {f["code"] for f in entry["flags"]}  # 20 + 20 counted
    html = render_report(run)
    assert 'id="chat-membership"' in html and "shift AUC" in html

    again = rbcl.run(_config(quick_reference), out=run, profile=None)
    lines = (again / "cells.jsonl").read_text().splitlines()
    assert len([line for line in lines if '"chat_membership"' in line]) == 1  # resumed


def test_a_user_model_needs_its_data_and_a_reference():
    config = {
        "suite": "x",
        "chat_membership": {"models": [{"spec": "hf:/nowhere"}]},
    }
    with pytest.raises(UserError, match=r"chat_membership.models\[0\].spec.*members"):
        rbcl.run(config, out=None, profile=None)
    config["chat_membership"]["members"] = "/tmp/m.csv"
    with pytest.raises(UserError, match="nonmembers"):
        rbcl.run(config, out=None, profile=None)
    config["chat_membership"]["nonmembers"] = "/tmp/n.csv"
    with pytest.raises(UserError, match="chat_membership.reference"):
        rbcl.run(config, out=None, profile=None)
    config["chat_membership"]["attacks"] = ["lossy"]
    with pytest.raises(UserError, match="lossy"):
        rbcl.run(config, out=None, profile=None)


def test_the_reference_model_ships_trained(tmp_path, monkeypatch):
    """A fresh cache gets the shipped reference: loading it trains nothing."""
    from robustbench_cl.models import llm
    from robustbench_cl.models.loading import load_model
    from robustbench_cl.shipped import NO_SEEDS_ENV, shipped_entries

    reference = llm.tiny_chat_lm_reference_path().name
    assert any(entry.name == reference for entry in shipped_entries())
    monkeypatch.delenv(NO_SEEDS_ENV, raising=False)
    monkeypatch.setenv("ROBUSTBENCH_CL_HOME", str(tmp_path / "fresh"))

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("trained although the reference is shipped")

    monkeypatch.setattr(llm, "train_tiny_chat_lm", refuse)
    lm = llm.unwrap_chat_lm(load_model("builtin:tiny-chat-lm-reference"))
    assert lm.name == "tiny-chat-lm-reference"


@pytest.mark.xdist_group("chat")
def test_the_selection_control_without_the_reference_attack(tmp_path):
    run = rbcl.run(
        _config(None, attacks=["loss", "min-k"], n=20), out=tmp_path / "run", profile=None
    )
    (entry,) = json.loads((run / "results.json").read_text())["chat_membership"]
    assert entry["reference"] is None and entry["shift_auc"] is None
    assert all(isinstance(a["control_auc"], float) for a in entry["attacks"])


@pytest.mark.xdist_group("chat")
def test_user_files_with_a_reference_have_no_selection_control(quick_reference, tmp_path):
    from robustbench_cl.data.chat import make_chat

    rows = make_chat("train", 40, 0, 0, seed=7).examples
    for name, part in (("members.csv", rows[:20]), ("held.csv", rows[20:])):
        with (tmp_path / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["instruction", "response"])
            writer.writerows([(e.instruction, e.response) for e in part])
    config = _config(
        quick_reference,
        n=10,
        members=str(tmp_path / "members.csv"),
        nonmembers=str(tmp_path / "held.csv"),
    )
    run = rbcl.run(config, out=tmp_path / "run", profile=None)
    (entry,) = json.loads((run / "results.json").read_text())["chat_membership"]
    assert entry["source"] == "files" and entry["n_members"] == entry["n_nonmembers"] == 10
    assert all(a["control_auc"] is None for a in entry["attacks"])
    assert entry["shift_auc"] is not None
