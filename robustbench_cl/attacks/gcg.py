"""GCG: a discrete adversarial suffix found by greedy coordinate gradient (Zou et al., 2023).

Each step takes the gradient of the target cross-entropy w.r.t. the one-hot suffix tokens,
keeps the ``topk`` most promising replacement tokens per position, samples ``candidates``
swaps of ``n_replace`` positions per prompt, scores them in batched forward passes and keeps
the best. Candidates come only from ordinary vocabulary tokens (no special tokens). The suffix
returned is the best seen (lowest loss).

Text-faithful by default (``filter_retokenization``): a candidate is kept only when the text a
user would send, the instruction followed by the decoded suffix, encodes back to exactly the
ids that were scored (nanoGCG and llm-attacks filter the suffix alone; the boundary with the
instruction can merge too). Whatever the filter, the returned outcome (loss, forced, and the
embeddings the task generates from) is computed on that text re-encoded, so a reported ASR
counts what a user reproduces; ``suffix_retokenizes`` records per prompt whether the text gave
back the optimised ids.

Engineering: the keys and values of every column before the suffix are computed once
(``prefix_cache``, identical losses); a prompt forced for ``early_stop`` consecutive steps stops
and its cost stops counting; the candidate chunk halves on out-of-memory. Filtering needs the
candidate ids on the host once per step (the tokenizer runs there), as in every GCG.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from robustbench_cl.attacks.base import Cost, report_step, require_int
from robustbench_cl.attacks.jailbreak import JailbreakAttack, JailbreakResult
from robustbench_cl.errors import ThreatModelViolation, UserError
from robustbench_cl.models.llm import ChatBatch, ChatLM, readable_text
from robustbench_cl.registry import register_attack

logger = logging.getLogger(__name__)

#: candidates a cached pass scores at least (smaller position groups are merged)
MIN_GROUP = 32


def tail(batch: ChatBatch, start: int) -> ChatBatch:
    """Columns ``[start, L)`` of ``batch``, for the losses of logits computed from a cached
    prefix (their ``attention`` is not a model input: the model takes the full mask)."""
    return ChatBatch(
        batch.ids[:, start:],
        batch.attention[:, start:],
        batch.instruction[:, start:],
        batch.suffix[:, start:],
        batch.target[:, start:],
        batch.prompt_length - start,
    )


def inputs(batch: ChatBatch) -> ChatBatch:
    """``batch`` without its last column: the last target token predicts nothing, so no pass
    that only scores the target needs it as an input."""
    return ChatBatch(
        batch.ids[:, :-1],
        batch.attention[:, :-1],
        batch.instruction[:, :-1],
        batch.suffix[:, :-1],
        batch.target[:, :-1],
        batch.prompt_length,
    )


def round_trips(lm: ChatLM, instructions: list[str], rows: list[list[int]]) -> list[bool]:
    """Per row: the instruction followed by the row's decoded text encodes to the instruction's
    ids followed by exactly the row (what the attack scored is what a user's text gives)."""
    texts = lm.tokenizer.batch_decode(rows)
    full = lm.tokenizer([i + t for i, t in zip(instructions, texts)], add_special_tokens=False)[
        "input_ids"
    ]
    heads = {i: lm._tokens(i) for i in set(instructions)}
    return [f == heads[i] + r for i, r, f in zip(instructions, rows, full)]


def text_outcome(lm: ChatLM, instructions, targets, suffix: torch.Tensor):  # noqa: ANN001, ANN201
    """The prompts as a user sends them (instruction + decoded suffix, re-encoded), their
    layout, embeddings, logits-based loss and forced success, and per prompt whether the text
    gave back the suffix ids."""
    rows = suffix.tolist()
    texts = lm.tokenizer.batch_decode(rows)
    prompts = [i + t for i, t in zip(instructions, texts)]
    faithful = round_trips(lm, instructions, rows)
    with torch.no_grad():
        batch = lm.layout(prompts, targets)
        embeds = lm.embed(batch.ids)
        logits = lm.logits(embeds, batch)
        return (
            prompts,
            faithful,
            batch,
            embeds,
            lm.target_loss(logits, batch),
            lm.forced(logits, batch),
        )


def initial_suffix_ids(
    lm: ChatLM, init: str, length: int, instructions: list[str], check: bool
) -> list[int]:
    """``length`` ids to start a suffix from: ``init`` repeated ``length`` times and encoded
    whole, as nanoGCG encodes its init string; else spaced (llm-attacks' ``! ! !``); else the
    first token of ``init`` repeated. With ``check``, the start must round-trip after every
    instruction, or the attack could never move (each candidate keeps most of it): a one-line
    error names ``init``."""
    options = []
    for text in (init * length, " ".join([init] * length), " " + " ".join([init] * length)):
        ids = lm._tokens(text)
        if len(ids) == length:
            options.append(ids)
    options.append((lm._tokens(init)[:1] or [0]) * length)
    heads = list(dict.fromkeys(instructions))
    for ids in options:
        if not check or all(round_trips(lm, heads, [ids] * len(heads))):
            return ids
    raise UserError(
        "init",
        f"{init!r} repeated {length} times does not encode back to the same tokens after the "
        "instructions, so no candidate could be kept",
        "give another init (e.g. x or !) or set filter_retokenization: false",
    )


@register_attack("gcg")
class GCG(JailbreakAttack):
    """Greedy coordinate gradient suffix attack (top-k candidates, batched evaluation).

    Args:
        steps: GCG iterations (each: one gradient, up to `candidates` evaluated swaps).
        suffix_length: tokens of the adversarial suffix.
        topk: tokens per suffix position kept from the gradient's top-k.
        candidates: swaps sampled from the top-k and evaluated per prompt and step.
        init: the initial suffix is this text repeated (encoded whole, as nanoGCG does; else
            spaced, else its first token repeated); it must round-trip after the instructions.
        eval_chunk: candidate sequences per forward pass (halved on out-of-memory).
        n_replace: suffix positions each candidate changes (nanoGCG's, distinct positions).
        filter_retokenization: drop candidates whose text does not encode back to their ids
            (false: the ids are optimised as they are; the cell is flagged).
        early_stop: stop a prompt once its suffix forces the target for this many consecutive
            steps (null: every prompt runs every step; never through a defense, whose forcing
            the undefended logits do not show).
        prefix_cache: compute what precedes the suffix once (identical losses).
        allow_non_ascii: let the suffix use tokens whose text is not printable ASCII (off by
            default, as in nanoGCG and llm-attacks: a suffix a user can type).
        adaptive: against an inference-time defense (SmoothLLM, a perplexity filter), score
            candidates through it (its ``adaptive_scores``); false: optimise on the undefended
            model and only judge through the defense (a non-adaptive, flagged cell).
    """

    name = "gcg"
    norms = frozenset({"none"})
    spaces = frozenset({"token"})

    def __init__(
        self,
        steps: int = 100,
        suffix_length: int = 10,
        topk: int = 32,
        candidates: int = 64,
        init: str = "!",
        eval_chunk: int = 1024,
        n_replace: int = 1,
        filter_retokenization: bool = True,
        early_stop: int | None = None,
        prefix_cache: bool = True,
        allow_non_ascii: bool = False,
        adaptive: bool = True,
    ) -> None:
        for name, value in (
            ("steps", steps),
            ("suffix_length", suffix_length),
            ("topk", topk),
            ("candidates", candidates),
            ("eval_chunk", eval_chunk),
            ("n_replace", n_replace),
        ):
            require_int(f"gcg.{name}", value)
        if n_replace > suffix_length:
            raise UserError(
                "gcg.n_replace",
                f"{n_replace} is more than the suffix's {suffix_length} positions",
                "use at most suffix_length",
            )
        if early_stop is not None:
            require_int("gcg.early_stop", early_stop)
        for name, value in (
            ("filter_retokenization", filter_retokenization),
            ("prefix_cache", prefix_cache),
            ("allow_non_ascii", allow_non_ascii),
            ("adaptive", adaptive),
        ):
            if not isinstance(value, bool):
                raise UserError(f"gcg.{name}", f"must be true or false, got {value!r}")
        self.steps = steps
        self.suffix_length = suffix_length
        self.topk = topk
        self.candidates = candidates
        self.init = init
        self.eval_chunk = eval_chunk
        self.n_replace = n_replace
        self.filter_retokenization = filter_retokenization
        self.early_stop = early_stop
        self.prefix_cache = prefix_cache
        self.allow_non_ascii = allow_non_ascii
        self.adaptive = adaptive
        self._chunk = eval_chunk

    # ------------------------------------------------------------------ forward passes
    def _tail_logits(self, lm, batch, embeds_tail, start, states, rows):  # noqa: ANN001, ANN202
        """Logits of columns ``[start, L - 1)`` (``embeds_tail``) for the prompts ``rows`` of
        ``batch``."""
        sub = inputs(batch.select(rows))
        if states is not None:
            return lm.logits_after(embeds_tail, sub, start, states, rows)
        with torch.no_grad():
            head = lm.embed(sub.ids[:, :start])
        return lm.logits(torch.cat([head, embeds_tail], 1), sub)[:, start:]

    def _losses(  # noqa: ANN001
        self, lm, batch, ids, prompt, start, states, first=None, local=None, current=None
    ) -> torch.Tensor:
        """Target loss of each row of ``ids`` (columns from ``start``), row ``r`` a candidate
        for prompt ``prompt[r]``; the chunk halves on out-of-memory. ``first``: per row, the
        first suffix position it changes. Its columns before that are the current suffix's, so
        their keys and values come from ``current`` (the gradient pass's cache of the active
        prompts; row ``local[r]``) and only the columns from there on are computed."""
        out = torch.empty(ids.shape[0], device=ids.device)
        if first is None or current is None:
            groups = [(0, torch.arange(ids.shape[0], device=ids.device))]
        else:
            # rows grouped by their first changed position; a group too small to keep a pass
            # efficient joins the next one and starts at the smaller position
            positions = first.tolist()
            groups, pending, since = [], [], None
            for p in sorted(set(positions)):
                pending += [i for i, q in enumerate(positions) if q == p]
                since = p if since is None else since
                if len(pending) >= MIN_GROUP:
                    groups.append((since, torch.tensor(pending, device=ids.device)))
                    pending, since = [], None
            if pending:
                if groups and since is not None:  # the last small group joins the one before
                    start_p, rows = groups.pop()
                    groups.append(
                        (start_p, torch.cat([rows, torch.tensor(pending, device=ids.device)]))
                    )
                else:
                    groups.append((since or 0, torch.tensor(pending, device=ids.device)))
        for p, index in groups:
            begin = 0
            while begin < len(index):
                stop = min(begin + self._chunk, len(index))
                chunk = index[begin:stop]
                try:
                    rows = prompt[chunk]
                    if p == 0:
                        logits = self._tail_logits(
                            lm, batch, lm.embed(ids[chunk, :-1]), start, states, rows
                        )
                    else:
                        cut = start + p
                        past = [(k[:, :, :cut], v[:, :, :cut]) for k, v in current]
                        logits = lm.logits_after(
                            lm.embed(ids[chunk, p:-1]),
                            inputs(batch.select(rows)),
                            cut,
                            past,
                            local[chunk],
                        )
                    sub = tail(batch.select(rows), start + p)
                    sub.ids = ids[chunk, p:]
                    out[chunk] = lm.target_loss(logits, sub, shifted=True)
                except torch.OutOfMemoryError:
                    if min(self._chunk, len(chunk)) == 1:
                        raise
                    # halve what actually ran (a group can be smaller than the chunk)
                    self._chunk = max(1, min(self._chunk, len(chunk)) // 2)
                    logger.warning("gcg: out of memory; candidate chunk halved to %d", self._chunk)
                    if lm.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                begin = stop
        return out

    def _sample(self, top, suffix, generator) -> torch.Tensor:  # noqa: ANN001
        """(n, candidates, length) candidate suffixes from (n, length, topk) top tokens."""
        n, length = suffix.shape
        device = suffix.device
        rows = torch.arange(n, device=device)
        candidates = suffix[:, None, :].repeat(1, self.candidates, 1)
        if self.n_replace == 1:
            position = torch.randint(length, (n, self.candidates), generator=generator)
            choice = torch.randint(top.shape[-1], (n, self.candidates), generator=generator)
            position, choice = position.to(device), choice.to(device)
            token = top[rows[:, None], position, choice]
            return candidates.scatter_(2, position[..., None], token[..., None])
        shape = (n, self.candidates, length)
        position = torch.rand(shape, generator=generator).argsort(-1)[..., : self.n_replace]
        choice = torch.randint(
            top.shape[-1], (n, self.candidates, self.n_replace), generator=generator
        )
        position, choice = position.to(device), choice.to(device)
        token = top[rows[:, None, None], position, choice]
        return candidates.scatter_(2, position, token)

    # ------------------------------------------------------------------ the attack
    def _run(
        self, lm, instructions, targets, threat, generator, initial_suffix=None, defense=None
    ) -> JailbreakResult:  # noqa: ANN001
        """``initial_suffix``: per prompt, a (suffix_length,) id tensor to start from, or None.
        ``defense``: an inference-time defense to score candidates through (adaptive)."""
        through = defense if self.adaptive else None
        self._chunk = self.eval_chunk
        n, length = len(instructions), self.suffix_length
        init = initial_suffix_ids(
            lm, self.init, length, instructions, self.filter_retokenization and not initial_suffix
        )
        suffix = torch.tensor([init] * n, dtype=torch.long, device=lm.device)
        for row, start in enumerate(initial_suffix or []):
            if start is not None:
                suffix[row] = start.to(lm.device)
        if self.filter_retokenization:
            broken = [
                i for i, ok in enumerate(round_trips(lm, instructions, suffix.tolist())) if not ok
            ]
            if broken:
                logger.warning(
                    "gcg: the initial suffix of %d prompt(s) does not encode back from its "
                    "text; their candidates must repair it first (another init may help)",
                    len(broken),
                )
        batch = lm.layout(instructions, targets, suffix)
        columns = lm.suffix_columns(batch, length)
        start = columns.start
        weights = lm.embedding_matrix
        vocab = weights.shape[0]
        allowed = lm.allowed_tokens(ascii_only=not self.allow_non_ascii)
        topk = min(self.topk, int(allowed.sum()))
        with torch.no_grad():
            base = lm.embed(batch.ids)
        states = lm.prefix_states(base, batch, start) if self.prefix_cache else None
        best_loss = torch.full((n,), float("inf"), device=lm.device)
        best_suffix = suffix.clone()
        streak = torch.zeros(n, dtype=torch.long, device=lm.device)
        active = torch.arange(n, device=lm.device)
        history = []
        forward = backward = filtered = 0
        for step in range(self.steps):
            report_step(step, self.steps)
            sub = batch.select(active)
            one_hot = F.one_hot(suffix[active], vocab).to(weights.dtype).requires_grad_(True)
            embeds_tail = torch.cat([one_hot @ weights, base[active, columns.stop : -1]], 1)
            current = None
            if states is not None:  # keep the current suffix's keys and values for candidates
                logits, current = lm.logits_after(
                    embeds_tail, inputs(sub), start, states, active, keep_cache=True
                )
                current = [(k[:, :, : columns.stop], v[:, :, : columns.stop]) for k, v in current]
            else:
                logits = self._tail_logits(lm, batch, embeds_tail, start, states, active)
            view = tail(sub, start)
            view.ids = view.ids.clone()
            view.ids[:, :length] = suffix[active]
            loss = lm.target_loss(logits, view, shifted=True)
            (grad,) = torch.autograd.grad(loss.sum(), one_hot)
            forward += len(active)
            backward += len(active)
            with torch.no_grad():
                full_loss = best_loss.clone()
                full_loss[active] = loss
                history.append(full_loss.mean())
                if through is None:  # (through a defense: the best by its scores, below)
                    improved = full_loss < best_loss
                    best_loss = torch.where(improved, full_loss, best_loss)
                    best_suffix = torch.where(improved[:, None], suffix, best_suffix)
                if self.early_stop is not None and through is None:  # (undefended forcing)
                    forced = torch.zeros(n, dtype=torch.bool, device=lm.device)
                    forced[active] = lm.forced(logits, view, shifted=True)
                    streak = torch.where(forced, streak + 1, torch.zeros_like(streak))
                    stopping = streak >= self.early_stop
                    # a prompt stops on the suffix that forced it: keep that one
                    best_suffix = torch.where(stopping[:, None], suffix, best_suffix)
                    best_loss = torch.where(stopping, full_loss, best_loss)
                    keep = ~stopping[active]
                    if not bool(keep.all()):
                        active, grad, loss = active[keep], grad[keep], loss[keep]
                        if current is not None:
                            current = [(k[keep], v[keep]) for k, v in current]
                    if len(active) == 0:
                        break
                m = len(active)
                grad = grad.masked_fill(~allowed, float("inf"))
                top = (-grad).topk(topk, dim=-1).indices  # (m, length, topk)
                candidates = self._sample(top, suffix[active], generator)  # (m, c, length)
                flat = candidates.reshape(-1, length)
                prompt = active.repeat_interleave(self.candidates)
                local = torch.arange(m, device=lm.device).repeat_interleave(self.candidates)
                rows_list = flat.tolist()
                if self.filter_retokenization:
                    keep = round_trips(lm, [instructions[i] for i in prompt.tolist()], rows_list)
                    filtered += len(keep) - sum(keep)
                else:
                    keep = [True] * len(rows_list)
                # what needs a forward pass: a candidate's first changed position; a repeat
                # of another candidate of its prompt is not scored again (the argmin is the
                # same), and one that changes nothing scores the current suffix's loss
                current_rows = suffix[active].tolist()
                first, evaluate, same = [], [], []
                seen: set[tuple[int, ...]] = set()
                for r, (row, ok) in enumerate(zip(rows_list, keep)):
                    owner = r // self.candidates
                    key = (owner, *row)
                    if not ok or key in seen:
                        continue
                    seen.add(key)
                    changed = [j for j in range(length) if row[j] != current_rows[owner][j]]
                    if not changed and through is None:
                        same.append(r)
                        continue
                    evaluate.append(r)
                    first.append(changed[0] if changed and current is not None else 0)
                scores = torch.full((len(flat),), float("inf"), device=lm.device)
                if same:
                    index = torch.tensor(same, device=lm.device)
                    scores[index] = loss[local[index]]
                if evaluate:
                    index = torch.tensor(evaluate, device=lm.device)
                    pick = prompt[index]
                    ids = batch.ids[pick, start:].clone()
                    ids[:, :length] = flat[index]
                    losses = self._losses(
                        lm,
                        batch,
                        ids,
                        pick,
                        start,
                        states,
                        first=torch.tensor(first),
                        local=local[index],
                        current=current,
                    )
                    if through is not None:
                        sent = lm.tokenizer.batch_decode(ids[:, :length].tolist())
                        rows_ = pick.tolist()
                        losses, extra = through.adaptive_scores(
                            lm,
                            [instructions[p] + t for p, t in zip(rows_, sent)],
                            [targets[p] for p in rows_],
                            losses,
                            generator,
                        )
                        forward += extra
                    scores[index] = losses
                    forward += len(evaluate)
                scores = scores.view(m, self.candidates)
                best = scores.argmin(1)
                moved = torch.isfinite(scores.min(1).values)
                chosen = candidates[torch.arange(m, device=lm.device), best]
                suffix[active] = torch.where(moved[:, None], chosen, suffix[active])
                if through is not None:
                    score = scores.min(1).values
                    improved = torch.zeros(n, dtype=torch.bool, device=lm.device)
                    improved[active] = score < best_loss[active]
                    best_loss[active] = torch.minimum(score, best_loss[active])
                    best_suffix = torch.where(improved[:, None], suffix, best_suffix)
        if through is not None and getattr(through, "stochastic", False):
            # the best-seen score of a noisy defense is the luckiest draw: the best seen and
            # the last suffix are scored again on fresh, common draws (4 calls) and the lower
            # one is returned
            rows = torch.cat([best_suffix, suffix]).tolist()
            texts = lm.tokenizer.batch_decode(rows)
            messages = [i + t for i, t in zip(instructions * 2, texts)]
            zero = torch.zeros(2 * n, device=lm.device)
            total = zero.clone()
            for _ in range(4):
                score, extra = through.adaptive_scores(
                    lm, messages, list(targets) * 2, zero, generator
                )
                total += score
                forward += extra
            keep_best = total[:n] <= total[n:]
            suffix = torch.where(keep_best[:, None], best_suffix, suffix)
        elif through is not None:  # every suffix taken was scored through the defense
            suffix = best_suffix
        else:
            with torch.no_grad():  # score the last suffix too, then return the best seen
                ids = batch.ids[:, start:].clone()
                ids[:, :length] = suffix
                everyone = torch.arange(n, device=lm.device)
                last = self._losses(lm, batch, ids, everyone, start, states)
                forward += n
                suffix = torch.where((last < best_loss)[:, None], suffix, best_suffix)
        if not bool(allowed[suffix].all()):
            raise ThreatModelViolation("gcg produced a suffix token outside the allowed vocabulary")
        prompts, faithful, text_batch, embeds, final, forced = text_outcome(
            lm, instructions, targets, suffix
        )
        forward += n
        cost = Cost(forward=forward, backward=backward, queries=forward)
        return JailbreakResult(
            embeds,
            text_batch,
            forced,
            final,
            cost,
            # shown in reports: a suffix cut inside a UTF-8 character has its stray bytes escaped
            suffix=[readable_text(lm.tokenizer, row) for row in suffix.tolist()],
            suffix_retokenizes=faithful,
            history=torch.stack(history).tolist() if history else [],
            suffix_ids=suffix,
            prompts=prompts,
            filtered=filtered,
        )


@register_attack("gcg-universal")
class UniversalGCG(GCG):
    """One GCG suffix for many behaviours (Zou et al.'s multi-prompt GCG), judged on held-out ones.

    The suffix is optimised on ``train_behaviors`` of the section's training harmful behaviours
    (the mean target loss over them: their gradients summed, every candidate scored on all of
    them), then appended to each held-out behaviour as text. With ``source`` (a chat model spec,
    e.g. ``builtin:tiny-chat-lm-reference``) it is optimised on that model and transferred to
    the cell's (a non-adaptive transfer cell, flagged). Takes GCG's parameters besides.

    Args:
        train_behaviors: training behaviours the suffix is optimised on.
        source: optimise on this model instead of the cell's (transfer).
    """

    name = "gcg-universal"
    universal = True

    def __init__(self, train_behaviors: int = 25, source: str | None = None, **params) -> None:  # noqa: ANN003
        super().__init__(**params)
        require_int("gcg-universal.train_behaviors", train_behaviors)
        self.train_behaviors = train_behaviors
        self.source = source
        self._suffixes: dict[tuple, torch.Tensor] = {}
        self._charged: set[tuple] = set()
        self._source_lm = None

    def source_lm(self, lm):  # noqa: ANN001, ANN201
        """The model the suffix is optimised on: ``source``'s (loaded once), else ``lm``."""
        if self.source is None:
            return lm
        if self._source_lm is None:
            from robustbench_cl.models import load_model
            from robustbench_cl.models.llm import unwrap_chat_lm

            self._source_lm = unwrap_chat_lm(load_model(self.source)).to(lm.device)
            self._source_lm.requires_grad_(False)
        return self._source_lm

    def optimise(self, lm, instructions, targets, generator) -> tuple[torch.Tensor, dict]:  # noqa: ANN001
        """One (suffix_length,) suffix minimising the mean target loss over the prompts."""
        self._chunk = self.eval_chunk
        n, length = len(instructions), self.suffix_length
        init = initial_suffix_ids(lm, self.init, length, instructions, self.filter_retokenization)
        suffix = torch.tensor(init, dtype=torch.long, device=lm.device)
        batch = lm.layout(instructions, targets, suffix.expand(n, length))
        columns = lm.suffix_columns(batch, length)
        start = columns.start
        weights = lm.embedding_matrix
        allowed = lm.allowed_tokens(ascii_only=not self.allow_non_ascii)
        topk = min(self.topk, int(allowed.sum()))
        with torch.no_grad():
            base = lm.embed(batch.ids)
        states = lm.prefix_states(base, batch, start)
        if states is None:
            raise UserError("gcg-universal", "the model keeps no per-layer cache", "use gcg")
        everyone = torch.arange(n, device=lm.device)
        best_loss, best = float("inf"), suffix.clone()
        forward = backward = filtered = 0
        history = []
        for step in range(self.steps):
            report_step(step, self.steps)
            one_hot = F.one_hot(suffix, weights.shape[0]).to(weights.dtype).requires_grad_(True)
            embeds = torch.cat(
                [(one_hot @ weights).expand(n, length, -1), base[:, columns.stop : -1]], 1
            )
            logits, current = lm.logits_after(
                embeds, inputs(batch), start, states, everyone, keep_cache=True
            )
            current = [(k[:, :, : columns.stop], v[:, :, : columns.stop]) for k, v in current]
            view = tail(batch, start)
            view.ids = view.ids.clone()
            view.ids[:, :length] = suffix
            loss = lm.target_loss(logits, view, shifted=True).mean()
            (grad,) = torch.autograd.grad(loss, one_hot)
            forward += n
            backward += n
            with torch.no_grad():
                value = float(loss)
                history.append(value)
                if value < best_loss:
                    best_loss, best = value, suffix.clone()
                grad = grad.masked_fill(~allowed, float("inf"))
                top = (-grad).topk(topk, dim=-1).indices[None]
                candidates = self._sample(top, suffix[None], generator)[0]  # (c, length)
                rows = candidates.tolist()
                # a candidate must round-trip after every training instruction
                keep = [True] * len(rows)
                if self.filter_retokenization:
                    for instruction in dict.fromkeys(instructions):
                        checked = round_trips(lm, [instruction] * len(rows), rows)
                        keep = [a and b for a, b in zip(keep, checked)]
                    filtered += len(keep) - sum(keep)
                current_row = suffix.tolist()
                unique = [
                    r
                    for r, row in enumerate(rows)
                    if keep[r] and row != current_row and row not in rows[:r]
                ]
                if not unique:
                    continue
                firsts = [
                    next(j for j in range(length) if rows[r][j] != current_row[j]) for r in unique
                ]
                chosen = torch.tensor(unique, device=lm.device)
                k = len(unique)
                ids = batch.ids[:, start:].repeat(k, 1)
                ids[:, :length] = candidates[chosen].repeat_interleave(n, 0)
                losses = self._losses(
                    lm,
                    batch,
                    ids,
                    everyone.repeat(k),
                    start,
                    states,
                    first=torch.tensor(firsts).repeat_interleave(n),
                    local=everyone.repeat(k),
                    current=current,
                )
                forward += len(ids)
                means = losses.view(k, n).mean(1)
                if float(means.min()) < value:  # keep the current suffix if nothing beats it
                    suffix = candidates[chosen[means.argmin()]].clone()
        with torch.no_grad():  # the last suffix scored too
            ids = batch.ids[:, start:].clone()
            ids[:, :length] = suffix
            last = float(self._losses(lm, batch, ids, everyone, start, states).mean())
            forward += n
            if last < best_loss:
                best_loss, best = last, suffix
        info = {
            "forward": forward,
            "backward": backward,
            "filtered": filtered,
            "train_loss": best_loss,
            "history": history,
        }
        return best, info

    def _run(  # noqa: ANN001
        self,
        lm,
        instructions,
        targets,
        threat,
        generator,
        defense=None,
        train=None,
        seed=0,
        pair=None,
        cell=None,
    ) -> JailbreakResult:
        """``train``: (instructions, targets) to optimise on; the result is on ``instructions``.
        ``pair`` and ``cell`` name the (model, defense) and the cell (stable keys: a rebuilt
        model can reuse a freed object's ``id``); unnamed, ``lm``'s identity."""
        pair = pair if pair is not None else id(lm)
        cell = cell if cell is not None else id(lm)
        if train is None:
            raise UserError(
                "gcg-universal", "needs training behaviours", "run it in a jailbreak section"
            )
        source = self.source_lm(lm)
        # the suffix: per source (a transfer's, shared by every target) or per (model,
        # defense) pair; the training cost: once per cell (``cell``), never per batch
        owner = self.source if self.source is not None else pair
        key = (owner, seed, tuple(train[0]))
        if key not in self._suffixes:
            optimiser = torch.Generator().manual_seed(seed)
            self._suffixes[key] = self.optimise(source, train[0], train[1], optimiser)
        suffix, info = self._suffixes[key]
        charge = (key, cell)
        first_use = charge not in self._charged
        self._charged.add(charge)
        spent = (info["forward"], info["backward"]) if first_use else (0, 0)
        if source is not lm:  # the source's tokens as text, encoded again by the target
            text = source.tokenizer.decode(suffix.tolist())
            suffix = torch.tensor(lm._tokens(text), dtype=torch.long)
        rows = suffix.to(lm.device).expand(len(instructions), -1)
        prompts, faithful, batch, embeds, final, forced = text_outcome(
            lm, instructions, targets, rows
        )
        cost = Cost(
            forward=spent[0] + len(instructions),
            backward=spent[1],
            queries=spent[0] + len(instructions),
        )
        return JailbreakResult(
            embeds,
            batch,
            forced,
            final,
            cost,
            suffix=[readable_text(lm.tokenizer, rows[0].tolist())] * len(instructions),
            suffix_retokenizes=faithful,
            history=info["history"],
            suffix_ids=rows,
            prompts=prompts,
            filtered=info["filtered"] if first_use else 0,
        )
