"""GCG: a discrete adversarial suffix found by greedy coordinate gradient (Zou et al., 2023).

Each step takes the gradient of the target cross-entropy w.r.t. the one-hot suffix tokens,
keeps the ``topk`` most promising replacement tokens per position, samples ``candidates``
single-token swaps per prompt, scores all of them in batched forward passes and keeps the best.
Candidates come only from ordinary vocabulary tokens (no special tokens). The suffix returned is
the best seen (lowest loss). Everything stays on the device inside the step loop.

The suffix is evaluated as token ids, as in HarmBench's GCG; whether its text encodes back to
the same ids is recorded per prompt (``suffix_retokenizes``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustbench_cl.attacks.base import Cost, report_step, require_int
from robustbench_cl.attacks.jailbreak import JailbreakAttack, JailbreakResult
from robustbench_cl.errors import ThreatModelViolation
from robustbench_cl.models.llm import readable_text
from robustbench_cl.registry import register_attack


@register_attack("gcg")
class GCG(JailbreakAttack):
    """Greedy coordinate gradient suffix attack (top-k candidates, batched evaluation).

    Args:
        steps: GCG iterations (each: one gradient, `candidates` evaluated swaps).
        suffix_length: tokens of the adversarial suffix.
        topk: tokens per suffix position kept from the gradient's top-k.
        candidates: single-token swaps sampled from the top-k and evaluated per step.
        init: the text whose first token fills the initial suffix.
        eval_chunk: candidate sequences per forward pass (lower it to save memory).
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
    ) -> None:
        for name, value in (
            ("steps", steps),
            ("suffix_length", suffix_length),
            ("topk", topk),
            ("candidates", candidates),
            ("eval_chunk", eval_chunk),
        ):
            require_int(f"gcg.{name}", value)
        self.steps = steps
        self.suffix_length = suffix_length
        self.topk = topk
        self.candidates = candidates
        self.init = init
        self.eval_chunk = eval_chunk

    def _losses(self, lm, batch, ids: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        """Target loss of each row of ``ids`` (rows repeat ``batch``'s samples in order)."""
        repeat = ids.shape[0] // len(batch)
        out = []
        for start in range(0, ids.shape[0], self.eval_chunk):
            rows = torch.arange(
                start, min(start + self.eval_chunk, ids.shape[0]), device=ids.device
            )
            expanded = batch.select(rows // repeat)
            expanded.ids = ids[rows]
            out.append(lm.target_loss(lm.logits(lm.embed(expanded.ids), expanded), expanded))
        return torch.cat(out)

    def _run(
        self, lm, instructions, targets, threat, generator, initial_suffix=None
    ) -> JailbreakResult:  # noqa: ANN001
        """``initial_suffix``: per prompt, a (suffix_length,) id tensor to start from, or None."""
        init = lm.tokenizer(self.init, add_special_tokens=False)["input_ids"][:1] or [0]
        n, length = len(instructions), self.suffix_length
        suffix = torch.full((n, length), init[0], dtype=torch.long, device=lm.device)
        for row, start in enumerate(initial_suffix or []):
            if start is not None:
                suffix[row] = start.to(lm.device)
        batch = lm.layout(instructions, targets, suffix)
        columns = lm.suffix_columns(batch, length)
        weights = lm.embedding_matrix
        vocab = weights.shape[0]
        allowed = lm.allowed_tokens()
        topk = min(self.topk, int(allowed.sum()))
        with torch.no_grad():
            base = lm.embed(batch.ids)
        best_loss = torch.full((n,), float("inf"), device=lm.device)
        best_suffix = suffix.clone()
        history = []
        rows = torch.arange(n, device=lm.device)
        for step in range(self.steps):
            report_step(step, self.steps)
            one_hot = F.one_hot(suffix, vocab).to(weights.dtype).requires_grad_(True)
            embeds = torch.cat(
                [base[:, : columns.start], one_hot @ weights, base[:, columns.stop :]], 1
            )
            loss = lm.target_loss(lm.logits(embeds, batch), batch)
            (grad,) = torch.autograd.grad(loss.sum(), one_hot)
            with torch.no_grad():
                improved = loss < best_loss
                best_loss = torch.where(improved, loss, best_loss)
                best_suffix = torch.where(improved[:, None], suffix, best_suffix)
                history.append(loss.mean())
                grad = grad.masked_fill(~allowed, float("inf"))
                top = (-grad).topk(topk, dim=-1).indices  # (n, length, topk)
                position = torch.randint(length, (n, self.candidates), generator=generator)
                choice = torch.randint(topk, (n, self.candidates), generator=generator)
                position, choice = position.to(lm.device), choice.to(lm.device)
                token = top[rows[:, None], position, choice]  # (n, candidates)
                candidates = suffix[:, None, :].repeat(1, self.candidates, 1)
                candidates.scatter_(2, position[..., None], token[..., None])
                ids = batch.ids.repeat_interleave(self.candidates, 0)
                ids[:, columns] = candidates.reshape(-1, length)
                scores = self._losses(lm, batch, ids).view(n, self.candidates)
                suffix = candidates[rows, scores.argmin(1)]
        with torch.no_grad():  # score the last suffix too, then return the best seen
            ids = batch.ids.clone()
            ids[:, columns] = suffix
            last = self._losses(lm, batch, ids)
            suffix = torch.where((last < best_loss)[:, None], suffix, best_suffix)
            batch.ids[:, columns] = suffix
            embeds = lm.embed(batch.ids)
            logits = lm.logits(embeds, batch)
            final = lm.target_loss(logits, batch)
            forced = lm.forced(logits, batch)
        if not bool(allowed[suffix].all()):
            raise ThreatModelViolation("gcg produced a suffix token outside the allowed vocabulary")
        texts = lm.tokenizer.batch_decode(suffix.tolist())
        retokenizes = [
            lm.tokenizer(t, add_special_tokens=False)["input_ids"] == row
            for t, row in zip(texts, suffix.tolist())
        ]
        # shown in reports: a suffix cut inside a UTF-8 character has its stray bytes escaped
        texts = [readable_text(lm.tokenizer, row) for row in suffix.tolist()]
        steps = self.steps
        cost = Cost(
            forward=n * (steps * (1 + self.candidates) + 2),
            backward=n * steps,
            queries=n * (steps * (1 + self.candidates) + 2),
        )
        return JailbreakResult(
            embeds,
            batch,
            forced,
            final,
            cost,
            suffix=texts,
            suffix_retokenizes=retokenizes,
            history=torch.stack(history).tolist() if history else [],
        )
