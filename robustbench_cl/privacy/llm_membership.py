"""Membership inference on a chat LLM's fine-tuning data.

Every attack scores an (instruction, response) pair from the response's token log-probabilities
under the chat template, given the instruction (what supervised fine-tuning minimised); higher
means "member":

- ``loss`` (Yeom et al., 2018; Carlini et al., 2021): minus the mean token NLL.
- ``zlib`` (Carlini et al., 2021): minus the NLL over the zlib-compressed length of the
  response's UTF-8 bytes (low entropy text is easy for any model).
- ``min-k`` (Shi et al., ICLR 2024): the mean of the lowest ``k`` share of token
  log-probabilities, at least one token (k = 0.2 as the paper; a short response is not NaN).
- ``reference`` (Carlini et al., 2021): the reference model's NLL minus the target's, a model of
  the same recipe that never saw the audited examples calibrating each example's difficulty.

The code bases this follows (detect-pretrain, MIMIR) score "higher = non-member" and negate in
``roc_curve``; here the sign is folded into the score.

The built-in audit set (:func:`builtin_audit_examples`) takes members from tiny-chat-lm's SFT
corpus and non-members from another draw of the same generator, stratified by task and length
so that the two sets differ in membership only: a distribution shift between them gives a high
AUC with no membership at all (Duan et al., 2024, "Do membership inference attacks work on
large language models?"). The audit reports two controls for that: the selection control (the
same attacks on pseudo-members chosen by the members' rule from a corpus the target never saw,
against the non-members: must be at chance), and the reference model's own loss attack (it
saw neither set: away from 0.5 is a shift between them). The reference model shares the
target's tokenizer, which was built from the target's corpus: that can cancel part of a real
signal in the reference attack, and show in the shift control.
"""

from __future__ import annotations

import csv
import random
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

from robustbench_cl.data.chat import ChatExample, make_chat, sft_corpus
from robustbench_cl.errors import UserError

CHAT_MEMBERSHIP_ATTACKS = ("loss", "zlib", "min-k", "reference")


@torch.no_grad()
def response_logprobs(
    lm, instructions: Sequence[str], responses: Sequence[str], batch_size: int = 32
) -> list[torch.Tensor]:  # noqa: ANN001
    """Per example, the log-probability of each response token (and of the end token that
    closes it, as SFT trained it) given the chat-templated instruction."""
    end = lm.tokenizer.convert_ids_to_tokens(lm.eos_id)
    out: list[torch.Tensor] = []
    for start in range(0, len(instructions), batch_size):
        chunk = slice(start, start + batch_size)
        batch = lm.layout(list(instructions[chunk]), [r + end for r in responses[chunk]])
        logprobs = lm.token_logprobs(lm.logits(lm.embed(batch.ids), batch), batch)
        for row, mask in zip(logprobs, batch.target):
            out.append(row[mask].float().cpu())
    return out


def min_k_mean(logprobs: torch.Tensor, k: float) -> float:
    """The mean of the lowest ``max(1, floor(k * n))`` token log-probabilities."""
    count = max(1, int(k * len(logprobs)))
    return float(logprobs.sort().values[:count].mean())


def chat_scores(
    attack: str,
    logprobs: list[torch.Tensor],
    responses: Sequence[str],
    reference: list[torch.Tensor] | None = None,
    k: float = 0.2,
) -> torch.Tensor:
    """One membership score per example (higher: member)."""
    nll = torch.tensor([-float(lp.mean()) for lp in logprobs])
    if attack == "loss":
        return -nll
    if attack == "zlib":
        sizes = torch.tensor([len(zlib.compress(r.encode("utf-8"))) for r in responses])
        return -nll / sizes.float()
    if attack == "min-k":
        return torch.tensor([min_k_mean(lp, k) for lp in logprobs])
    if attack == "reference":
        if reference is None:
            raise UserError("chat_membership.reference", "the reference attack needs a model")
        reference_nll = torch.tensor([-float(lp.mean()) for lp in reference])
        return reference_nll - nll
    raise UserError(
        "chat_membership.attacks",
        f"unknown attack {attack!r}",
        f"use {', '.join(CHAT_MEMBERSHIP_ATTACKS)}",
    )


def _key(example: ChatExample) -> tuple[str, str]:
    return example.instruction, example.response


def _stratum(example: ChatExample) -> tuple[str, int]:
    return example.task, len(example.response.split())


def builtin_audit_examples(
    n: int, seed: int, corpus: int = 6000, corpus_seed: int = 0, reference_seed: int = 1
) -> tuple[list[ChatExample], list[ChatExample], list[ChatExample]]:
    """``n`` members of tiny-chat-lm's SFT corpus, ``n`` non-members and ``n`` control
    pseudo-members, stratified.

    Members: corpus examples that the reference model's corpus (seed ``reference_seed``) does
    not hold. Non-members: draws of the same generator that neither corpus holds. Pseudo-members
    (the selection control): the reference corpus's examples that the target's corpus does not
    hold, chosen by the members' rule from a corpus the target never saw, so that the target
    must not tell them from the non-members. All three are taken in equal numbers from every
    (task, response length) stratum, so that the sets differ in membership, not in task mix or
    length. Only strata with examples on every side count (the templated arithmetic, capitals
    and refusals are all in the corpus: no non-member of theirs exists).
    """
    members_corpus = sft_corpus(corpus, seed=corpus_seed).examples
    reference_corpus = sft_corpus(corpus, seed=reference_seed).examples
    reference_keys = {_key(e) for e in reference_corpus}
    member_keys = {_key(e) for e in members_corpus}
    members_pool: dict[tuple[str, int], dict[tuple[str, str], ChatExample]] = defaultdict(dict)
    for example in members_corpus:
        if _key(example) not in reference_keys:
            members_pool[_stratum(example)][_key(example)] = example
    pseudo_pool: dict[tuple[str, int], dict[tuple[str, str], ChatExample]] = defaultdict(dict)
    for example in reference_corpus:
        if _key(example) not in member_keys:
            pseudo_pool[_stratum(example)][_key(example)] = example
    outsiders_pool: dict[tuple[str, int], dict[tuple[str, str], ChatExample]] = defaultdict(dict)
    draw = 2
    while sum(len(v) for v in outsiders_pool.values()) < 2 * n and draw < 12:
        fresh = make_chat("train", corpus // 2, corpus // 4, corpus // 4, seed=draw)
        for example in fresh.examples:
            key = _key(example)
            if key not in member_keys and key not in reference_keys:
                outsiders_pool[_stratum(example)][key] = example
        draw += 1
    strata = sorted(set(members_pool) & set(outsiders_pool) & set(pseudo_pool))
    available = {
        s: min(len(members_pool[s]), len(outsiders_pool[s]), len(pseudo_pool[s])) for s in strata
    }
    total = sum(available.values())
    if total < n:
        raise UserError(
            "chat_membership.n",
            f"only {total} members and non-members can be matched, not {n}",
            f"use n <= {total}",
        )
    # each stratum's share of n in proportion to what it can give; the rest by largest remainder
    quota = {s: n * available[s] // total for s in strata}
    remainder = sorted(strata, key=lambda s: (-(n * available[s] % total), s))
    for s in remainder[: n - sum(quota.values())]:
        quota[s] += 1
    rng = random.Random(f"chat-membership-{seed}")
    members, outsiders, pseudo = [], [], []
    for s in strata:
        members += rng.sample(sorted(members_pool[s].values(), key=_key), quota[s])
        outsiders += rng.sample(sorted(outsiders_pool[s].values(), key=_key), quota[s])
        pseudo += rng.sample(sorted(pseudo_pool[s].values(), key=_key), quota[s])
    return members, outsiders, pseudo


def load_chat_examples(path: str, field: str) -> list[ChatExample]:
    """``instruction,response`` rows of a CSV (a user's fine-tuning data or held-out data)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(field, f"{path} does not exist", "give a CSV with instruction,response")
    with file.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"instruction", "response"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(
                field,
                f"{path} has no column {sorted(missing)[0]!r}",
                "columns: instruction,response",
            )
        rows = [
            ChatExample("benign", "user", row["instruction"], row["response"]) for row in reader
        ]
    if not rows:
        raise UserError(field, f"{path} has no rows", "add instruction,response rows")
    return rows
