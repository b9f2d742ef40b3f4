"""Random search over an adversarial suffix, driven by the target's log-probability
(Andriushchenko, Croce and Flammarion, "Jailbreaking leading safety-aligned LLMs with simple
adaptive attacks", ICLR 2025).

Each iteration changes ``n`` contiguous suffix tokens at a uniform position to tokens drawn
uniformly from the allowed vocabulary, sends the instruction followed by the decoded suffix as
text (re-encoded: what the model sees), and keeps the change iff the objective improves, else
reverts. ``n`` follows the paper's schedule on the current best probability ``p`` of the
objective (``p <= 0.01``: 4, ``p <= 0.1``: 2, else 1, capped at ``max_change``). The objective is
the target's mean log-probability (``target``) or, as in the paper, that of its first token
(``first-token``: all an API's top log-probabilities give). Only log-probabilities are read: a
model reachable through them alone can be attacked. Every forward of one message is a query;
a prompt stops once its target is forced. The search reads each answer's log-probabilities on
the host, as any query attack does (the step loop is not device-only). Candidates whose text does not encode back to their
ids are dropped before they are sent (no query spent). Against an inference-time defense the
objective is scored through it (``adaptive``), as GCG's is.
"""

from __future__ import annotations

import math

import torch

from robustbench_cl.attacks.base import Cost, report_step, require_int
from robustbench_cl.attacks.gcg import initial_suffix_ids, round_trips, text_outcome
from robustbench_cl.attacks.jailbreak import JailbreakAttack, JailbreakResult
from robustbench_cl.errors import UserError
from robustbench_cl.models.llm import readable_text
from robustbench_cl.registry import register_attack


@register_attack("random-search")
class RandomSearch(JailbreakAttack):
    """Random search on the suffix by the target's log-probability (black-box, query-counted).

    Args:
        iterations: random-search iterations (one query per active prompt each).
        suffix_length: tokens of the adversarial suffix (the paper's 25).
        max_change: the most contiguous tokens changed per iteration (the paper's 4).
        objective: `target` (mean log-probability of the whole target) or `first-token`.
        init: the initial suffix is this text repeated (see gcg's init).
        early_stop: stop a prompt once its target is forced (the deterministic mode).
        adaptive: against an inference-time defense, score candidates through it.
    """

    name = "random-search"
    norms = frozenset({"none"})
    spaces = frozenset({"token"})
    uses_gradients = False

    def __init__(
        self,
        iterations: int = 500,
        suffix_length: int = 25,
        max_change: int = 4,
        objective: str = "target",
        init: str = "!",
        early_stop: bool = True,
        adaptive: bool = True,
    ) -> None:
        for name, value in (
            ("iterations", iterations),
            ("suffix_length", suffix_length),
            ("max_change", max_change),
        ):
            require_int(f"random-search.{name}", value)
        if objective not in ("target", "first-token"):
            raise UserError(
                "random-search.objective", f"{objective!r}", "use target or first-token"
            )
        if max_change > suffix_length:
            raise UserError("random-search.max_change", "more than the suffix's length", "lower it")
        self.iterations = iterations
        self.suffix_length = suffix_length
        self.max_change = max_change
        self.objective = objective
        self.init = init
        self.early_stop = early_stop
        self.adaptive = adaptive

    def _query(self, lm, messages, targets):  # noqa: ANN001, ANN202
        """(loss, forced) of each message: minus the objective's log-probability."""
        with torch.no_grad():
            batch = lm.layout(messages, targets)
            logits = lm.logits(lm.embed(batch.ids), batch)
            if self.objective == "target":
                loss = lm.target_loss(logits, batch)
            else:
                first = batch.prompt_length
                logprobs = logits[:, first - 1].float().log_softmax(-1)
                loss = -logprobs.gather(1, batch.ids[:, first : first + 1]).squeeze(1)
            return loss, lm.forced(logits, batch)

    def _change(self, probability: float) -> int:
        n = 4 if probability <= 0.01 else 2 if probability <= 0.1 else 1
        return min(n, self.max_change)

    def _run(self, lm, instructions, targets, threat, generator, defense=None) -> JailbreakResult:  # noqa: ANN001
        through = defense if self.adaptive else None
        n, length = len(instructions), self.suffix_length
        init = initial_suffix_ids(lm, self.init, length, instructions, check=True)
        pool = lm.allowed_tokens(ascii_only=True).nonzero().squeeze(1).cpu()
        suffix = [list(init) for _ in range(n)]
        texts = lm.tokenizer.batch_decode(suffix)
        loss, forced = self._query(lm, [i + t for i, t in zip(instructions, texts)], targets)
        queries = n
        if through is not None:
            loss, extra = through.adaptive_scores(
                lm, [i + t for i, t in zip(instructions, texts)], targets, loss, generator
            )
            queries += extra
        best = loss.cpu().tolist()
        stops = self.early_stop and through is None  # undefended forcing is not the defense's
        done = [bool(f) and stops for f in forced.tolist()]
        history = []
        for step in range(self.iterations):
            report_step(step, self.iterations)
            active = [i for i in range(n) if not done[i]]
            if not active:
                break
            proposals = []
            for i in active:
                change = self._change(math.exp(-best[i]))
                start = int(torch.randint(length - change + 1, (1,), generator=generator))
                picks = torch.randint(len(pool), (change,), generator=generator)
                row = list(suffix[i])
                row[start : start + change] = pool[picks].tolist()
                proposals.append(row)
            ok = round_trips(lm, [instructions[i] for i in active], proposals)
            sent = [(i, row) for i, row, good in zip(active, proposals, ok) if good]
            if sent:
                decoded = lm.tokenizer.batch_decode([row for _, row in sent])
                messages = [instructions[i] + t for (i, _), t in zip(sent, decoded)]
                chosen = [targets[i] for i, _ in sent]
                noisy = through is not None and getattr(through, "stochastic", False)
                if noisy:
                    # a noisy defense (SmoothLLM): the incumbent is scored again beside the
                    # proposal, on the same draws, so a lucky old score does not stall the search
                    kept = lm.tokenizer.batch_decode([suffix[i] for i, _ in sent])
                    messages += [instructions[i] + t for (i, _), t in zip(sent, kept)]
                    chosen += chosen
                loss, forced = self._query(lm, messages, chosen)
                queries += len(messages)
                if through is not None:
                    loss, extra = through.adaptive_scores(lm, messages, chosen, loss, generator)
                    queries += extra
                if noisy:
                    k = len(sent)
                    for (i, _), now in zip(sent, loss[k:].tolist()):
                        best[i] = now
                    loss, forced = loss[:k], forced[:k]
                for (i, row), value, hit in zip(sent, loss.tolist(), forced.tolist()):
                    if value < best[i]:
                        best[i], suffix[i] = value, row
                        done[i] = stops and bool(hit)
            history.append(sum(best) / n)
        ids = torch.tensor(suffix, dtype=torch.long, device=lm.device)
        prompts, faithful, batch, embeds, final, forced = text_outcome(
            lm, instructions, targets, ids
        )
        queries += n
        return JailbreakResult(
            embeds,
            batch,
            forced,
            final,
            Cost(forward=queries, backward=0, queries=queries),
            suffix=[readable_text(lm.tokenizer, row) for row in suffix],
            suffix_retokenizes=faithful,
            history=history,
            suffix_ids=ids,
            prompts=prompts,
        )
