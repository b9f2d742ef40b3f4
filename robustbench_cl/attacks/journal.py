"""What an ensemble's finished components found, kept on disk as each one finishes.

Standard AutoAttack on a real model runs for many minutes per batch, most of it in its later
components. A :class:`ComponentJournal` keeps, per component and per batch, which samples it
attacked, which it fooled, their adversarial inputs and the component's cost, in one
safetensors file written atomically (a temporary file, fsync, rename, fsync of the folder). An
interrupted run that is resumed skips every component whose samples are in the journal and
takes its outcomes from there. The components seed themselves (torchattacks reseeds each
call), so a resumed cell's outcomes are those of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import safe_open, save_file

from robustbench_cl.attacks.base import Cost
from robustbench_cl.utils import stable_hash


@dataclass
class Finished:
    """A component's journaled outcomes for the rows of a batch it already attacked."""

    done: torch.Tensor  # (rows,) bool: the component attacked this row in an earlier run
    fooled: torch.Tensor  # (rows,) bool: ... and fooled it
    adv: torch.Tensor  # (fooled rows, ...) the adversarial inputs of the fooled rows
    cost: Cost


class ComponentJournal:
    """The journal of one batch of one cell: ``folder`` is the cell's, ``positions`` the
    batch's samples (their positions in the evaluated subset, which name them across runs)."""

    def __init__(self, folder: str | Path, positions: torch.Tensor) -> None:
        self.folder = Path(folder)
        self.positions = positions.detach().cpu().long()

    def _files(self, component: str) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f"{component}-*.safetensors"))

    def finished(self, component: str, rows: torch.Tensor) -> Finished:
        """What earlier runs of ``component`` found for the batch's ``rows``."""
        device = rows.device
        wanted = self.positions[rows.cpu()]
        done = torch.zeros(len(wanted), dtype=torch.bool)
        fooled = torch.zeros(len(wanted), dtype=torch.bool)
        adv: dict[int, torch.Tensor] = {}
        cost = Cost()
        for path in self._files(component):
            with safe_open(str(path), framework="pt") as handle:
                positions = handle.get_tensor("positions")
                hits = torch.isin(wanted, positions)
                if not bool(hits.any()):
                    continue
                was_fooled = handle.get_tensor("fooled").bool()
                fooled_positions = positions[was_fooled]
                saved = handle.get_tensor("adv")
                meta = handle.metadata() or {}
            done |= hits
            for row in hits.nonzero().flatten().tolist():
                match = (fooled_positions == wanted[row]).nonzero().flatten()
                if len(match):
                    fooled[row] = True
                    adv[row] = saved[int(match[0])]
            cost = cost + Cost(**json.loads(meta.get("cost", "{}")))
        stacked = torch.stack([adv[row] for row in sorted(adv)]) if adv else torch.empty(0)
        return Finished(done.to(device), fooled.to(device), stacked.to(device), cost)

    def save(
        self,
        component: str,
        rows: torch.Tensor,
        fooled: torch.Tensor,
        adv: torch.Tensor,
        cost: Cost,
    ) -> None:
        """Keep that ``component`` attacked ``rows`` and fooled ``fooled`` (a mask over
        ``rows``) with the adversarial inputs ``adv`` (one per fooled row)."""
        positions = self.positions[rows.cpu()]
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{component}-{stable_hash(positions.tolist())[:16]}.safetensors"
        path = self.folder / name
        tmp = path.with_suffix(".tmp")
        save_file(
            {
                "positions": positions.contiguous(),
                "fooled": fooled.detach().cpu().to(torch.uint8).contiguous(),
                "adv": adv.detach().cpu().float().contiguous(),
            },
            str(tmp),
            metadata={"cost": json.dumps(cost.to_dict())},
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
