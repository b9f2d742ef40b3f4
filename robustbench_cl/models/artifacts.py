"""Our own artifacts: a safetensors file of weights plus a JSON config beside it."""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def with_extension(path: str | Path, extension: str) -> Path:
    """``path`` + ``extension``, appended: ``rae-lam0.5`` -> ``rae-lam0.5.json``.

    ``Path.with_suffix`` would replace the ``.5``.
    """
    path = Path(path)
    return path.parent / (path.name + extension)


@contextmanager
def artifact_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``path`` while a cached artifact is built.

    Parallel test workers or two runs sharing ``ROBUSTBENCH_CL_HOME`` then train a missing
    model once: the second waits, finds the artifact and loads it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(with_extension(path, ".lock"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def save_artifact(path: Path, module: nn.Module, config: dict[str, Any]) -> Path:
    """Write ``path.safetensors`` and ``path.json`` atomically (write, fsync, rename).

    Temporary names are unique per process, so concurrent writers never rename each
    other's half-written files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    unique = f".{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp_weights = with_extension(path, ".safetensors" + unique)
    save_file(weights, str(tmp_weights))
    _fsync(tmp_weights)
    os.replace(tmp_weights, with_extension(path, ".safetensors"))
    tmp_config = with_extension(path, ".json" + unique)
    tmp_config.write_text(json.dumps(config, indent=2, sort_keys=True))
    _fsync(tmp_config)
    os.replace(tmp_config, with_extension(path, ".json"))
    return path


def artifact_exists(path: Path) -> bool:
    path = Path(path)
    return with_extension(path, ".safetensors").exists() and with_extension(path, ".json").exists()


def load_artifact_weights(path: Path, module: nn.Module) -> nn.Module:
    state = load_file(str(with_extension(path, ".safetensors")))
    module.load_state_dict(state)
    return module


def load_artifact_config(path: Path) -> dict[str, Any]:
    return json.loads(with_extension(path, ".json").read_text())


def load_foreign_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load someone else's checkpoint safely: safetensors, or ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.exists():
        from robustbench_cl.errors import UserError

        raise UserError("weights", f"checkpoint {str(path)!r} does not exist", "check the path")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    return state


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
