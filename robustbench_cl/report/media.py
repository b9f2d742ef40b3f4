"""Images and text for the report: example images as inline PNG, PII masking, truncation."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import torch

from robustbench_cl.errors import UserError
from robustbench_cl.paths import inside
from robustbench_cl.privacy.metrics import mask_pii  # noqa: F401  (the report's filter)

#: example rows shown per cell, and in the whole report
EXAMPLES_PER_CELL = 3
EXAMPLES_TOTAL = 24


def png_data_uri(image: torch.Tensor, bounds: tuple[float, float] | None = (0.0, 1.0)) -> str:
    """A C x H x W tensor as a ``data:image/png`` URI (grayscale for one channel)."""
    from PIL import Image

    low, high = bounds if bounds is not None else (float(image.min()), float(image.max()))
    scaled = ((image.float() - low) / max(high - low, 1e-12)).clamp(0, 1)
    array = (scaled * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        picture = Image.fromarray(array[:, :, 0], mode="L")
    else:
        picture = Image.fromarray(array[:, :, :3], mode="RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def save_png(image: torch.Tensor, path: Path) -> Path:
    """A C x H x W image in [0, 1] as a PNG (grayscale for one channel)."""
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    array = array[0] if array.shape[0] == 1 else array.permute(1, 2, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.numpy()).save(path)
    return path


def truncate(text: str, limit: int = 400) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def run_file(run_dir: Path | None, relative: str | None) -> Path | None:
    """A file inside the run directory (never outside it), if it exists."""
    if run_dir is None or not relative:
        return None
    try:
        path = inside(run_dir, relative)
    except UserError:  # a record pointing elsewhere (a damaged or hostile cells.jsonl)
        return None
    return path if path.exists() else None


def eps_label(threat: dict[str, Any]) -> str:
    """The label the config wrote (``linf 8/255``); else ``linf 12/255`` when eps is a whole
    number of 255ths, else ``linf 0.05``."""
    if threat.get("eps_label"):
        return f"{threat['norm']} {threat['eps_label']}"
    from robustbench_cl.engine.summary import in_255ths

    return f"{threat['norm']} {in_255ths(threat['eps'])}"
