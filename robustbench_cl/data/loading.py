"""``load_dataset``: a dataset spec (a registered name, ``safetensors:DIR`` or a folder scheme)
to its split; above the readers it dispatches to."""

from __future__ import annotations

from typing import Any

from robustbench_cl.data.base import TensorData
from robustbench_cl.errors import UserError
from robustbench_cl.registry import DATASETS


def load_dataset(name: str, split: str = "test", **options: Any) -> TensorData:
    """Load a registered dataset by name, e.g. ``load_dataset("digits", split="test")``."""
    if split not in ("train", "test"):
        raise UserError("split", f"unknown split {split!r}", "use 'train' or 'test'")
    if name.startswith("safetensors:"):
        from robustbench_cl.data.files import StreamedData

        return StreamedData(name.removeprefix("safetensors:"), split)  # type: ignore[return-value]
    from robustbench_cl.data.folders import FOLDER_SCHEMES, load_folder_dataset

    if name.startswith(FOLDER_SCHEMES):
        return load_folder_dataset(name, split)
    factory = DATASETS.get(name)
    return factory(split=split, **options)
