"""What an ensemble's finished components found, kept on disk as each one finishes.

Standard AutoAttack on a real model runs for many minutes per batch, most of it in its later
components. A :class:`ComponentJournal` keeps, per component and per batch, which samples it
attacked, which it fooled, their adversarial inputs, the component's cost and seconds, and a
digest of the inputs and labels it attacked, in one safetensors file written atomically (a
temporary file, fsync, rename, fsync of the folder) and named by the component and the
attacked samples. An interrupted run that is resumed takes a component's outcomes from the
journal only for exactly the samples it attacked then, on the same inputs (a batch split
differently, or changed data, runs the component again), so its cost is counted once. The
components seed themselves (torchattacks reseeds each call), so a resumed cell's outcomes are
those of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from robustbench_cl.attacks.base import Cost
from robustbench_cl.utils import stable_hash, tensor_digest


@dataclass
class Finished:
    """A component's journaled outcomes for the rows it attacked in an earlier run."""

    fooled: torch.Tensor  # (rows,) bool
    adv: torch.Tensor  # (fooled rows, ...) the adversarial inputs of the fooled rows
    cost: Cost
    seconds: float


class ComponentJournal:
    """The journal of one batch of one cell: ``folder`` is the cell's, ``positions`` the
    batch's samples (their positions in the evaluated subset, which name them across runs)."""

    def __init__(self, folder: str | Path, positions: torch.Tensor) -> None:
        self.folder = Path(folder)
        self.positions = positions.detach().cpu().long()

    def _path(self, component: str, rows: torch.Tensor) -> Path:
        positions = self.positions[rows.cpu()].tolist()
        return self.folder / f"{component}-{stable_hash(positions)[:16]}.safetensors"

    def finished(
        self, component: str, rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> Finished | None:
        """What an earlier run of ``component`` found on exactly these ``rows`` (inputs ``x``,
        labels ``y``), or None."""
        path = self._path(component, rows)
        if not path.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        if meta.get("inputs") != tensor_digest(x.detach().cpu(), y.detach().cpu()):
            return None  # other data under the same positions: attack again
        saved = load_file(str(path))
        device = rows.device
        return Finished(
            saved["fooled"].bool().to(device),
            saved["adv"].to(device),
            Cost(**json.loads(meta.get("cost", "{}"))),
            float(meta.get("seconds", 0.0)),
        )

    def save(
        self,
        component: str,
        rows: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        fooled: torch.Tensor,
        adv: torch.Tensor,
        cost: Cost,
        seconds: float,
    ) -> None:
        """Keep that ``component`` attacked ``rows`` (inputs ``x``, labels ``y``) and fooled
        ``fooled`` (a mask over ``rows``), with the adversarial inputs ``adv`` (one per fooled
        row), its cost and its seconds."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(component, rows)
        tmp = path.with_suffix(".tmp")
        save_file(
            {
                "positions": self.positions[rows.cpu()].contiguous(),
                "fooled": fooled.detach().cpu().to(torch.uint8).contiguous(),
                "adv": adv.detach().cpu().contiguous(),
            },
            str(tmp),
            metadata={
                "cost": json.dumps(cost.to_dict()),
                "seconds": repr(float(seconds)),
                "inputs": tensor_digest(x.detach().cpu(), y.detach().cpu()),
            },
        )
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        directory = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def forget(folder: str | Path) -> None:
    """Drop a cell's journal once its record is kept."""
    shutil.rmtree(folder, ignore_errors=True)
