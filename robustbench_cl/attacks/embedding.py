"""The continuous embedding-space attack on chat LLMs (Continuous-AdvTrain; Schwinn et al.).

A perturbation delta of the input token embeddings, on the instruction tokens only (never the
chat template, the padding or the target), is optimised by signed gradient descent on the
teacher-forced cross-entropy of the harmful target::

    eps_abs = eps * mean_v ||E_v||_2                    (eps relative to the mean row norm)
    repeat steps:  delta <- delta - lr * sign(grad_delta CE(target | embeds + delta * mask))
                   delta_t <- delta_t * min(1, eps_abs / ||delta_t||_2)   (per token)

``init="suffix"`` instead appends ``suffix_length`` "!" tokens and perturbs only their
embeddings; with ``norm: none`` this is the unbounded adversarial-suffix variant.

The step size: the official code uses lr 1e-4 for d = 4096 embeddings at eps 0.05. A sign step
moves a token by lr * sqrt(d), so the same budget on a small model needs a larger lr. By default
(``lr=None``) lr = 1.5 * eps_abs / (steps * sqrt(d)): all steps together can cross the ball
1.5 times. For an unbounded suffix, eps_abs is replaced by twice the mean embedding norm.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robustbench_cl.attacks.base import Cost, report_step, require_int, require_number
from robustbench_cl.attacks.jailbreak import JailbreakAttack, JailbreakResult
from robustbench_cl.errors import UserError
from robustbench_cl.registry import register_attack


@register_attack("embedding")
class EmbeddingAttack(JailbreakAttack):
    """Continuous embedding attack: sign steps, per-token L2 ball relative to the mean norm.

    Args:
        steps: signed-gradient steps.
        lr: the step size; `None` derives it from eps (the resolved settings show the value).
        init: `instruction` perturbs the request's own token embeddings; `suffix` appends
            `suffix_length` "!" tokens and perturbs only those.
        suffix_length: tokens of the perturbed suffix (with `init: suffix`).
        keep_best: return each prompt's best iterate (lowest target loss), not the last.
    """

    name = "embedding"
    norms = frozenset({"l2", "none"})
    spaces = frozenset({"embedding"})

    def __init__(
        self,
        steps: int = 10,
        lr: float | None = None,
        init: str = "instruction",
        suffix_length: int = 20,
        keep_best: bool = True,
    ) -> None:
        require_int("embedding.steps", steps)
        require_int("embedding.suffix_length", suffix_length)
        if lr is not None:
            require_number("embedding.lr", lr)
        if init not in ("instruction", "suffix"):
            raise UserError("embedding.init", f"unknown init {init!r}", "use instruction or suffix")
        self.steps = steps
        self.lr = lr
        self.init = init
        self.suffix_length = suffix_length
        self.keep_best = keep_best

    def step_size(self, eps_abs: float | None, scale: float, dim: int) -> float:
        if self.lr is not None:
            return self.lr
        reach = eps_abs if eps_abs is not None else 2.0 * scale
        return 1.5 * reach / (self.steps * math.sqrt(dim))

    def resolved(self, lm, threat) -> dict[str, Any]:  # noqa: ANN001
        scale = lm.embedding_scale
        eps_abs = threat.absolute_eps(scale) if threat.norm != "none" else None
        dim = lm.embedding_matrix.shape[1]
        return {
            "embedding_scale": scale,
            "eps_abs": eps_abs,
            "lr": self.step_size(eps_abs, scale, dim),
        }

    def _run(self, lm, instructions, targets, threat, generator) -> JailbreakResult:  # noqa: ANN001
        suffix = None
        if self.init == "suffix":
            bang = lm.tokenizer("!", add_special_tokens=False)["input_ids"][0]
            suffix = torch.full((len(instructions), self.suffix_length), bang, dtype=torch.long)
        batch = lm.layout(instructions, targets, suffix)
        region = batch.suffix if self.init == "suffix" else batch.instruction
        resolved = self.resolved(lm, threat)
        scale, lr = resolved["embedding_scale"], resolved["lr"]
        with torch.no_grad():
            clean = lm.embed(batch.ids)
        # delta lives in float32 (projected there) even for a bf16/fp16 model: the ball is exact
        mask = region.unsqueeze(-1).float()
        delta = torch.zeros_like(clean, dtype=torch.float32, requires_grad=True)
        best_loss = torch.full((len(batch),), float("inf"), device=clean.device)
        best_delta = torch.zeros_like(delta)
        history = []
        for step in range(self.steps):
            report_step(step, self.steps)
            logits = lm.logits(clean + (delta * mask).to(clean.dtype), batch)
            loss = lm.target_loss(logits, batch)
            if self.keep_best:
                with torch.no_grad():
                    improved = loss < best_loss
                    best_loss = torch.where(improved, loss, best_loss)
                    best_delta = torch.where(improved[:, None, None], delta, best_delta)
            history.append(loss.detach().mean())
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            with torch.no_grad():
                delta -= lr * grad.sign() * mask
                delta.copy_(threat.project(delta, scale) * mask)
        with torch.no_grad():
            logits = lm.logits(clean + (delta * mask).to(clean.dtype), batch)
            loss = lm.target_loss(logits, batch)
            if self.keep_best:
                improved = loss < best_loss
                delta = torch.where(improved[:, None, None], delta, best_delta)
            # the ball is checked on the float32 perturbation; the model sees it in its dtype
            threat.check(delta * mask, torch.zeros_like(delta), embedding_scale=scale)
            adversarial = clean + (delta * mask).to(clean.dtype)
            logits = lm.logits(adversarial, batch)
            final = lm.target_loss(logits, batch)
            forced = lm.forced(logits, batch)
        n = len(batch)
        cost = Cost(forward=n * (self.steps + 2), backward=n * self.steps, queries=0)
        return JailbreakResult(
            adversarial.detach(),
            batch,
            forced,
            final,
            cost,
            history=torch.stack(history).tolist() if history else [],
        )
