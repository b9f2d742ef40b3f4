"""Names from configs and data never become paths outside the run directory or the cache.

A suite, model, defense or attack name comes from a config, and a config may come from someone
else. :func:`slug` turns such a name into one safe path component (``[a-z0-9._-]``, bounded
length; a name it had to change gets a hash of the original, so ``Suite`` and ``suite``, or two
Unicode forms of one word, never share a folder). :func:`inside` is the one place a path is
joined below the run directory or the cache: it refuses any result that resolves elsewhere
(``..``, an absolute part, a symlink out, a NUL byte) before anything is opened. Paths a user
types on the command line (``--out``, ``-o``, ``--screenshot``) are theirs and are not checked.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path
from typing import Any

from robustbench_cl.errors import UserError

_UNSAFE = re.compile(r"[^a-z0-9._-]+")
_HASHED = re.compile(r"-[0-9a-f]{8}$")
#: names Windows reserves for devices, in any case and with any extension
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$")
SLUG_LIMIT = 48


def slug(name: str, limit: int = SLUG_LIMIT) -> str:
    """``name`` as one safe, bounded path component; unchanged when it already is one.

    A name that had to change, or that already ends like a hashed slug (``-`` and 8 hex
    digits), or that Windows reserves, gets ``-`` and 8 hex digits of its SHA-256, so two names
    never share a slug (``Suite`` and ``suite``, two Unicode forms of a word, ``suite-9c210050``).
    """
    ascii_form = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    text = _UNSAFE.sub("-", ascii_form.lower()).strip("-._")[:limit].strip("-._") or "run"
    if text != name or _HASHED.search(text) or _RESERVED.match(text):
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        text = f"{text}-{digest}"
    return text


def inside(root: str | Path, *parts: str | Path) -> Path:
    """``root / parts``, resolved, refused unless it lies strictly inside ``root`` (a join
    that comes back to ``root`` itself is refused too: a save or an rmtree there would act on
    the whole folder)."""
    base = Path(root).resolve()
    for part in parts:
        if "\x00" in str(part):
            raise UserError("path", f"{str(part)!r} contains a NUL byte", "rename it")
    path = base.joinpath(*parts).resolve()
    if (parts and path == base) or not path.is_relative_to(base):
        joined = "/".join(str(p) for p in parts)
        raise UserError(
            "path",
            f"{joined!r} would be written outside {base}",
            "names from a config or data must not contain '..' or absolute paths",
        )
    return path


# ---------------------------------------------------------------------- paths inside specs
#: spec schemes whose target is a local file or folder (``hf:DIR``, ``cifar10:DIR``, ...);
#: ``wrapped:OUT`` names ``OUT.json`` beside ``OUT.safetensors``
PATH_SCHEMES = frozenset(
    {
        "hf",
        "sentence-transformers",
        "wrapped",
        "imagefolder",
        "cifar10",
        "cifar100",
        "hf-disk",
        "safetensors",
        "karpathy",
        "privscreen",
        "beir",
        "behaviors",
        "benign",
    }
)
#: ``?key=PATH`` options of a spec that name a local file
PATH_OPTIONS = ("weights", "checkpoint", "targets")


def _split_spec(spec: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    from urllib.parse import parse_qsl

    scheme, colon, rest = spec.partition(":")
    if not colon or scheme not in PATH_SCHEMES and "?" not in rest:
        return None
    target, _, query = rest.partition("?")
    return scheme, target, parse_qsl(query, keep_blank_values=True)


def _join(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return value if not value or path.is_absolute() else str(base / path)


def absolute_spec(spec: str, base: str | Path) -> str:
    """``spec`` with its relative file and folder paths (the target of a path scheme, and
    ``weights``/``checkpoint``/``targets`` options) joined to ``base``; other specs unchanged."""
    parts = _split_spec(spec)
    if parts is None:
        return spec
    scheme, target, options = parts
    base = Path(base)
    joined = _join(base, target) if scheme in PATH_SCHEMES else target
    moved = [(k, _join(base, v) if k in PATH_OPTIONS else v) for k, v in options]
    if joined == target and moved == options:
        return spec  # nothing relative: the spec as the user wrote it
    query = "&".join(f"{k}={v}" for k, v in moved)
    return f"{scheme}:{joined}" + (f"?{query}" if query else "")


#: config keys whose value is a file path (written with or without its ``scheme:`` prefix)
PATH_KEYS = frozenset({"behaviors", "benign"})
#: config keys whose value is prose, never a path (``name`` is a label, except ``data.name``)
_PROSE_KEYS = frozenset({"suite", "description", "name"})


def absolute_paths(raw: Any, base: str | Path, key: str | None = None) -> Any:
    """Every spec string of a config (read from YAML) with its relative paths joined to
    ``base``, the config file's folder: a config names its files as seen from where it lies,
    whatever the working directory of the command that runs it."""
    if isinstance(raw, dict):
        return {
            k: absolute_paths(v, base, "spec" if (key, k) == ("data", "name") else str(k))
            for k, v in raw.items()
        }
    if isinstance(raw, list):
        return [absolute_paths(value, base, key) for value in raw]
    if not isinstance(raw, str) or key in _PROSE_KEYS:
        return raw
    if key in PATH_KEYS and not raw.startswith(f"{key}:"):
        return _join(Path(base), raw)
    return absolute_spec(raw, base)


def missing_spec_paths(spec: str) -> list[tuple[str, str]]:
    """``(path, what it should be)`` for each local path of ``spec`` that does not exist."""
    parts = _split_spec(spec)
    if parts is None:
        return []
    scheme, target, options = parts
    wanted: list[tuple[Path, str]] = []
    if scheme in PATH_SCHEMES:
        if scheme == "wrapped":
            wanted.append((Path(target + ".json").expanduser(), "file"))
        elif scheme in ("behaviors", "benign"):
            wanted.append((Path(target).expanduser(), "file"))
        else:
            wanted.append((Path(target).expanduser(), "folder"))
    wanted += [(Path(v).expanduser(), "file") for k, v in options if k in PATH_OPTIONS and v]
    missing = []
    for path, kind in wanted:
        ok = path.is_dir() if kind == "folder" else path.is_file()
        if not ok:
            missing.append((str(path), kind))
    return missing


def check_spec_paths(spec: str, field: str) -> None:
    """One line naming ``field`` when a local path of ``spec`` does not exist (before any work:
    a missing folder must not surface only when its unit runs)."""
    for path, kind in missing_spec_paths(spec)[:1]:
        problem = f"{path} is not a {kind}" if Path(path).exists() else f"{path} does not exist"
        raise UserError(
            field,
            problem,
            "check the path (relative paths in a config file are read from the config's folder)",
        )
