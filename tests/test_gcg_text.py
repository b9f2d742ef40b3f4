"""GCG as a user reproduces it: candidates that do not survive decode -> encode are dropped, the
outcome is measured on the text, and the engineering (prefix cache, early stop, n_replace, the
out-of-memory chunk) changes cost, never the numbers. Tiny random models only."""

from __future__ import annotations

import pytest
import torch

from robustbench_cl.attacks import make_attack
from robustbench_cl.attacks.gcg import round_trips
from robustbench_cl.data.chat import make_chat
from robustbench_cl.models.llm import ChatLM
from robustbench_cl.threat import ThreatModel

TOKEN = ThreatModel(norm="none", eps=0.0, space="token", bounds=None)


@pytest.fixture(scope="module")
def chat() -> ChatLM:
    from tests.conftest import random_chat_lm

    return random_chat_lm()


@pytest.fixture(scope="module")
def harmful() -> tuple[list[str], list[str]]:
    examples = make_chat("test", 0, 4, 0, seed=1).of("harmful")
    return [e.instruction for e in examples], [e.target for e in examples]


def run(chat, harmful, seed=0, **params):  # noqa: ANN001, ANN201
    params = {"steps": 8, "suffix_length": 5, "topk": 16, "candidates": 24, **params}
    return make_attack("gcg", **params).run(
        chat, *harmful, TOKEN, torch.Generator().manual_seed(seed)
    )


def test_the_tokenizer_has_candidates_that_do_not_round_trip(chat):
    t = chat.tokenizer
    merged = t("is", add_special_tokens=False)["input_ids"]
    assert len(merged) == 1  # "is" is one merged token...
    letters = [t(c, add_special_tokens=False)["input_ids"][0] for c in "is"]
    # ...so "i", "s" as two ids decode to a text that encodes to one id
    assert round_trips(chat, ["go!", "go!"], [letters, merged]) == [False, True]


def test_filtered_gcg_returns_text_faithful_suffixes_and_judges_the_text(chat, harmful):
    instructions, targets = harmful
    result = run(chat, harmful)
    assert result.filtered > 0  # the filter had work to do on this tokenizer
    assert all(result.suffix_retokenizes)
    assert round_trips(chat, instructions, result.suffix_ids.tolist()) == [True] * 4
    # the outcome is on the prompt as sent: its own layout, re-encoded from the text
    assert result.prompts == [
        i + t for i, t in zip(instructions, chat.tokenizer.batch_decode(result.suffix_ids.tolist()))
    ]
    sent = chat.layout(result.prompts, targets)
    assert torch.equal(result.batch.ids, sent.ids)
    logits = chat.logits(chat.embed(sent.ids), sent)
    assert torch.allclose(result.loss, chat.target_loss(logits, sent), atol=1e-5)
    # without the filter the ids are optimised as they are; the outcome is still the text's
    loose = run(chat, harmful, filter_retokenization=False, steps=12)
    assert loose.filtered == 0
    assert torch.equal(loose.batch.ids, chat.layout(loose.prompts, targets).ids)
    assert loose.suffix_retokenizes == round_trips(chat, instructions, loose.suffix_ids.tolist())


def test_suffix_tokens_are_printable_ascii_unless_allowed(chat, harmful):
    result = run(chat, harmful)
    texts = chat.tokenizer.batch_decode([[i] for i in result.suffix_ids.flatten().tolist()])
    assert all(t.isascii() and t.isprintable() for t in texts)


def test_prefix_cache_gives_identical_losses_and_trajectory(chat, harmful):
    instructions, targets = harmful
    cached = run(chat, harmful, prefix_cache=True)
    plain = run(chat, harmful, prefix_cache=False)
    assert torch.equal(cached.suffix_ids, plain.suffix_ids)
    assert cached.history == pytest.approx(plain.history, abs=1e-5)
    # and directly: logits after a cached prefix equal the full forward's
    batch = chat.layout(instructions, targets, cached.suffix_ids)
    start = chat.suffix_columns(batch, 5).start
    embeds = chat.embed(batch.ids)
    states = chat.prefix_states(embeds, batch, start)
    assert states is not None
    tail = chat.logits_after(embeds[:, start:], batch, start, states)
    assert torch.allclose(tail, chat.logits(embeds, batch)[:, start:], atol=1e-5)


def test_out_of_memory_halves_the_candidate_chunk_and_changes_nothing(chat, harmful, monkeypatch):
    reference = run(chat, harmful, eval_chunk=64)
    original = ChatLM.logits_after

    def small_memory(self, embeds, batch, start, states, rows=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if embeds.shape[0] > 10:
            raise torch.OutOfMemoryError("injected")
        return original(self, embeds, batch, start, states, rows, **kwargs)

    monkeypatch.setattr(ChatLM, "logits_after", small_memory)
    attack = make_attack("gcg", steps=8, suffix_length=5, topk=16, candidates=24, eval_chunk=64)
    result = attack.run(chat, *harmful, TOKEN, torch.Generator().manual_seed(0))
    assert attack._chunk <= 10  # halved until a pass fits the injected limit
    assert torch.equal(result.suffix_ids, reference.suffix_ids)
    assert result.cost.forward == reference.cost.forward


def test_out_of_memory_at_one_candidate_is_raised(chat, harmful, monkeypatch):
    original = ChatLM.logits_after
    calls = []

    def no_memory(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if not kwargs.get("keep_cache"):  # the candidates' passes, not the gradient's
            calls.append(args[0].shape[0])
            raise torch.OutOfMemoryError("injected")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ChatLM, "logits_after", no_memory)
    with pytest.raises(torch.OutOfMemoryError):
        run(chat, harmful, steps=1, eval_chunk=8)
    assert calls[-1] == 1 and calls[0] <= 8  # halved down to one candidate, then raised


def test_n_replace_changes_that_many_distinct_positions(chat):
    attack = make_attack("gcg", suffix_length=6, candidates=50, n_replace=3)
    suffix = torch.zeros(2, 6, dtype=torch.long)
    top = torch.arange(1, 5).repeat(2, 6, 1)  # every replacement differs from token 0
    candidates = attack._sample(top, suffix, torch.Generator().manual_seed(0))
    assert ((candidates != 0).sum(-1) == 3).all()
    one = make_attack("gcg", suffix_length=6, candidates=50)._sample(
        top, suffix, torch.Generator().manual_seed(0)
    )
    assert ((one != 0).sum(-1) == 1).all()


def test_early_stop_saves_cost_and_keeps_forced_prompts_forced(chat, harmful):
    # a target the random model nearly emits already: forced within a few steps
    instructions, _ = harmful
    t = chat.tokenizer
    batch = chat.layout(instructions)
    ranked = chat.logits(chat.embed(batch.ids), batch)[:, -1].topk(40).indices.tolist()
    targets = [  # per prompt, its likeliest next token that is a target text of its own
        next(
            t.decode([i])
            for i in row
            if t(t.decode([i]), add_special_tokens=False)["input_ids"] == [i]
        )
        for row in ranked
    ]
    full = make_attack("gcg", steps=10, suffix_length=3, topk=8, candidates=8).run(
        chat, instructions, targets, TOKEN, torch.Generator().manual_seed(0)
    )
    early = make_attack("gcg", steps=10, suffix_length=3, topk=8, candidates=8, early_stop=2).run(
        chat, instructions, targets, TOKEN, torch.Generator().manual_seed(0)
    )
    assert full.forced.any()
    assert early.cost.forward < full.cost.forward and early.cost.backward < full.cost.backward
    assert early.forced.sum() >= full.forced.sum() - 1


def test_gcg_parameters_are_checked():
    from robustbench_cl.errors import UserError

    with pytest.raises(UserError, match="n_replace"):
        make_attack("gcg", suffix_length=3, n_replace=4)
    with pytest.raises(UserError, match="filter_retokenization"):
        make_attack("gcg", filter_retokenization="yes")


def test_random_search_counts_queries_and_never_gets_worse(chat, harmful):
    instructions, targets = harmful
    attack = make_attack("random-search", iterations=30, suffix_length=6, early_stop=False)
    result = attack.run(chat, instructions, targets, TOKEN, torch.Generator().manual_seed(0))
    assert all(a >= b - 1e-6 for a, b in zip(result.history, result.history[1:]))
    # at most one query per prompt and iteration, plus the start and the final outcome
    assert 2 * 4 < result.cost.queries <= 4 * (30 + 2) and result.cost.backward == 0
    assert all(result.suffix_retokenizes)
    assert torch.equal(result.batch.ids, chat.layout(result.prompts, targets).ids)
    first = make_attack("random-search", iterations=30, suffix_length=6, objective="first-token")
    assert first.run(chat, instructions, targets, TOKEN).cost.queries > 0
    from robustbench_cl.errors import UserError

    with pytest.raises(UserError, match="objective"):
        make_attack("random-search", objective="judge")


def test_universal_gcg_sends_one_text_faithful_suffix_to_held_out_behaviours(chat, tmp_path):
    from robustbench_cl.models.llm import save_chat_lm

    train = make_chat("train", 0, 6, 0).of("harmful")
    test = make_chat("test", 0, 3, 0, seed=1).of("harmful")
    pool = ([e.instruction for e in train], [e.target for e in train])
    held = ([e.instruction for e in test], [e.target for e in test])
    params = {"steps": 4, "suffix_length": 4, "topk": 8, "candidates": 8, "train_behaviors": 6}
    attack = make_attack("gcg-universal", **params)
    result = attack.run(chat, *held, TOKEN, train=pool, seed=3)
    assert len(set(result.suffix)) == 1 and (result.suffix_ids == result.suffix_ids[0]).all()
    text = chat.tokenizer.decode(result.suffix_ids[0].tolist())
    assert result.prompts == [i + text for i in held[0]]
    assert all(round_trips(chat, pool[0], [result.suffix_ids[0].tolist()] * 6))
    (suffix, info), *_ = attack._suffixes.values()
    assert info["train_loss"] <= info["history"][0] + 1e-6
    assert result.cost.forward > 6 * 4  # the training behaviours' passes count for the cell
    again = make_attack("gcg-universal", **params).run(chat, *held, TOKEN, train=pool, seed=3)
    assert torch.equal(again.suffix_ids, result.suffix_ids)  # seeded
    # transfer: optimised on another model, sent to this one
    save_chat_lm(chat, tmp_path / "other")
    moved = make_attack("gcg-universal", source=f"hf:{tmp_path / 'other'}", **params)
    transferred = moved.run(chat, *held, TOKEN, train=pool, seed=3)
    assert moved.source_lm(chat) is not chat
    assert torch.equal(transferred.suffix_ids, result.suffix_ids)  # the same weights: same suffix
