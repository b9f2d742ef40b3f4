"""Built-in datasets (made or shipped offline) and loaders for local real data."""

from __future__ import annotations

from robustbench_cl.data import digits  # noqa: F401  (registers "digits")
from robustbench_cl.data.base import TensorData
from robustbench_cl.data.loading import load_dataset

__all__ = ["TensorData", "load_dataset"]
