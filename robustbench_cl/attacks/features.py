"""A vision-language model's image and text features, in chunks, without gradients."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def encode_texts(model: nn.Module, texts: list[str], chunk: int = 512) -> torch.Tensor:
    """A VLP model's text features of ``texts``, in chunks, without gradients."""
    texts = list(texts)
    return torch.cat([model.encode_text(texts[i : i + chunk]) for i in range(0, len(texts), chunk)])


@torch.no_grad()
def encode_images(model: nn.Module, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """A VLP model's image features, in chunks, without gradients."""
    return torch.cat([model.encode_image(x) for x in images.split(chunk)])
