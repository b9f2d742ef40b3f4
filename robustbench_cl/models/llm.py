"""Causal chat language models behind one interface, for embedding and token attacks.

:class:`ChatLM` wraps a transformers causal LM and its tokenizer. It lays a batch out as
``[left padding][chat prefix][instruction][suffix][chat suffix][target][right padding]``, so
every prompt ends at the same column and the target starts there; masks mark the instruction,
the suffix and the target tokens. Attacks work on ``inputs_embeds``; nothing here assumes a
device (the model's own device is used, and ``device_map`` from ``hf:DIR`` is respected).

Specs:

- ``builtin:tiny-chat-lm``: a 4-layer Llama-architecture model from a transformers config, a
  byte-level BPE tokenizer trained with ``tokenizers`` on the synthetic chat corpus
  (:mod:`robustbench_cl.data.chat`), and a few minutes of supervised fine-tuning on a CPU.
  Nothing is downloaded; the result is cached as safetensors.
- ``hf:DIR[?device_map=auto&dtype=bfloat16]``: any local causal LM saved with
  ``save_pretrained`` (weights must be safetensors), with its tokenizer's chat template.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.errors import UserError
from robustbench_cl.registry import register_model
from robustbench_cl.utils import cache_file, seeded, stable_hash

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>"
    "{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_PLACEHOLDER = "\x00INSTRUCTION\x00"


@dataclass
class ChatBatch:
    """A laid-out batch. All tensors are (B, L) on the model's device."""

    ids: torch.Tensor
    attention: torch.Tensor  # 1 for real tokens, 0 for padding
    instruction: torch.Tensor  # bool: the user's instruction tokens
    suffix: torch.Tensor  # bool: the adversarial suffix tokens (empty without a suffix)
    target: torch.Tensor  # bool: the target tokens
    prompt_length: int  # the column where the target starts (= the assistant turn)

    @property
    def positions(self) -> torch.Tensor:
        return (self.attention.cumsum(1) - 1).clamp_min(0)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def select(self, index: torch.Tensor) -> ChatBatch:
        return ChatBatch(
            self.ids[index],
            self.attention[index],
            self.instruction[index],
            self.suffix[index],
            self.target[index],
            self.prompt_length,
        )


class ChatLM(nn.Module):
    """A causal chat LM, its tokenizer and the layout used by the LLM attacks."""

    def __init__(self, model: nn.Module, tokenizer, name: str = "chat-lm") -> None:  # noqa: ANN001
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._template: tuple[list[int], list[int]] | None = None
        self._scale: float | None = None

    # ---------------------------------------------------------------- basic properties
    @property
    def device(self) -> torch.device:
        return self.embedding_matrix.device

    @property
    def embedding_matrix(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    @property
    def embedding_scale(self) -> float:
        """The mean L2 norm of the token-embedding rows (eps is relative to it)."""
        if self._scale is None:
            self._scale = float(self.embedding_matrix.detach().float().norm(dim=1).mean())
        return self._scale

    def reset_scale(self) -> None:
        """Forget the cached embedding scale (after training changed the embeddings)."""
        self._scale = None

    @property
    def eos_id(self) -> int:
        end = self.tokenizer.convert_tokens_to_ids("<|end|>")
        if isinstance(end, int) and end != self.tokenizer.unk_token_id and end is not None:
            return end
        return self.tokenizer.eos_token_id

    def allowed_tokens(self, ascii_only: bool = False) -> torch.Tensor:
        """(V,) bool: ordinary vocabulary tokens a suffix may use (no special tokens); with
        ``ascii_only``, only those whose text is printable ASCII (nanoGCG's and llm-attacks'
        default: a suffix a user can type and paste)."""
        vocab = self.embedding_matrix.shape[0]
        allowed = torch.zeros(vocab, dtype=torch.bool)
        allowed[: len(self.tokenizer)] = True
        for token_id in self.tokenizer.all_special_ids:
            if token_id < vocab:
                allowed[token_id] = False
        if ascii_only:
            if getattr(self, "_printable", None) is None:
                texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
                printable = torch.zeros(vocab, dtype=torch.bool)
                printable[: len(texts)] = torch.tensor(
                    [t.isascii() and t.isprintable() and t != "" for t in texts]
                )
                self._printable = printable
            allowed &= self._printable
        return allowed.to(self.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    # ---------------------------------------------------------------- layout
    def template_parts(self) -> tuple[list[int], list[int]]:
        """Token ids before and after the user's instruction in the chat template."""
        if self._template is None:
            if getattr(self.tokenizer, "chat_template", None):
                text = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": _PLACEHOLDER}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            else:  # a plain LM without a chat template: "User: ...\nAssistant:"
                text = f"User: {_PLACEHOLDER}\nAssistant:"
            before, _, after = text.partition(_PLACEHOLDER)
            self._template = (self._tokens(before), self._tokens(after))
        return self._template

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def layout(
        self,
        instructions: list[str],
        targets: list[str] | None = None,
        suffix: torch.Tensor | None = None,
    ) -> ChatBatch:
        """Lay out a batch. ``suffix`` is (B, S) token ids placed after the instruction."""
        before, after = self.template_parts()
        prompts, spans = [], []
        for instruction in instructions:
            tokens = self._tokens(instruction)
            prompts.append(before + tokens)
            spans.append((len(before), len(before) + len(tokens)))
        n_suffix = 0 if suffix is None else suffix.shape[1]
        width = max(len(p) for p in prompts) + n_suffix + len(after)
        target_tokens = [self._tokens(t) for t in targets] if targets is not None else []
        target_width = max((len(t) for t in target_tokens), default=0)
        pad = self.tokenizer.pad_token_id
        rows, attention, instruction_mask, target_mask = [], [], [], []
        for i, prompt in enumerate(prompts):
            left = width - len(prompt) - n_suffix - len(after)
            target = target_tokens[i] if target_tokens else []
            right = target_width - len(target)
            suffix_ids = [0] * n_suffix  # filled from the tensor below
            rows.append([pad] * left + prompt + suffix_ids + after + target + [pad] * right)
            attention.append([0] * left + [1] * (width - left) + [1] * len(target) + [0] * right)
            mask = [False] * (width + target_width)
            for column in range(left + spans[i][0], left + spans[i][1]):
                mask[column] = True
            instruction_mask.append(mask)
            target_mask.append(
                [False] * width + [True] * len(target) + [False] * right
                if target_tokens
                else [False] * width
            )
        device = self.device
        ids = torch.tensor(rows, dtype=torch.long, device=device)
        suffix_mask = torch.zeros_like(ids, dtype=torch.bool)
        if suffix is not None:
            start = width - len(after) - n_suffix
            ids[:, start : start + n_suffix] = suffix.to(device)
            suffix_mask[:, start : start + n_suffix] = True
        return ChatBatch(
            ids,
            torch.tensor(attention, dtype=torch.long, device=device),
            torch.tensor(instruction_mask, dtype=torch.bool, device=device),
            suffix_mask,
            torch.tensor(target_mask, dtype=torch.bool, device=device),
            width,
        )

    def suffix_columns(self, batch: ChatBatch, length: int) -> slice:
        after = len(self.template_parts()[1])
        return slice(batch.prompt_length - after - length, batch.prompt_length - after)

    # ---------------------------------------------------------------- forward
    def logits(self, embeds: torch.Tensor, batch: ChatBatch) -> torch.Tensor:
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=batch.attention,
            position_ids=batch.positions,
            use_cache=False,
        )
        return out.logits

    def forward(self, embeds: torch.Tensor, batch: ChatBatch) -> torch.Tensor:  # noqa: D102
        return self.logits(embeds, batch)

    @torch.no_grad()
    def prefix_states(
        self, embeds: torch.Tensor, batch: ChatBatch, stop: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The keys and values of every layer for columns ``[0, stop)`` (what precedes an
        attacked suffix), or None where the model keeps no standard per-layer cache."""
        out = self.model(
            inputs_embeds=embeds[:, :stop],
            attention_mask=batch.attention[:, :stop],
            position_ids=batch.positions[:, :stop],
            use_cache=True,
        )
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        layers = getattr(cache, "layers", None)
        if not layers or any(not hasattr(layer, "keys") for layer in layers):
            return None
        return [(layer.keys, layer.values) for layer in layers]

    def logits_after(
        self,
        embeds: torch.Tensor,
        batch: ChatBatch,
        start: int,
        states: list[tuple[torch.Tensor, torch.Tensor]],
        rows: torch.Tensor | None = None,
        keep_cache: bool = False,
    ) -> Any:
        """Logits of columns ``[start, L)`` given :meth:`prefix_states` up to ``start`` (of the
        prefix rows ``rows``, one per row of ``embeds``). A fresh cache per call: a reused one
        is appended to in place (transformers 5), and the "prefix" would grow every step.
        ``keep_cache``: also the keys and values of every column, ``[(keys, values)]`` per
        layer (detached)."""
        from transformers import DynamicCache

        picked = states if rows is None else [(k[rows], v[rows]) for k, v in states]
        cache = DynamicCache(ddp_cache_data=picked)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=batch.attention,
            position_ids=batch.positions[:, start:],
            cache=cache,
            use_cache=True,
        )
        if not keep_cache:
            return out.logits
        layers = (getattr(out, "cache", None) or cache).layers
        return out.logits, [(layer.keys.detach(), layer.values.detach()) for layer in layers]

    @staticmethod
    def token_logprobs(
        logits: torch.Tensor, batch: ChatBatch, shifted: bool = False
    ) -> torch.Tensor:
        """(B, L) log-probability of each token given the ones before it (0 where not target).
        ``shifted``: ``logits`` has no column for the last token (a pass that did not feed it,
        since it predicts nothing)."""
        predicted = (logits if shifted else logits[:, :-1]).float().log_softmax(-1)
        chosen = predicted.gather(-1, batch.ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        mask = batch.target[:, 1:]
        out = torch.zeros_like(batch.ids, dtype=chosen.dtype)
        out[:, 1:] = torch.where(mask, chosen, torch.zeros_like(chosen))
        return out

    @staticmethod
    def target_loss(logits: torch.Tensor, batch: ChatBatch, shifted: bool = False) -> torch.Tensor:
        """(B,) mean cross-entropy of the target tokens under teacher forcing."""
        logprobs = ChatLM.token_logprobs(logits, batch, shifted)
        count = batch.target.sum(1).clamp_min(1)
        return -logprobs.sum(1) / count

    @staticmethod
    def forced(logits: torch.Tensor, batch: ChatBatch, shifted: bool = False) -> torch.Tensor:
        """(B,) bool: the greedy teacher-forced prediction equals every target token."""
        predicted = (logits if shifted else logits[:, :-1]).argmax(-1)
        match = (predicted == batch.ids[:, 1:]) | ~batch.target[:, 1:]
        return match.all(1) & batch.target.any(1)

    @torch.no_grad()
    def generate(
        self, embeds: torch.Tensor, batch: ChatBatch, max_new_tokens: int = 24
    ) -> list[str]:
        """Greedy continuation of the prompt part (columns before the target) of ``embeds``."""
        prompt = embeds[:, : batch.prompt_length]
        attention = batch.attention[:, : batch.prompt_length]
        positions = (attention.cumsum(1) - 1).clamp_min(0)
        out = self.model(
            inputs_embeds=prompt, attention_mask=attention, position_ids=positions, use_cache=True
        )
        cache = out.cache
        tokens = []
        finished = torch.zeros(len(batch), dtype=torch.bool, device=embeds.device)
        next_position = positions[:, -1:] + 1
        for _ in range(max_new_tokens):
            token = out.logits[:, -1].argmax(-1)
            token = torch.where(finished, torch.full_like(token, self.eos_id), token)
            tokens.append(token)
            finished |= token == self.eos_id
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], 1)
            out = self.model(
                inputs_embeds=self.embed(token[:, None]),
                attention_mask=attention,
                position_ids=next_position,
                cache=cache,
                use_cache=True,
            )
            cache = out.cache
            next_position = next_position + 1
        rows = torch.stack(tokens, 1).tolist() if tokens else [[] for _ in range(len(batch))]
        texts = []
        for row in rows:
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    @torch.no_grad()
    def score_texts(
        self, messages: list[str], targets: list[str], chunk: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, forced) of each user message sent as text with its target, in batches."""
        losses, hits = [], []
        for begin in range(0, len(messages), chunk):
            batch = self.layout(messages[begin : begin + chunk], targets[begin : begin + chunk])
            logits = self.logits(self.embed(batch.ids), batch)
            losses.append(self.target_loss(logits, batch))
            hits.append(self.forced(logits, batch))
        return torch.cat(losses), torch.cat(hits)

    def respond(self, instructions: list[str], max_new_tokens: int = 24) -> list[str]:
        """Greedy answers to plain instructions (no attack)."""
        batch = self.layout(instructions)
        return self.generate(self.embed(batch.ids), batch, max_new_tokens)


# -------------------------------------------------------------------- the built-in model
TINY_CHAT_RECIPE = {
    "hidden": 128,
    "layers": 4,
    "heads": 4,
    "intermediate": 352,
    "vocab": 640,
    "corpus": 6000,
    "steps": 1200,
    "batch": 64,
    "documents": 16,
    "document_weight": 0.5,
    "lr": 3e-3,
    "seed": 0,
}


def build_tokenizer(texts: list[str], vocab_size: int):  # noqa: ANN201
    """A byte-level BPE tokenizer trained on ``texts``, with the chat template and specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tiny_llama(vocab_size: int, recipe: dict[str, Any]) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=recipe["hidden"],
        intermediate_size=recipe["intermediate"],
        num_hidden_layers=recipe["layers"],
        num_attention_heads=recipe["heads"],
        num_key_value_heads=recipe["heads"],
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def sft_loss(lm: ChatLM, instructions: list[str], responses: list[str]) -> torch.Tensor:
    """Mean cross-entropy of the responses (each followed by the end token)."""
    end = lm.tokenizer.convert_ids_to_tokens(lm.eos_id)
    batch = lm.layout(instructions, [r + end for r in responses])
    return lm.target_loss(lm.logits(lm.embed(batch.ids), batch), batch).mean()


def document_loss(lm: ChatLM, texts: list[str]) -> torch.Tensor:
    """Mean next-token cross-entropy of plain documents (no chat template)."""
    bos, end = lm.tokenizer.bos_token_id, lm.eos_id
    rows = [[bos] + lm._tokens(t) + [end] for t in texts]
    width = max(len(r) for r in rows)
    pad = lm.tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=lm.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=lm.device)
    logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    weights = mask[:, 1:].flatten().to(loss.dtype)
    return (loss * weights).sum() / weights.sum()


def train_tiny_chat_lm(
    recipe: dict[str, Any] = TINY_CHAT_RECIPE,
    progress=None,  # noqa: ANN001
    tokenizer=None,  # noqa: ANN001
) -> ChatLM:
    """Tokenizer + Llama config + supervised fine-tuning on the synthetic chat corpus
    (``tokenizer``: reuse one, e.g. the target's for a membership reference model)."""
    from robustbench_cl.data.chat import pretraining_documents, sft_corpus

    with seeded(recipe["seed"]):
        corpus = sft_corpus(recipe["corpus"], seed=recipe["seed"])
        documents = pretraining_documents()
        texts = [f"{e.instruction} {e.response}" for e in corpus.examples] + documents
        if tokenizer is None:
            tokenizer = build_tokenizer(texts, recipe["vocab"])
        model = tiny_llama(len(tokenizer), recipe)
        lm = ChatLM(model, tokenizer, "tiny-chat-lm")
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01)
        steps = recipe["steps"]
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe["lr"], total_steps=steps, pct_start=0.05
        )
        generator = torch.Generator().manual_seed(recipe["seed"])
        examples = corpus.examples
        model.train()
        start = time.perf_counter()
        for step in range(steps):
            index = torch.randint(len(examples), (recipe["batch"],), generator=generator).tolist()
            chosen = [examples[i] for i in index]
            loss = sft_loss(lm, [e.instruction for e in chosen], [e.response for e in chosen])
            index = torch.randint(len(documents), (recipe["documents"],), generator=generator)
            loss = loss + recipe["document_weight"] * document_loss(
                lm, [documents[i] for i in index.tolist()]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            if step % 200 == 0:
                logger.info("tiny-chat-lm step %d loss %.3f", step, float(loss.detach()))
        logger.info("tiny-chat-lm trained in %.1f s", time.perf_counter() - start)
        model.eval()
        return lm


def _quiet_transformers() -> None:
    """No per-file progress bars or advice from transformers in our CLI output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def tiny_chat_lm_path() -> Path:
    """Where the built-in chat model is cached (named by its recipe)."""
    return cache_file("models", f"tiny-chat-lm-{stable_hash(TINY_CHAT_RECIPE, 8)}")


def _cached_tiny_chat_lm() -> ChatLM:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    _quiet_transformers()

    from robustbench_cl.models.artifacts import artifact_lock

    path = tiny_chat_lm_path()
    with artifact_lock(path):
        if not (path / "model.safetensors").exists():
            logger.info("training builtin:tiny-chat-lm (first use; cached afterwards)")
            lm = train_tiny_chat_lm()
            save_chat_lm(lm, path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    model = LlamaForCausalLM.from_pretrained(str(path), local_files_only=True)
    return ChatLM(model.eval(), tokenizer, "tiny-chat-lm")


def save_chat_lm(lm: ChatLM, path: Path) -> None:
    """Save model (safetensors) and tokenizer so that ``hf:PATH`` loads them back."""
    tmp = Path(f"{path}.{os.getpid()}.tmp")
    lm.model.save_pretrained(str(tmp), safe_serialization=True)
    lm.tokenizer.save_pretrained(str(tmp))
    os.replace(tmp, path) if not path.exists() else _replace_dir(tmp, path)


def _replace_dir(tmp: Path, path: Path) -> None:
    import shutil

    shutil.rmtree(path)
    os.replace(tmp, path)


@register_model("tiny-chat-lm")
def tiny_chat_lm() -> nn.Module:
    """A 4-layer Llama chat model SFT-aligned to refuse harmful requests (trained on first use)."""
    return _cached_tiny_chat_lm()


#: the membership reference of tiny-chat-lm: its recipe and tokenizer, another corpus draw
TINY_CHAT_REFERENCE_RECIPE = dict(TINY_CHAT_RECIPE, seed=1, tokenizer="tiny-chat-lm")


def tiny_chat_lm_reference_path(recipe: dict[str, Any] = TINY_CHAT_REFERENCE_RECIPE) -> Path:
    return cache_file("models", f"tiny-chat-lm-reference-{stable_hash(recipe, 8)}")


@register_model("tiny-chat-lm-reference")
def tiny_chat_lm_reference() -> nn.Module:
    """tiny-chat-lm's recipe and tokenizer trained on another draw of its corpus (seed 1): the
    reference model of chat membership inference (shipped; 10 to 25 minutes to retrain on 2 cores)."""
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from robustbench_cl.models.artifacts import artifact_lock

    _quiet_transformers()
    recipe = TINY_CHAT_REFERENCE_RECIPE
    path = tiny_chat_lm_reference_path(recipe)
    with artifact_lock(path):
        if not (path / "model.safetensors").exists():
            logger.info("training builtin:tiny-chat-lm-reference (first use; cached afterwards)")
            target = _cached_tiny_chat_lm()
            training = {k: v for k, v in recipe.items() if k != "tokenizer"}
            save_chat_lm(train_tiny_chat_lm(training, tokenizer=target.tokenizer), path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    model = LlamaForCausalLM.from_pretrained(str(path), local_files_only=True)
    return ChatLM(model.eval(), tokenizer, "tiny-chat-lm-reference")


def hf_model(directory: str, options: dict[str, str]) -> nn.Module:
    """``hf:DIR``: a local causal LM and its tokenizer (safetensors weights, no download).

    Options:
        dtype: the weights' torch dtype, e.g. `bfloat16` (default: the checkpoint's).
        device_map: passed to transformers (e.g. `auto` to spread a large model over devices).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(directory).expanduser()
    if not path.is_dir():
        raise UserError("model", f"hf: directory {directory!r} does not exist", "check the path")
    known = {"device_map", "dtype"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError("model", f"unknown hf option {unknown[0]!r}", f"allowed: {sorted(known)}")
    _quiet_transformers()
    from robustbench_cl.utils import trust_remote_code

    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True}
    if trust_remote_code():  # a local model's own modeling code, as transformers means it
        kwargs["trust_remote_code"] = True
    if "device_map" in options:
        kwargs["device_map"] = options["device_map"]
    if "dtype" in options:
        dtype = getattr(torch, options["dtype"], None)
        if not isinstance(dtype, torch.dtype):
            raise UserError("model", f"unknown dtype {options['dtype']!r}", "use e.g. bfloat16")
        kwargs["dtype"] = dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code()
        )
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            "model", f"cannot load hf:{directory}: {first}", "save it with save_pretrained"
        ) from None
    return ChatLM(model.eval(), tokenizer, path.name)


def unwrap_chat_lm(model: nn.Module) -> ChatLM:
    inner = getattr(model, "model", model)
    if not isinstance(inner, ChatLM):
        raise UserError(
            "model",
            f"{type(inner).__name__} is not a chat language model",
            "use builtin:tiny-chat-lm or hf:DIR",
        )
    return inner


__all__ = ["ChatBatch", "ChatLM", "hf_model"]


def _byte_alphabet() -> dict[str, int]:
    """The inverse of the byte-level BPE alphabet (GPT-2's): each of the 256 bytes is shown as
    one printable character, the printable Latin-1 ones as themselves and the rest shifted
    past 255 in byte order."""
    shown = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    alphabet, extra = {}, 0
    for byte in range(256):
        if byte in shown:
            alphabet[chr(byte)] = byte
        else:
            alphabet[chr(256 + extra)] = byte
            extra += 1
    return alphabet


def _decoder_kind(tokenizer: Any) -> str | None:
    """``byte-level`` (GPT-2 style BPE), ``byte-fallback`` (SentencePiece with ``<0x..>``
    tokens) or None: how a fast tokenizer's tokens map to bytes."""
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (AttributeError, TypeError, ValueError):  # a slow tokenizer: no backend to read
        return None
    kinds: set[str] = set()
    pending = [decoder]
    while pending:  # a Sequence nests its decoders
        node = pending.pop()
        if isinstance(node, dict):
            kinds.add(str(node.get("type")))
            pending += node.get("decoders") or []
    if "ByteLevel" in kinds:
        return "byte-level"
    if "ByteFallback" in kinds:
        return "byte-fallback"
    return None


def readable_text(tokenizer: Any, ids: list[int]) -> str:
    """``ids`` as text for a report: the decoded text when it is valid UTF-8; otherwise the
    tokens' bytes with each byte that is not part of a whole character escaped (``\\xe2``),
    where the plain decode would show replacement characters (a suffix that ends inside a
    multi-byte character). The tokenizer's decoder says how its tokens map to bytes (byte-level
    BPE, or SentencePiece's byte fallback); for any other, the replacement characters of the
    decode are escaped."""
    text = tokenizer.decode(ids)
    if "\ufffd" not in text:
        return text
    kind = _decoder_kind(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    data = bytearray()
    if kind == "byte-level":
        alphabet = _byte_alphabet()
        if not all(c in alphabet for token in tokens for c in token):
            return text.replace("\ufffd", "\\ufffd")
        for token in tokens:
            data.extend(alphabet[c] for c in token)
    elif kind == "byte-fallback":
        for token in tokens:
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                data.append(int(token[3:5], 16))
            else:
                data.extend(token.replace("\u2581", " ").encode("utf-8"))
    else:
        return text.replace("\ufffd", "\\ufffd")
    shown = data.decode("utf-8", errors="backslashreplace")
    if kind == "byte-fallback" and shown.startswith(" ") and not text.startswith(" "):
        shown = shown[1:]  # SentencePiece's decoder drops the word marker of the first piece
    return shown
