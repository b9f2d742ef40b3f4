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
