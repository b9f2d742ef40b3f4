"""The results store: ``cells.jsonl``, one finished record per line, appended with fsync.

An interrupted run loses at most the cell in flight; a rerun reads the file and resumes.
A torn last line (power cut mid-write) is ignored on read and rewritten by the rerun.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class ResultsStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    logger.warning(
                        "%s line %d is incomplete; it will be recomputed", self.path, number
                    )
        return records

    def repair(self) -> None:
        """Drop a torn last line so that appends start on a clean line."""
        if not self.path.exists():
            return
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            kept = text[: text.rfind("\n") + 1]
            self.path.write_text(kept, encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the file by ``records`` in this order, atomically (a crash keeps the old)."""
        self._replace(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in records)

    def remove(self, ids: set[str]) -> None:
        """Drop the records with these ids, atomically; every other line stays as it was."""
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        self._replace(line for line in lines if _record_id(line) not in ids)

    def _replace(self, lines: Iterable[str]) -> None:
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()


def _record_id(line: str) -> Any:
    """The id of a record line; None for a line that is not a record (kept as it was)."""
    try:
        return json.loads(line).get("id")
    except (json.JSONDecodeError, AttributeError):
        return None


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
