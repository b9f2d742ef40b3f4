"""A dataset as two tensors, and the name -> dataset entry point."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from robustbench_cl.errors import UserError


class _Sampling:
    """``sample``, shared by the in-memory and the streamed datasets (both have ``y``, ``take``)."""

    def sample(self, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples drawn by ``seed``, stratified by class: what a run's ``data.n`` takes."""
        from robustbench_cl.data.subset import draw_subset

        indices = draw_subset(self.y, n, seed)
        return self.take(indices), self.y[indices]


@dataclass(frozen=True)
class TensorData(_Sampling):
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
        """The first ``n`` samples in stored order (all when ``None``). A folder sorted by class
        gives one class: use :meth:`sample` for a representative subset."""
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

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """Inputs at ``indices`` (a drawn subset, see :mod:`robustbench_cl.data.subset`)."""
        return self.x[indices.to(self.x.device)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "n": len(self),
            "shape": list(self.x.shape[1:]),
            "n_classes": self.n_classes,
        }


class LazyData(_Sampling):
    """:class:`TensorData`'s interface over files: labels in memory, inputs read per range on
    demand (subclasses implement :meth:`_read`; ``safetensors:`` and the folder loaders)."""

    bounds = (0.0, 1.0)

    def __init__(
        self, name: str, split: str, y: torch.Tensor, n_classes: int, shape: tuple[int, ...]
    ) -> None:
        self.name, self.split, self.y, self.n_classes = name, split, y, n_classes
        self._shape = shape
        self._all: torch.Tensor | None = None

    def _read(self, start: int, end: int) -> torch.Tensor:
        """(end - start, C, H, W): uint8 pixels, or floats already in [0, 1]."""
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._shape

    def rows(self, start: int, end: int) -> torch.Tensor:
        """Inputs ``start:end`` as float32 in [0, 1], decoded now."""
        end = min(end, len(self))
        if start >= end:
            return torch.empty((0, *self._shape))
        x = self._read(start, end)
        return x.float().div_(255) if x.dtype == torch.uint8 else x.float()

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """Inputs at sorted ``indices``, read as few contiguous ranges as they form."""
        indices = indices.cpu()
        if len(indices) == 0:
            return torch.empty((0, *self._shape))
        breaks = (indices[1:] != indices[:-1] + 1).nonzero().flatten() + 1
        starts = [0, *breaks.tolist()]
        ends = [*breaks.tolist(), len(indices)]
        chunks = [self.rows(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, ends)]
        return torch.cat(chunks)

    def check_rows(self, indices: torch.Tensor, chunk: int = 256) -> None:
        """Decode the inputs at sorted ``indices`` now, ``chunk`` at a time, and drop them: a
        truncated image or a NaN among the evaluated samples is one line before any work, not
        an error in the middle of a run."""
        indices = indices.cpu()
        for start in range(0, len(indices), chunk):
            part = indices[start : start + chunk]
            if not torch.isfinite(self.take(part)).all():
                raise UserError(
                    "data",
                    f"rows {int(part[0])}..{int(part[-1])} of {self.name} ({self.split}) "
                    "contain NaN or Inf inputs",
                    "clean the data",
                )

    @property
    def x(self) -> torch.Tensor:
        """Every input at once, decoded once and kept (training defenses, membership and
        generation use the whole split; attack columns read shards through :meth:`rows`)."""
        if self._all is None:
            self._all = self.rows(0, len(self))
        return self._all

    def tensors(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` samples in stored order; :meth:`sample` for a representative one."""
        if n is not None and n < 1:
            raise UserError("data.n", f"must be >= 1, got {n}")
        end = len(self) if n is None else min(n, len(self))
        return self.rows(0, end), self.y[:end]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "n": len(self),
            "shape": list(self._shape),
            "n_classes": self.n_classes,
            "streamed": True,
        }


def image_errors() -> tuple[type[Exception], ...]:
    """What Pillow raises on a damaged or hostile image file: OSError (truncated data),
    SyntaxError (a broken PNG chunk), ValueError, DecompressionBombError (absurd sizes)."""
    from PIL import Image, UnidentifiedImageError

    return (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)
