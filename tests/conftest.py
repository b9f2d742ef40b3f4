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


class TinyVLP(nn.Module):
    """A tiny image-text model for retrieval tests: a linear image tower, and a bag of hashed
    words as the text encoder (no MiniLM, so it is instant). Deterministic from a seed."""

    def __init__(self, seed: int = 0, dim: int = 16) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.image = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(3 * 8 * 8, dim))
        self.words = nn.Parameter(torch.randn(257, dim, generator=generator))
        with torch.no_grad():
            for parameter in self.image.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.image(x), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        import zlib

        rows = []
        for text in texts:
            index = torch.tensor([zlib.crc32(w.encode()) % 257 for w in text.split()] or [0])
            rows.append(self.words[index].sum(0))
        return nn.functional.normalize(torch.stack(rows), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_image(x)


def tiny_vlp(seed: str = "0") -> nn.Module:
    """Used by the retrieval engine tests (``python:tests.conftest:tiny_vlp``)."""
    return TinyVLP(int(seed))


from robustbench_cl.shipped import without_timings  # noqa: E402 (records compare without timings)


def assert_resumes_after_a_torn_line(run_dir: Path, rerun) -> None:  # noqa: ANN001
    """Cut ``cells.jsonl`` as a kill -9 mid-append would (the last record half written),
    ``rerun()`` the same config into ``run_dir``, and check that exactly the lost record was
    recomputed, identical to the original but for its timings."""
    import json

    path = run_dir / "cells.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    original = [json.loads(line) for line in lines]
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    rerun()
    resumed = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in resumed[:-1]] == [r["id"] for r in original[:-1]]
    assert sorted(r["id"] for r in resumed) == sorted(r["id"] for r in original)
    by_id = {r["id"]: without_timings(r) for r in resumed}
    assert all(by_id[r["id"]] == without_timings(r) for r in original)


def random_chat_lm(vocab: int = 300, layers: int = 2):  # noqa: ANN201
    """A randomly initialised small Llama with a BPE tokenizer trained on the chat corpus (its
    merges make some token pairs re-encode as one token): the jailbreak tests' victim."""
    from robustbench_cl.data.chat import make_chat
    from robustbench_cl.models.llm import ChatLM, build_tokenizer, tiny_llama

    corpus = make_chat("train", 60, 40, 30)
    texts = [f"{e.instruction} {e.response} {e.target or ''}" for e in corpus.examples]
    tokenizer = build_tokenizer(texts, vocab)
    torch.manual_seed(0)
    recipe = {"hidden": 32, "intermediate": 64, "layers": layers, "heads": 2}
    lm = ChatLM(tiny_llama(len(tokenizer), recipe).eval(), tokenizer, "tiny-random")
    lm.requires_grad_(False)
    return lm
