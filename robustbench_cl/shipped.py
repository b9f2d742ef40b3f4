"""Trained artifacts shipped with the package, so that a fresh machine need not retrain them.

``robustbench_cl/seeds/`` mirrors the cache layout (``models/``, ``defenses/``,
``membership/``): the built-in models and the defense artifacts the ``quickstart`` suite uses,
each made by our own recipe on a CPU and named, as in the cache, by a hash of that recipe, its
settings and its training data. A changed recipe gets another name, so a stale shipped artifact
is never picked up: the new one is trained on first use as before.

:func:`seed_cache` copies the shipped artifacts that a cache lacks (never overwriting one).
``robustbench-cl artifacts verify`` retrains every shipped artifact into a scratch cache and
compares the weights with the shipped ones; ``artifacts export`` refreshes the shipped set from a
cache. The demo's speed comes from here; ``ROBUSTBENCH_CL_NO_SEEDS=1`` turns seeding off (a
cold cache then trains everything, as ``artifacts verify`` does).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

SEEDS = Path(__file__).resolve().parent / "seeds"
NO_SEEDS_ENV = "ROBUSTBENCH_CL_NO_SEEDS"
SKIPPED_SUFFIXES = (".lock", ".tmp")
#: torch threads the shipped set was trained with (training rounds differently with another
#: count), so ``artifacts verify`` retrains with these unless ``--threads`` says otherwise
SEEDS_THREADS = 2


def shipped_entries(root: Path = SEEDS) -> list[Path]:
    """The shipped artifacts: each file or folder one level below a category folder."""
    if not root.is_dir():
        return []
    return sorted(
        entry
        for category in root.iterdir()
        if category.is_dir()
        for entry in category.iterdir()
        if not entry.name.endswith(SKIPPED_SUFFIXES) and ".tmp" not in entry.name
    )


def seed_cache(home: Path, root: Path = SEEDS) -> int:
    """Copy the shipped artifacts that ``home`` lacks; returns how many were copied."""
    if os.environ.get(NO_SEEDS_ENV) == "1":
        return 0
    copied = 0
    for entry in shipped_entries(root):
        target = home / entry.parent.name / entry.name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.parent / f".{entry.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        if entry.is_dir():
            shutil.copytree(entry, scratch)
        else:
            shutil.copyfile(entry, scratch)
        try:
            os.rename(scratch, target) if entry.is_dir() else os.replace(scratch, target)
            copied += 1
        except OSError:  # another process seeded it first
            shutil.rmtree(scratch, ignore_errors=True) if entry.is_dir() else scratch.unlink()
    return copied


#: keys that time the work (or count what this run trained, which depends on the cache):
#: not part of an artifact's content, nor of a record's result
TIMING_KEYS = frozenset(
    {"wall_time", "attack_seconds", "seconds", "training_seconds", "fit_time", "references_trained"}
)


def without_timings(value: Any) -> Any:
    """``value`` with every :data:`TIMING_KEYS` entry removed, recursively (JSON data)."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def _content(file: Path) -> bytes:
    """A file's bytes; for JSON metadata, its canonical form without the timings (two trainings
    to the same weights took different times, and are the same artifact)."""
    if file.suffix != ".json":
        return file.read_bytes()
    try:
        return json.dumps(without_timings(json.loads(file.read_text())), sort_keys=True).encode()
    except ValueError:
        return file.read_bytes()


def digest(path: Path) -> str:
    """SHA-256 (16 hex digits) of a file, or of a folder's files and their relative names; JSON
    metadata counts without its timings (see :func:`_content`)."""
    sha = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            sha.update(str(file.relative_to(path)).encode())
        sha.update(_content(file))
    return sha.hexdigest()[:16]


def export(home: Path, root: Path = SEEDS) -> list[Path]:
    """Copy every artifact of cache ``home`` into the shipped set (replacing same names)."""
    written = []
    for entry in shipped_entries(home):
        target = root / entry.parent.name / entry.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            shutil.rmtree(target)
        if entry.is_dir():
            shutil.copytree(entry, target)
        else:
            shutil.copyfile(entry, target)
        written.append(target)
    return written
