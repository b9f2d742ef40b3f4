"""Shared fixtures: an isolated cache home, the digits model and data, tiny synthetic models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("ROBUSTBENCH_CL_HOME", str(ROOT / ".cache" / "test-home"))
torch.set_num_threads(1)


class TinyNet(nn.Module):
    """A 2-layer MLP on 1x4x4 inputs with ``n_classes`` outputs; deterministic from a seed."""

    def __init__(self, n_classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, n_classes)
        )
        with torch.no_grad():
            for parameter in self.net.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tiny_factory(n_classes: str = "4") -> nn.Module:
    """Used by the ``python:`` adapter test."""
    return TinyNet(int(n_classes))


@pytest.fixture
def tiny_model() -> nn.Module:
    from robustbench_cl.models import Frozen

    return Frozen(TinyNet())


@pytest.fixture
def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 4, 4, generator=generator)
    with torch.no_grad():
        y = TinyNet()(x).argmax(1)
    return x, y


@pytest.fixture(scope="session")
def digits_model() -> nn.Module:
    from robustbench_cl.models import load_model

    return load_model("builtin:digits-cnn")


@pytest.fixture(scope="session")
def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    from robustbench_cl.data import load_dataset

    return load_dataset("digits", split="test").tensors(n=64)
