"""scikit-learn's handwritten digits: 1,797 real 8x8 grey images, upscaled, in [0, 1].

The split is fixed (stratified 80/20, seed 0), so every model and every run sees the same
test set. Images are upscaled bilinearly to ``size`` x ``size`` (16 by default).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from robustbench_cl.data.base import TensorData
from robustbench_cl.registry import register_dataset

DIGITS_SIZE = 16


@lru_cache(maxsize=4)
def _digits(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    indices = list(range(len(labels)))
    train_idx, test_idx = train_test_split(
        indices, test_size=0.2, random_state=0, stratify=bunch.target
    )
    chosen = torch.tensor(train_idx if split == "train" else test_idx)
    x = images[chosen].unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).contiguous(), labels[chosen].contiguous()


@register_dataset("digits")
def digits(split: str = "test", size: int = DIGITS_SIZE) -> TensorData:
    """scikit-learn digits (real handwriting, 10 classes), 1x16x16 in [0, 1]."""
    x, y = _digits(split, size)
    return TensorData(name="digits", split=split, x=x.clone(), y=y.clone(), n_classes=10)
