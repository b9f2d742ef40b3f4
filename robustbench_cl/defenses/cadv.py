"""C-AdvUL and C-AdvIPO: adversarial training of chat LLMs against continuous embedding attacks
(Xhonneux et al., NeurIPS 2024), and a discrete (GCG-in-the-loop) adversarial training baseline.

Every step attacks a batch of harmful training requests with the embedding attack
(:class:`~robustbench_cl.attacks.embedding.EmbeddingAttack`, parameters frozen during the
attack) and then trains on the attacked prompts:

- **C-AdvUL**: ``L = 0.5 * L_away + 0.5 * L_toward + 1.0 * L_util`` with
  ``L_away = -CE(harmful target | x + delta)`` (cut off at -5: beyond it ``-5 + 0.001 * (-CE)``),
  ``L_toward = CE(refusal | x + delta)`` (cut off at 0.5: below it ``0.5 + 0.001 * CE``) and
  ``L_util`` the supervised loss on clean utility (benign and borderline) chats;
- **C-AdvIPO**: ``L = (h - 1 / (2 beta))^2`` (+ ``utility_weight * L_util``, 0 by default: the
  paper's IPO config has no utility data), with
  ``h = (pi_w - pi_l) - (ref_w - ref_l)``: average per-token log-probabilities of the refusal
  (w) and the harmful target (l) under the attacked prompt, and the same under the frozen
  initial model on the clean prompt (computed once). Away log-probs below -5 are zeroed;
- **discrete AT** (R2D2-like baseline): the C-AdvUL losses, but the adversarial prompts carry a
  GCG suffix kept per behaviour and refined by a few GCG steps each training step.

Full fine-tuning for the built-in model; LoRA (``peft``) for ``hf:`` models (``lora: auto``).
Every forward and backward pass, attack included, is counted per sequence, so the compute of
continuous vs discrete adversarial training is a measured ratio.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_cl.attacks.base import Cost, report_step
from robustbench_cl.attacks.embedding import EmbeddingAttack
from robustbench_cl.attacks.gcg import GCG
from robustbench_cl.data.chat import REFUSAL, ChatData
from robustbench_cl.defenses.base import Defense, _canonical
from robustbench_cl.errors import UserError
from robustbench_cl.models.llm import ChatLM, sft_loss, unwrap_chat_lm
from robustbench_cl.models.wrappers import Frozen
from robustbench_cl.registry import register_defense
from robustbench_cl.threat import ThreatModel
from robustbench_cl.utils import cache_file, seeded, stable_hash

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ the losses
def away_loss(ce: torch.Tensor, cutoff: float = -5.0) -> torch.Tensor:
    """``-CE``, flattened below ``cutoff``: ``cutoff + 0.001 * (-CE)`` once ``-CE < cutoff``."""
    negative = -ce
    return torch.where(negative < cutoff, cutoff + 0.001 * negative, negative)


def toward_loss(ce: torch.Tensor, cutoff: float = 0.5) -> torch.Tensor:
    """``CE``, flattened below ``cutoff``: ``cutoff + 0.001 * CE`` once ``CE < cutoff``."""
    return torch.where(ce < cutoff, cutoff + 0.001 * ce, ce)


def average_logprob(
    token_logprobs: torch.Tensor, mask: torch.Tensor, lower_cutoff: float | None = None
) -> torch.Tensor:
    """(B,) mean per-token log-probability over ``mask``; with ``lower_cutoff``, tokens whose
    log-prob is below it contribute 0 (they still count in the mean)."""
    values = token_logprobs
    if lower_cutoff is not None:
        values = torch.where(values < lower_cutoff, torch.zeros_like(values), values)
    values = torch.where(mask, values, torch.zeros_like(values))
    return values.sum(1) / mask.sum(1).clamp_min(1)


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.25,
) -> torch.Tensor:
    """(B,) IPO: ``(h - 1 / (2 beta))^2`` with ``h`` the policy margin minus the reference one."""
    h = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    return (h - 1.0 / (2.0 * beta)) ** 2


# ------------------------------------------------------------------------------ training
class _ChatAdversarialTraining(Defense):
    """Shared loop: sample, attack, train; cache the weights (or LoRA adapters) as safetensors.

    Args:
        steps: training steps.
        lr: the learning rate.
        adv_batch: harmful requests attacked and trained on per step.
        utility_batch: clean utility chats (benign and borderline) per step.
        eps: the embedding attack's l2 radius per token, relative to the mean token-embedding
            norm.
        attack_steps: steps of the inner embedding attack.
        away_weight: weight of the away loss (minus the harmful target's cross-entropy).
        toward_weight: weight of the toward loss (the refusal's cross-entropy).
        utility_weight: weight of the supervised loss on the utility chats.
        away_cutoff: below this, the away loss flattens (`cutoff + 0.001 * loss`).
        toward_cutoff: below this, the toward loss flattens.
        lora: `auto` (LoRA for `hf:` models, full fine-tuning for built-ins), `true` or `false`.
        lora_rank: the LoRA adapters' rank.
        seed: the training seed.
    """

    kind = "training"
    version = 1
    tasks = frozenset({"jailbreak"})

    def __init__(
        self,
        steps: int = 150,
        lr: float = 5e-4,
        adv_batch: int = 8,
        utility_batch: int = 24,
        eps: float = 0.3,
        attack_steps: int = 10,
        away_weight: float = 0.5,
        toward_weight: float = 0.5,
        utility_weight: float = 1.0,
        away_cutoff: float = -5.0,
        toward_cutoff: float = 0.5,
        lora: str | bool = "auto",
        lora_rank: int = 16,
        seed: int = 0,
    ) -> None:
        if lora not in ("auto", True, False):
            raise UserError(f"{self.name}.lora", f"must be auto, true or false, got {lora!r}")
        self.steps = steps
        self.lr = lr
        self.adv_batch = adv_batch
        self.utility_batch = utility_batch
        self.eps = eps
        self.attack_steps = attack_steps
        self.away_weight = away_weight
        self.toward_weight = toward_weight
        self.utility_weight = utility_weight
        self.away_cutoff = away_cutoff
        self.toward_cutoff = toward_cutoff
        self.lora = lora
        self.lora_rank = lora_rank
        self.seed = seed
        self.training_info: dict[str, Any] = {}

    def settings(self) -> dict[str, Any]:
        return {
            k: v for k, v in vars(self).items() if not k.startswith("_") and k != "training_info"
        }

    def threat(self) -> ThreatModel:
        return ThreatModel(
            norm="l2", eps=self.eps, space="embedding", bounds=None, eps_relative=True
        )

    def chat_cache_path(
        self, model_spec: str, data: ChatData, weights_digest: str | None = None
    ) -> Path:
        """Keyed by the defense, its settings, the model spec *and its weights* (a retrained
        builtin keeps its spec) and the training data."""
        key = stable_hash(
            {
                "defense": self.name,
                "version": self.version,
                "settings": _canonical(self.settings()),
                "model": model_spec,
                "weights": weights_digest,
                "data": stable_hash([vars(e) for e in data.examples]),
            }
        )
        return cache_file("defenses", f"{self.name}-{key}")

    def uses_lora(self, model_spec: str) -> bool:
        return self.lora is True or (self.lora == "auto" and not model_spec.startswith("builtin:"))

    def build(self, model: Frozen, model_spec: str, data: ChatData) -> nn.Module:  # type: ignore[override]
        from robustbench_cl.models.artifacts import artifact_lock

        base = unwrap_chat_lm(model)
        path = self.chat_cache_path(model_spec, data, getattr(model, "recorded_hash", None))
        weights = path / "weights.safetensors"
        with artifact_lock(path):
            if not (weights.exists() and (path / "info.json").exists()):
                logger.info("training %s on %s; cached at %s", self.name, model_spec, path)
                trained, info = self.train(base, data, lora=self.uses_lora(model_spec))
                self._save(trained, info, path)
        return Frozen(self._load(base, path))

    # -------------------------------------------------------------- save / load
    def _save(self, lm: ChatLM, info: dict[str, Any], path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        model = lm.model
        if info["lora"]:
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(model)
        else:
            state = model.state_dict()
        # clone: tied weights share memory, which safetensors refuses
        state = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
        tmp = path / "weights.safetensors.tmp"
        save_file(state, str(tmp))
        (path / "info.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        tmp.replace(path / "weights.safetensors")

    def _load(self, base: ChatLM, path: Path) -> ChatLM:
        from safetensors.torch import load_file

        info = json.loads((path / "info.json").read_text())
        self.training_info = info
        state = load_file(str(path / "weights.safetensors"))
        model = copy.deepcopy(base.model)
        if info["lora"]:
            from peft import get_peft_model, set_peft_model_state_dict

            model = get_peft_model(model, self._lora_config())
            set_peft_model_state_dict(model, {k: v.to(base.device) for k, v in state.items()})
            model = model.merge_and_unload()
        else:
            model.load_state_dict(state)
        return ChatLM(model.eval(), base.tokenizer, f"{base.name}+{self.name}")

    def _lora_config(self):  # noqa: ANN202
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_rank,
            lora_alpha=self.lora_rank // 4 or 1,
            lora_dropout=0.0,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )

    # -------------------------------------------------------------- the loop
    def train(self, base: ChatLM, data: ChatData, lora: bool) -> tuple[ChatLM, dict[str, Any]]:
        with seeded(self.seed):
            generator = torch.Generator().manual_seed(self.seed)
            model = copy.deepcopy(base.model)
            if lora:
                from peft import get_peft_model

                model = get_peft_model(model, self._lora_config())
            else:
                model.requires_grad_(True)
            lm = ChatLM(model, base.tokenizer, base.name)
            harmful = data.of("harmful")
            utility = data.of("benign") + data.of("borderline")
            if not harmful:
                raise UserError(
                    "jailbreak.data", "the defense's training data has no harmful requests"
                )
            self.prepare(base, harmful)
            parameters = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=0.0)
            attack_cost, train_cost = Cost(), Cost()
            history: list[dict[str, float]] = []
            start = time.perf_counter()
            model.train()
            for step in range(self.steps):
                report_step(step, self.steps)
                chosen = _sample(harmful, self.adv_batch, generator)
                useful = _sample(utility, self.utility_batch, generator) if utility else []
                lm.reset_scale()
                model.eval()  # attack the model as it is (no dropout)
                adversarial = self.attack(lm, chosen, generator)
                model.train()
                attack_cost = attack_cost + adversarial["cost"]
                losses = self.loss(lm, chosen, useful, adversarial)
                total = losses.pop("total")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                sequences = losses.pop("sequences")
                train_cost = train_cost + Cost(forward=sequences, backward=sequences)
                if step % 10 == 0 or step == self.steps - 1:
                    history.append({"step": step, **{k: float(v) for k, v in losses.items()}})
            model.eval()
            wall = time.perf_counter() - start
            info = {
                "defense": self.name,
                "settings": self.settings(),
                "lora": lora,
                "wall_time": wall,
                "cost": {
                    "attack": attack_cost.to_dict(),
                    "training": train_cost.to_dict(),
                    "forward": attack_cost.forward + train_cost.forward,
                    "backward": attack_cost.backward + train_cost.backward,
                },
                "history": history,
                "train_behaviours": sorted({e.behavior for e in harmful}),
            }
            return lm, info

    def prepare(self, base: ChatLM, harmful: list) -> None:  # noqa: ANN001
        """Hook run once before training (C-AdvIPO's reference log-probabilities)."""

    def attack(self, lm: ChatLM, chosen: list, generator: torch.Generator) -> dict[str, Any]:  # noqa: ANN001
        attack = EmbeddingAttack(steps=self.attack_steps, keep_best=False)
        result = attack.run(
            lm,
            [e.instruction for e in chosen],
            [e.target for e in chosen],
            self.threat(),
            generator,
        )
        with torch.no_grad():
            clean = lm.embed(result.batch.ids)
        delta = (result.embeds - clean).detach()[:, : result.batch.prompt_length]
        return {"delta": delta, "suffix": None, "cost": result.cost}

    def _attacked(self, lm: ChatLM, chosen: list, targets: list[str], adversarial) -> tuple:  # noqa: ANN001
        """Logits of ``targets`` after the attacked prompts (delta or suffix re-applied)."""
        batch = lm.layout([e.instruction for e in chosen], targets, adversarial["suffix"])
        embeds = _with_delta(lm.embed(batch.ids), adversarial["delta"])
        return lm.logits(embeds, batch), batch

    def _utility(self, lm: ChatLM, useful: list) -> torch.Tensor:  # noqa: ANN001
        if not useful or self.utility_weight == 0:
            return torch.zeros((), device=lm.device)
        return sft_loss(lm, [e.instruction for e in useful], [e.response for e in useful])

    def loss(self, lm, chosen, useful, adversarial) -> dict[str, torch.Tensor]:  # noqa: ANN001
        """C-AdvUL (and discrete AT): away + toward on the attacked prompts + utility."""
        end = lm.tokenizer.convert_ids_to_tokens(lm.eos_id)
        logits, batch = self._attacked(lm, chosen, [e.target for e in chosen], adversarial)
        away = away_loss(lm.target_loss(logits, batch).mean(), self.away_cutoff)
        logits, batch = self._attacked(lm, chosen, [REFUSAL + end] * len(chosen), adversarial)
        toward = toward_loss(lm.target_loss(logits, batch).mean(), self.toward_cutoff)
        utility = self._utility(lm, useful)
        total = (
            self.away_weight * away + self.toward_weight * toward + self.utility_weight * utility
        )
        used = len(useful) if self.utility_weight else 0
        return {
            "total": total,
            "away": away.detach(),
            "toward": toward.detach(),
            "utility": utility.detach(),
            "sequences": 2 * len(chosen) + used,
        }


def _with_delta(embeds: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
    """Add a prompt-columns perturbation (B, P, d) to embeddings of a longer layout (B, L, d):
    the prompt part of a layout depends only on the instructions, so it lines up."""
    if delta is None:
        return embeds
    pad = embeds.new_zeros(len(embeds), embeds.shape[1] - delta.shape[1], embeds.shape[2])
    return embeds + torch.cat([delta, pad], 1)


def _sample(items: list, n: int, generator: torch.Generator) -> list:  # noqa: ANN001
    index = torch.randint(len(items), (n,), generator=generator).tolist()
    return [items[i] for i in index]


@register_defense("cadv-ul")
class CAdvUL(_ChatAdversarialTraining):
    """C-AdvUL: unlikelihood adversarial training against continuous embedding attacks."""

    name = "cadv-ul"


@register_defense("cadv-ipo")
class CAdvIPO(_ChatAdversarialTraining):
    """C-AdvIPO: IPO preference training on embedding-attacked prompts (no utility data).

    Args:
        away_cutoff: per-token log-probabilities of the harmful target below it count as 0 in
            their average (IPO's rejected side).
        away_weight: not used by C-AdvIPO (its loss has no away term).
        toward_weight: not used by C-AdvIPO (its loss has no toward term).
        toward_cutoff: not used by C-AdvIPO.
        beta: IPO's beta: the target margin is `1 / (2 beta)`.
        utility_weight: weight of the utility loss (0: the paper's IPO config has no utility
            data).
    """

    name = "cadv-ipo"

    def __init__(self, beta: float = 0.25, utility_weight: float = 0.0, **kwargs: Any) -> None:
        super().__init__(utility_weight=utility_weight, **kwargs)
        self.beta = beta
        self._reference: dict[str, tuple[float, float]] = {}

    def prepare(self, base: ChatLM, harmful: list) -> None:  # noqa: ANN001
        """Reference log-probs of refusal and target under the initial model, clean prompts."""
        end = base.tokenizer.convert_ids_to_tokens(base.eos_id)
        instructions = sorted({e.instruction for e in harmful})
        targets = {e.instruction: e.target for e in harmful}
        with torch.no_grad():
            for start in range(0, len(instructions), 64):
                chunk = instructions[start : start + 64]
                chosen = self._logps(base, chunk, [REFUSAL + end] * len(chunk), None, None)
                rejected = self._logps(
                    base, chunk, [targets[i] for i in chunk], None, self.away_cutoff
                )
                for i, instruction in enumerate(chunk):
                    self._reference[instruction] = (float(chosen[i]), float(rejected[i]))

    @staticmethod
    def _logps(lm, instructions, targets, adversarial, cutoff) -> torch.Tensor:  # noqa: ANN001
        batch = lm.layout(instructions, targets, None)
        embeds = lm.embed(batch.ids)
        if adversarial is not None:
            embeds = _with_delta(embeds, adversarial["delta"])
        logprobs = lm.token_logprobs(lm.logits(embeds, batch), batch)
        return average_logprob(logprobs, batch.target, cutoff)

    def loss(self, lm, chosen, useful, adversarial) -> dict[str, torch.Tensor]:  # noqa: ANN001
        end = lm.tokenizer.convert_ids_to_tokens(lm.eos_id)
        instructions = [e.instruction for e in chosen]
        policy_w = self._logps(lm, instructions, [REFUSAL + end] * len(chosen), adversarial, None)
        policy_l = self._logps(
            lm, instructions, [e.target for e in chosen], adversarial, self.away_cutoff
        )
        reference = torch.tensor([self._reference[i] for i in instructions], device=policy_w.device)
        ipo = ipo_loss(policy_w, policy_l, reference[:, 0], reference[:, 1], self.beta).mean()
        utility = self._utility(lm, useful)
        used = len(useful) if self.utility_weight else 0
        return {
            "total": ipo + self.utility_weight * utility,
            "ipo": ipo.detach(),
            "utility": utility.detach(),
            "sequences": 2 * len(chosen) + used,
        }


@register_defense("discrete-at")
class DiscreteAT(_ChatAdversarialTraining):
    """Discrete adversarial training baseline: C-AdvUL's losses on GCG-suffixed prompts.

    Args:
        eps: not used (the adversarial prompts carry GCG suffixes, not embedding perturbations).
        attack_steps: not used (`gcg_steps` is the attack's budget).
        gcg_steps: GCG steps refining each behaviour's kept suffix per training step.
        suffix_length: tokens of the GCG suffix.
        candidates: GCG candidates per step.
    """

    name = "discrete-at"

    def __init__(
        self, gcg_steps: int = 5, suffix_length: int = 10, candidates: int = 64, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.gcg_steps = gcg_steps
        self.suffix_length = suffix_length
        self.candidates = candidates
        self._suffixes: dict[str, torch.Tensor] = {}

    def prepare(self, base: ChatLM, harmful: list) -> None:  # noqa: ANN001
        self._suffixes = {}  # every training run starts from fresh suffixes

    def attack(self, lm: ChatLM, chosen: list, generator: torch.Generator) -> dict[str, Any]:  # noqa: ANN001
        gcg = GCG(
            steps=self.gcg_steps,
            suffix_length=self.suffix_length,
            candidates=self.candidates,
            # training consumes the ids, as R2D2 does; and the recipe's cached models stay valid
            filter_retokenization=False,
            prefix_cache=False,
            allow_non_ascii=True,
        )
        start = [self._suffixes.get(e.behavior) for e in chosen]
        threat = ThreatModel(norm="none", eps=0, space="token", bounds=None)
        result = gcg.run(
            lm,
            [e.instruction for e in chosen],
            [e.target for e in chosen],
            threat,
            generator,
            initial_suffix=start,
        )
        suffix = result.suffix_ids.detach()
        for example, row in zip(chosen, suffix):
            self._suffixes[example.behavior] = row  # persistent per behaviour, as in R2D2
        return {"delta": None, "suffix": suffix, "cost": result.cost}
