"""Small shared helpers: the cache home, stable hashing and seeding."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch

from robustbench_cl.errors import UserError


def cache_home() -> Path:
    """Where built-in models and defense artifacts are cached (``ROBUSTBENCH_CL_HOME``).

    On first use in a process, the artifacts shipped with the package (``robustbench_cl/
    seeds/``, made by our own recipes: see :mod:`robustbench_cl.shipped`) are copied into
    it where missing, so a fresh machine starts from the same weights instead of retraining.
    """
    root = os.environ.get("ROBUSTBENCH_CL_HOME")
    path = Path(root) if root else Path.home() / ".cache" / "robustbench_cl"
    path.mkdir(parents=True, exist_ok=True)
    # torch makes its compile cache (/tmp/torchinductor_USER) when anything first imports
    # torch._dynamo, which every optimizer's first step does: unless the user chose a place,
    # it goes in ours, so that a run writes only to its folder and this cache
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(path / "torchinductor"))
    if str(path) not in _SEEDED:
        _SEEDED.add(str(path))
        from robustbench_cl.shipped import seed_cache

        seed_cache(path)
    return path


_SEEDED: set[str] = set()


def cache_file(category: str, name: str) -> Path:
    """``cache_home() / category / name``, checked to stay inside the cache."""
    from robustbench_cl.paths import inside

    return inside(cache_home(), category, name)


#: set to "1" by ``--trust-remote-code`` or the ``trust_remote_code`` config key; an environment
#: variable so that Ray workers inherit it
TRUST_REMOTE_CODE_ENV = "ROBUSTBENCH_CL_TRUST_REMOTE_CODE"


def trust_remote_code() -> bool:
    """Whether the user allowed pickled checkpoints (code that runs when loaded)."""
    return os.environ.get(TRUST_REMOTE_CODE_ENV) == "1"


def allow_remote_code() -> None:
    os.environ[TRUST_REMOTE_CODE_ENV] = "1"


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object that does not depend on key order or the process."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """The one way code here seeds torch's global generator: inside the block it is seeded with
    ``seed`` (for what can only draw from it: module initialisation, dropout, a library's
    random start); after it, its state is what it was before (``torch.random.fork_rng``), so no
    block leaks its stream into the next. Yields a generator seeded the same, for code that
    takes one. The engine loop seeds each shard of each unit this way; training recipes seed
    their runs this way."""
    # CUDA's generators too once CUDA is up (forking them would start CUDA in a CPU run); every
    # shard seeds them anyway, so one that starts CUDA leaks nothing that matters
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield torch.Generator().manual_seed(seed)


def tensor_digest(*tensors: Any, length: int = 16) -> str:
    """SHA-256 of tensors' values (a dataset's contents, a training subset)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:length]


def derive_seed(seed: int, *parts: Any) -> int:
    """A per-cell seed derived from the run seed and a name, stable across processes."""
    return int(stable_hash([seed, *parts], length=8), 16)


def device_name(device: torch.device) -> str:
    """A human name for a device: the GPU model, or the CPU architecture."""
    import platform

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError("device", "CUDA is not available on this machine", "use --device cpu")
    return torch.device(device)


def parse_fraction(value: float | int | str) -> float:
    """``0.125``, ``32/255`` or ``"32/255"``: an eps as a fraction of the pixel range."""
    if isinstance(value, int | float):
        return float(value)
    top, slash, bottom = str(value).partition("/")
    try:
        return float(top) / float(bottom) if slash else float(top)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps {value!r} is not a number or a fraction like 32/255") from None


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``scheme:target?k=v`` -> (scheme, target, options)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise UserError(
            "model",
            f"bad model spec {spec!r}",
            "use e.g. builtin:digits-cnn or torchvision:resnet18",
        )
    scheme, _, rest = spec.partition(":")
    target, _, query = rest.partition("?")
    return scheme, target, dict(parse_qsl(query, keep_blank_values=True))
