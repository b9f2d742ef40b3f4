"""Our own artifacts: a safetensors file of weights plus a JSON config beside it."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

logger = logging.getLogger(__name__)


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
            record_use(path)
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


#: the collector of the run (or Ray shard) in progress: ``category/name`` -> content hash of
#: every cached artifact it used (built or loaded); a run records them in ``meta.json`` so that
#: ``compare`` can tell runs on other weights. Scoped, so two runs in one process (the Python
#: API, the tests) never list each other's artifacts.
_USES: ContextVar[dict[str, str] | None] = ContextVar("artifact_uses", default=None)


@contextmanager
def collect_artifact_uses() -> Iterator[dict[str, str]]:
    """Collect the artifacts used inside the block (what ``record_use`` sees) into a dict."""
    used: dict[str, str] = {}
    token = _USES.set(used)
    try:
        yield used
    finally:
        _USES.reset(token)


def record_use(path: Path) -> None:
    from robustbench_cl.shipped import digest

    used = _USES.get()
    if used is None:  # outside a run: nobody asks
        return
    weights = with_extension(path, ".safetensors")
    target = weights if weights.is_file() else path if path.is_dir() else None
    if target is not None:
        used[f"{path.parent.name}/{path.name}"] = digest(target)


def add_artifact_uses(uses: dict[str, str]) -> None:
    """Add what a Ray worker reported to the run's collector."""
    used = _USES.get()
    if used is not None:
        used.update(uses)


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


#: the keys under which published checkpoints keep their weights, tried in this order
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "state_dict_ema")


def load_foreign_state_dict(path: str | Path, field: str = "weights") -> dict[str, torch.Tensor]:
    """Load someone else's checkpoint safely: safetensors, or ``torch.load(weights_only=True)``.

    A checkpoint that holds pickled Python objects (NumPy scalars, an optimizer, a class) is
    refused with a one-line error unless remote code is trusted (``--trust-remote-code``, the
    ``trust_remote_code`` config key): then it goes through ``weights_only=False``, with a
    warning. Common layouts are unwrapped: the weights under ``state_dict``, ``model`` or
    ``net``, and the ``module.`` prefix of ``DataParallel``.
    """
    import pickle

    from robustbench_cl.errors import UserError
    from robustbench_cl.utils import trust_remote_code

    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(field, f"checkpoint {str(path)!r} does not exist", "check the path")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types
            raise UserError(field, f"{path} is not a readable safetensors file ({error})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not trust_remote_code():
            raise UserError(
                field,
                f"{path} contains pickled Python objects (or is damaged), which could run code "
                "when loaded, so it was not loaded",
                "pass --trust-remote-code (or trust_remote_code: true in the config) if you "
                "trust its source, or re-save its tensors as safetensors",
            ) from None
        logger.warning("loading %s with weights_only=False: it may run code (trusted)", path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - as below, for a damaged trusted file
            raise UserError(field, f"{path} is not a readable torch checkpoint ({error})") from None
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged file raises whatever its bytes lead to
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(field, f"{path} is not a readable torch checkpoint ({first})") from None
    return unwrap_state_dict(state, path, field)


def unwrap_state_dict(state: Any, path: Path, field: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint in a common layout, without a ``module.`` prefix."""
    from robustbench_cl.errors import UserError

    if hasattr(state, "state_dict") and callable(state.state_dict):  # a whole pickled module
        state = state.state_dict()
    if isinstance(state, dict):
        for key in CHECKPOINT_KEYS:
            if isinstance(state.get(key), dict):
                state = state[key]
                break
            if hasattr(state.get(key), "state_dict"):
                state = state[key].state_dict()
                break
    if not isinstance(state, dict):
        raise UserError(field, f"{path} holds a {type(state).__name__}, not a state dict")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(
            field,
            f"{path} holds no tensors at its top level",
            f"keys: {', '.join(map(str, list(state)[:6]))}; weights are looked for under "
            f"{', '.join(CHECKPOINT_KEYS)}",
        )
    for prefix in ("module.", "_orig_mod."):
        if all(key.startswith(prefix) for key in tensors):
            tensors = {key[len(prefix) :]: value for key, value in tensors.items()}
    return tensors


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
