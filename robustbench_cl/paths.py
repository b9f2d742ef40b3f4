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
#: ``?key=PATH`` options that name a local file, per scheme (a ``python:`` spec's options are
#: its factory's keyword arguments, never paths)
PATH_OPTIONS: dict[str, tuple[str, ...]] = {
    "torchvision": ("weights",),
    "timm": ("checkpoint",),
    "open_clip": ("checkpoint",),
    "robustbench": ("dir",),
}
#: schemes whose path options name folders, not files
FOLDER_OPTIONS = frozenset({"robustbench"})


def _split_spec(spec: str) -> tuple[str, str, str] | None:
    """``(scheme, target, query)`` of a spec that may name local paths, else None."""
    scheme, colon, rest = spec.partition(":")
    if not colon or (scheme not in PATH_SCHEMES and scheme not in PATH_OPTIONS):
        return None
    target, _, query = rest.partition("?")
    return scheme, target, query


def _path_options(scheme: str, query: str) -> list[tuple[int, int, str]]:
    """``(start, end, value)`` in ``query`` of each path option's (percent-decoded) value."""
    from urllib.parse import unquote_plus  # as parse_spec reads it: "+" is a space

    found, offset = [], 0
    for part in query.split("&"):
        key, equals, value = part.partition("=")
        if equals and unquote_plus(key) in PATH_OPTIONS.get(scheme, ()) and value:
            start = offset + len(key) + 1
            found.append((start, start + len(value), unquote_plus(value)))
        offset += len(part) + 1
    return found


def _join(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return value if not value or path.is_absolute() or value.startswith("~") else str(base / path)


def absolute_spec(spec: str, base: str | Path) -> str:
    """``spec`` with its relative file and folder paths (the target of a path scheme, and the
    scheme's path options such as ``torchvision:...?weights=``) joined to ``base``; everything
    else, the rest of the query string included, exactly as written."""
    from urllib.parse import quote

    parts = _split_spec(spec)
    if parts is None:
        return spec
    scheme, target, query = parts
    base = Path(base)
    joined = _join(base, target) if scheme in PATH_SCHEMES else target
    # splice each changed option value into the query as written (re-encoded, so a folder
    # named "exp+1" or "a&b" reads back as itself)
    pieces, last = [], 0
    for start, end, value in _path_options(scheme, query):
        moved = _join(base, value)
        if moved != value:
            pieces += [query[last:start], quote(moved, safe="/:~,@")]
            last = end
    rewritten = "".join(pieces) + query[last:]
    if joined == target and rewritten == query:
        return spec  # nothing relative: the spec as the user wrote it
    if "?" in joined:
        raise UserError(
            "config",
            f"{joined!r}: a folder with '?' in its name cannot be read in a spec",
            "move the config, or give the path absolute",
        )
    return f"{scheme}:{joined}" + (f"?{rewritten}" if "?" in spec else "")


#: config keys whose value is a model or dataset spec (``data.name`` too; other ``name`` keys
#: are labels), and keys whose value is a file path written with or without its scheme
SPEC_KEYS = frozenset({"spec", "judge"})
PATH_KEYS = frozenset({"behaviors", "benign"})


def absolute_paths(raw: Any, base: str | Path, key: str | None = None) -> Any:
    """The specs and files of a config (read from YAML) with their relative paths joined to
    ``base``, the config file's folder: a config names its files as seen from where it lies,
    whatever the working directory of the command that runs it. Only the keys that hold specs
    or files are read; labels, prose and attack parameters stay as written."""
    if isinstance(raw, dict):
        return {
            k: absolute_paths(v, base, "spec" if (key, k) == ("data", "name") else str(k))
            for k, v in raw.items()
        }
    if isinstance(raw, list):
        return [absolute_paths(value, base, key) for value in raw]
    if not isinstance(raw, str):
        return raw
    if key in PATH_KEYS:  # with or without its scheme: the scheme stays as written
        prefix = f"{key}:" if raw.startswith(f"{key}:") else ""
        return prefix + _join(Path(base), raw.removeprefix(prefix))
    return absolute_spec(raw, base) if key in SPEC_KEYS else raw


def missing_spec_paths(spec: str) -> list[tuple[str, str]]:
    """``(path, what it should be)`` for each local path of ``spec`` that does not exist."""
    parts = _split_spec(spec)
    if parts is None:
        return []
    scheme, target, query = parts
    wanted: list[tuple[Path, str]] = []
    if scheme == "wrapped":  # OUT, OUT.json or OUT.safetensors: both files beside each other
        prefix = target.removesuffix(".json").removesuffix(".safetensors")
        wanted += [(Path(prefix + ".json").expanduser(), "file")]
        wanted += [(Path(prefix + ".safetensors").expanduser(), "file")]
    elif scheme in ("behaviors", "benign"):
        wanted.append((Path(target).expanduser(), "file"))
    elif scheme in PATH_SCHEMES:
        wanted.append((Path(target).expanduser(), "folder"))
    kind = "folder" if scheme in FOLDER_OPTIONS else "file"
    wanted += [(Path(value).expanduser(), kind) for _, _, value in _path_options(scheme, query)]
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
