"""A user's own labelled inputs from local safetensors files, read a slice at a time.

``safetensors:DIR`` names a folder with ``test.safetensors`` (and ``train.safetensors`` for
defenses that train), each holding ``x`` (N, ...) and ``y`` (N,) integer labels. ``x`` is
float in [0, 1] or uint8 (divided by 255). The labels stay in memory; inputs are read from disk
only for the rows asked for, so the engine can stream a 10,000-image evaluation shard by shard
instead of holding every input. Write such a folder with :func:`write_tensors`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from robustbench_cl.data.base import LazyData
from robustbench_cl.errors import UserError

#: the dtypes of x that are read, as safetensors names them
SAFETENSORS_DTYPES = ("F32", "F16", "BF16", "F64", "U8")


def write_tensors(
    directory: str | Path, split: str, x: torch.Tensor, y: torch.Tensor, n_classes: int
) -> Path:
    """Save ``x`` and ``y`` as ``DIR/<split>.safetensors``, loadable as ``safetensors:DIR``."""
    path = Path(directory) / f"{split}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"x": x.detach().cpu().contiguous(), "y": y.detach().cpu().long().contiguous()}
    save_file(tensors, str(path), metadata={"n_classes": str(n_classes)})
    return path


class StreamedData(LazyData):
    """The same interface as :class:`TensorData`, with ``rows`` read from disk on demand."""

    def __init__(self, directory: str | Path, split: str) -> None:
        self.name = f"safetensors:{directory}"
        self.split = split
        self.path = Path(directory) / f"{split}.safetensors"
        write = f"write it with robustbench_cl.data.files.write_tensors(DIR, {split!r}, x, y, k)"
        if not self.path.is_file():
            raise UserError("data.name", f"{self.path} does not exist", write)
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                keys = set(handle.keys())
                if not {"x", "y"} <= keys:
                    raise UserError(
                        "data.name", f"{self.path} holds {sorted(keys)}", "store tensors x and y"
                    )
                labels = handle.get_tensor("y")
                inputs = handle.get_slice("x")
                shape, dtype = tuple(inputs.get_shape()), inputs.get_dtype()
                metadata = handle.metadata() or {}
        except UserError:
            raise
        except Exception as error:  # noqa: BLE001 - a damaged file is the user's to fix
            raise UserError(
                "data.name", f"{self.path} is not a readable safetensors file ({error})", write
            ) from None
        if len(shape) < 2 or shape[0] == 0:
            raise UserError(
                "data.name",
                f"{self.path}: x has shape {list(shape)}",
                "store x as (N, ...), N >= 1",
            )
        if dtype not in SAFETENSORS_DTYPES:
            raise UserError(
                "data.name", f"{self.path}: x has dtype {dtype}", "store float32 in [0, 1] or uint8"
            )
        if labels.dim() != 1 or labels.dtype.is_floating_point or len(labels) != shape[0]:
            raise UserError(
                "data.name",
                f"{self.path}: y must be N integer labels for the {shape[0]} rows of x",
                "store y as an int64 vector",
            )
        labels = labels.long()
        try:
            n_classes = int(metadata["n_classes"]) if "n_classes" in metadata else None
        except ValueError:
            raise UserError(
                "data.name",
                f"{self.path}: metadata n_classes is {metadata['n_classes']!r}",
                "write it with write_tensors(..., n_classes=K)",
            ) from None
        n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
        if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
            raise UserError(
                "data.name",
                f"{self.path}: labels must lie in 0..{n_classes - 1}",
                "fix y or the n_classes metadata",
            )
        super().__init__(self.name, split, labels, n_classes, shape[1:])

    def _read(self, start: int, end: int) -> torch.Tensor:
        """Inputs ``start:end`` as stored (uint8 or float), read from the file now."""
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                x = handle.get_slice("x")[start:end]
        except Exception as error:  # noqa: BLE001 - the file changed or vanished mid-run
            raise UserError(
                "data.name",
                f"reading rows {start}..{end} of {self.path} failed ({error})",
                "keep the file in place and unchanged while a run reads it",
            ) from None
        return x
