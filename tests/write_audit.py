"""One audit hook for "what did this process write?", shared by the path test (a real suite run,
tests/test_paths.py) and the reader fuzzing (tests/fuzz_readers.py).

``install(note)`` calls ``note(path)`` with the resolved path of every file or folder Python
opens for writing, creates, removes, truncates or renames onto. Native writers (safetensors'
Rust code, ``torch.save``) raise no audit event: callers check those another way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
#: events whose first argument is the path written, created or removed
FIRST = {
    "os.mkdir",
    "os.remove",
    "os.rmdir",
    "os.truncate",
    "os.chmod",
    "shutil.rmtree",
    "tempfile.mkstemp",
    "tempfile.mkdtemp",
}
#: events whose second argument is the destination
SECOND = {
    "os.rename",
    "os.replace",
    "os.link",
    "os.symlink",
    "shutil.copyfile",
    "shutil.copytree",
    "shutil.move",
}


def install(note: Callable[[Path], None]) -> None:
    def resolve(path: Any) -> None:
        if not isinstance(path, int) and path is not None:
            note(Path(os.fsdecode(path)).resolve())

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if isinstance(mode, str):
                writes = any(c in mode for c in "wax+")
            else:
                writes = bool((flags or 0) & WRITE_FLAGS)
            if writes:
                resolve(path)
        elif event in FIRST:
            resolve(args[0])
        elif event in SECOND:
            resolve(args[1])

    sys.addaudithook(hook)
