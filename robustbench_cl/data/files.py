"""A user's own labelled inputs from local safetensors files, read a slice at a time.

``safetensors:DIR`` names a folder with ``test.safetensors`` (and ``train.safetensors`` for
defenses that train), each holding ``x`` (N, ...) and ``y`` (N,) integer labels. ``x`` is
float in [0, 1] or uint8 (divided by 255). The labels stay in memory; inputs are read from disk
only for the rows asked for, so the engine can stream a 10,000-image evaluation shard by shard
instead of holding every input. Write such a folder with :func:`write_tensors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from robustbench_cl.errors import UserError

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8)


def write_tensors(
    directory: str | Path, split: str, x: torch.Tensor, y: torch.Tensor, n_classes: int
) -> Path:
    """Save ``x`` and ``y`` as ``DIR/<split>.safetensors``, loadable as ``safetensors:DIR``."""
    path = Path(directory) / f"{split}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"x": x.detach().cpu().contiguous(), "y": y.detach().cpu().long().contiguous()}
    save_file(tensors, str(path), metadata={"n_classes": str(n_classes)})
    return path


class StreamedData:
    """The same interface as :class:`TensorData`, with ``rows`` read from disk on demand."""

    bounds = (0.0, 1.0)

    def __init__(self, directory: str | Path, split: str) -> None:
        self.name = f"safetensors:{directory}"
        self.split = split
        self.path = Path(directory) / f"{split}.safetensors"
        if not self.path.is_file():
            raise UserError(
                "data.name",
                f"{self.path} does not exist",
                f"write it with robustbench_cl.data.files.write_tensors(DIR, {split!r}, x, y, k)",
            )
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                keys = set(handle.keys())
                if not {"x", "y"} <= keys:
                    raise UserError(
                        "data.name", f"{self.path} holds {sorted(keys)}", "store tensors x and y"
                    )
                self.y = handle.get_tensor("y")
                inputs = handle.get_slice("x")
                shape = tuple(inputs.get_shape())
                metadata = handle.metadata() or {}
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - a damaged file is the user's to fix
            raise UserError(
                "data.name", f"{self.path} is not a readable safetensors file ({error})"
            ) from None
        if self.y.dim() != 1 or self.y.dtype.is_floating_point or len(self.y) != shape[0]:
            raise UserError(
                "data.name",
                f"{self.path}: y must be N integer labels for the {shape[0]} rows of x",
                "store y as an int64 vector",
            )
        self.y = self.y.long()
        self._shape = shape
        try:
            self.n_classes = int(metadata.get("n_classes", int(self.y.max()) + 1))
        except ValueError:
            raise UserError(
                "data.name", f"{self.path}: metadata n_classes is not an integer"
            ) from None

    def __len__(self) -> int:
        return self._shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._shape[1:]

    def rows(self, start: int, end: int) -> torch.Tensor:
        """Inputs ``start:end`` as float32 in [0, 1], read from the file now."""
        with safe_open(str(self.path), framework="pt") as handle:
            x = handle.get_slice("x")[start:end]
        if x.dtype not in INPUT_DTYPES:
            raise UserError(
                "data.name", f"{self.path}: x has dtype {x.dtype}", "store float or uint8"
            )
        return x.float().div_(255) if x.dtype == torch.uint8 else x.float()

    @property
    def x(self) -> torch.Tensor:
        """Every input at once (for the parts of the engine that do not stream)."""
        return self.rows(0, len(self))

    def tensors(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        end = len(self) if n is None else min(n, len(self))
        return self.rows(0, end), self.y[:end]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "n": len(self),
            "shape": list(self.sample_shape),
            "n_classes": self.n_classes,
            "streamed": True,
        }
