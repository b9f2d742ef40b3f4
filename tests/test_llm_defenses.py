"""Inference-time jailbreak defenses: SmoothLLM's perturbations and vote, the perplexity filter,
adaptive attacks through them, and their cells in a jailbreak run. Tiny random models only."""

from __future__ import annotations

import json
import random

import pytest
import torch

from robustbench_cl.attacks import make_attack
from robustbench_cl.data.chat import REFUSAL, make_chat
from robustbench_cl.defenses import llm_inference, make_defense
from robustbench_cl.defenses.llm_inference import message_scores, perturb
from robustbench_cl.errors import UserError
from robustbench_cl.models.llm import ChatLM, save_chat_lm
from robustbench_cl.models.wrappers import Frozen
from robustbench_cl.threat import ThreatModel

TOKEN = ThreatModel(norm="none", eps=0.0, space="token", bounds=None)


@pytest.fixture(scope="module")
def chat() -> ChatLM:
    from tests.conftest import random_chat_lm

    return random_chat_lm()


def test_perturbations_change_floor_len_times_q_characters():
    rng = random.Random(0)
    assert perturb("0123456789", "swap", 5, rng) == "0123456789"  # floor(10 * 5 / 100) = 0
    text = "a" * 50
    swapped = perturb(text, "swap", 10, rng)
    assert len(swapped) == 50 and sum(c != "a" for c in swapped) <= 5
    assert len(perturb(text, "insert", 10, rng)) == 55
    patched = perturb("b" * 99, "patch", 20, rng)
    changed = [i for i, c in enumerate(patched) if c != "b"]
    assert len(patched) == 99 and (not changed or changed[-1] - changed[0] < 19)


def test_smoothllm_votes_strictly_over_half(chat, monkeypatch):
    defense = make_defense("smoothllm", copies=4)
    hits = iter([[True, True, False, False], [True, True, True, False]])
    monkeypatch.setattr(llm_inference, "text_forced", lambda lm, m, t: next(hits))
    assert defense.forced(chat, ["x" * 40], ["t"], random.Random(0)) == [False]  # a tie
    assert defense.forced(chat, ["x" * 40], ["t"], random.Random(0)) == [True]
    answers = iter([["Sure", "Sure", "I'm sorry", "I'm sorry"], ["Sure", "Sure", "Sure", "Sorry"]])
    monkeypatch.setattr(llm_inference, "plain_respond", lambda lm, m, t: next(answers))
    (tie,) = defense.respond(chat, ["x" * 40], 8, random.Random(0))
    assert tie == "I'm sorry"  # an even split is not jailbroken
    (broken,) = defense.respond(chat, ["x" * 40], 8, random.Random(0))
    assert broken == "Sure"
    with pytest.raises(UserError, match="perturbation"):
        make_defense("smoothllm", perturbation="shuffle")


def test_perplexity_filter_refuses_above_its_calibrated_threshold(chat):
    data = make_chat("train", 10, 10, 5)
    defense = make_defense("perplexity-filter")
    lm = defense.build(Frozen(chat), "hf:x", data).model
    goals = [e.instruction for e in data.of("harmful")]
    assert defense.threshold == pytest.approx(float(message_scores(chat, goals).max()))
    assert all(defense.passes(chat, goals))  # every calibration request passes
    gibberish = "zq xv !! ## qq zz " * 3
    # a random model finds everything about equally unlikely: put the threshold just below it
    defense._threshold = float(message_scores(chat, [gibberish])[0]) - 0.1
    assert not defense.passes(chat, [gibberish])[0]
    assert lm.respond([gibberish], 4) == [REFUSAL]
    losses = torch.zeros(2)
    scores, extra = defense.adaptive_scores(chat, [goals[0], gibberish], ["a", "a"], losses, None)
    excess = float(message_scores(chat, [gibberish])[0]) - defense.threshold
    # feasibility first: a passing message scores its loss, a refused one 1e4 + its excess
    first = float(message_scores(chat, [goals[0]])[0]) - defense.threshold
    expected = 0.0 if first <= 0 else llm_inference.INFEASIBLE + first
    assert float(scores[0]) == pytest.approx(expected, abs=1e-3)
    assert float(scores[1]) == pytest.approx(llm_inference.INFEASIBLE + excess, abs=1e-3)
    assert extra == 2
    # forced through the filter: a refused message forces nothing
    targets = [e.target for e in data.of("harmful")][:2]
    assert defense.forced(chat, [gibberish, gibberish], targets, random.Random(0)) == [False] * 2
    wide = make_defense("perplexity-filter", calibration="all")
    wide.build(Frozen(chat), "hf:x", data)
    every = [e.instruction for e in data.examples]
    assert wide.threshold == pytest.approx(float(message_scores(chat, every).max()))


class Recording:
    """A stand-in defense that records what an adaptive attack sends it."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def adaptive_scores(self, lm, messages, targets, losses, generator):  # noqa: ANN001, ANN201
        self.calls.append(messages)
        return losses + 1.0, len(messages)


def test_gcg_scores_candidates_through_the_defense_only_when_adaptive(chat):
    examples = make_chat("test", 0, 2, 0, seed=1).of("harmful")
    instructions, targets = [e.instruction for e in examples], [e.target for e in examples]
    defense = Recording()
    params = {"steps": 3, "suffix_length": 3, "topk": 8, "candidates": 6}
    result = make_attack("gcg", **params).run(
        chat, instructions, targets, TOKEN, torch.Generator().manual_seed(0), defense=defense
    )
    assert len(defense.calls) == 3
    assert all(m.startswith(tuple(instructions)) for call in defense.calls for m in call)
    plain = make_attack("gcg", **params).run(
        chat, instructions, targets, TOKEN, torch.Generator().manual_seed(0)
    )
    assert result.cost.forward > plain.cost.forward  # the defense's passes are counted
    off = Recording()
    make_attack("gcg", adaptive=False, **params).run(
        chat, instructions, targets, TOKEN, torch.Generator().manual_seed(0), defense=off
    )
    assert off.calls == []


@pytest.mark.slow
def test_inference_defenses_in_a_jailbreak_run(chat, tmp_path):
    from robustbench_cl.engine.runner import run

    save_chat_lm(chat, tmp_path / "model")
    config = {
        "suite": "inference-defenses",
        "seed": 0,
        "jailbreak": {
            "data": {"n_harmful": 2, "n_benign": 4, "n_borderline": 2, "train_harmful": 8},
            "models": [{"spec": f"hf:{tmp_path / 'model'}", "name": "tiny"}],
            "defenses": [
                {"defense": "none", "name": "base"},
                {"defense": "smoothllm", "params": {"copies": 3, "eot_copies": 2}},
                {"defense": "perplexity-filter"},
            ],
            "attacks": [
                {"attack": "direct"},
                {"attack": "gcg", "params": {"steps": 2, "candidates": 4, "suffix_length": 3}},
                {
                    "attack": "gcg",
                    "name": "gcg transfer",
                    "params": {"steps": 2, "candidates": 4, "suffix_length": 3, "adaptive": False},
                },
                {"attack": "embedding", "params": {"steps": 2}},
            ],
            "max_new_tokens": 4,
        },
    }
    out = run(config, out=tmp_path / "run", device="cpu")
    section = json.loads((out / "results.json").read_text())["jailbreak"]
    cells = {(c["pair"], c["column"]): c for c in section["cells"]}
    for defense in ("smoothllm", "perplexity-filter"):
        assert cells[(f"tiny / {defense}", "gcg")]["adaptive"] is True
        transfer = cells[(f"tiny / {defense}", "gcg transfer")]
        assert transfer["adaptive"] is False
        assert "defense_not_adaptive" in [f["code"] for f in transfer["flags"]]
        embedding = cells[(f"tiny / {defense}", "embedding l2 0.3 rel.")]
        assert embedding["defense_applies"] is False
        assert "defense_bypassed" in [f["code"] for f in embedding["flags"]]
        assert (
            "adaptive" not in cells[(f"tiny / {defense}", "direct")]
            or cells[(f"tiny / {defense}", "direct")]["adaptive"] is None
        )
    assert "adaptive" not in cells[("tiny / base", "gcg")]
    pairs = {p["label"]: p for p in section["pairs"]}
    assert pairs["tiny / smoothllm"]["utility"] is None  # an hf: model has no built-in utility


def test_keyed_perturbations_are_common_across_messages_that_share_a_prefix():
    from robustbench_cl.defenses.llm_inference import keyed_perturb

    rng = random.Random(0)
    keys = [rng.random() for _ in range(80)]
    chars = [rng.choice("ABCDEFGHIJ") for _ in range(80)]
    short = keyed_perturb("a" * 60, "swap", 10, keys, chars)
    longer = keyed_perturb("a" * 61, "swap", 10, keys, chars)
    changed = {i for i, c in enumerate(short) if c != "a"}
    assert len(changed) == 6 and changed <= {i for i, c in enumerate(longer) if c != "a"}
    assert all(short[i] == longer[i] for i in changed)  # the same characters at those indices
    assert len(keyed_perturb("a" * 60, "insert", 10, keys, chars)) == 66
    assert len(keyed_perturb("a" * 60, "patch", 10, keys, chars)) == 60
