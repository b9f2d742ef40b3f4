"""A dataset as two tensors, and the name -> dataset entry point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robustbench_cl.errors import UserError
from robustbench_cl.registry import DATASETS


@dataclass(frozen=True)
class TensorData:
    """Inputs ``x`` (N, ...) in ``bounds`` and integer labels ``y`` (N,)."""

    name: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    n_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def tensors(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` samples (all when ``None``); the order is fixed, so it is reproducible."""
        if n is not None and n < 1:
            raise UserError("data.n", f"must be >= 1, got {n}")
        end = len(self) if n is None else min(n, len(self))
        return self.x[:end], self.y[:end]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def rows(self, start: int, end: int) -> torch.Tensor:
        """Inputs ``start:end`` (a view: this dataset is in memory)."""
        return self.x[start:end]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "n": len(self),
            "shape": list(self.x.shape[1:]),
            "n_classes": self.n_classes,
        }


def load_dataset(name: str, split: str = "test", **options: Any) -> TensorData:
    """Load a registered dataset by name, e.g. ``load_dataset("digits", split="test")``."""
    from robustbench_cl.registry import _load_builtins

    _load_builtins()
    if split not in ("train", "test"):
        raise UserError("split", f"unknown split {split!r}", "use 'train' or 'test'")
    if name.startswith("safetensors:"):
        from robustbench_cl.data.files import StreamedData

        return StreamedData(name.removeprefix("safetensors:"), split)  # type: ignore[return-value]
    from robustbench_cl.data.folders import FOLDER_SCHEMES, load_folder_dataset

    if name.startswith(FOLDER_SCHEMES):
        return load_folder_dataset(name, split)
    factory = DATASETS.get(name)
    return factory(split=split, **options)
