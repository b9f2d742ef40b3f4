"""Protecting a user's own screenshots with a trained DualTAP protector (``robustbench-cl protect``).

A user's screenshot has no ground truth, so the attention comes from EasyOCR's own reading: each
detected text line is a box with the text EasyOCR read in it. Lines that match a ``--keep``
keyword (the task rule of the metrics) are task text, every other line is private. The surrogate's
gradients on those texts give the contrastive attention, exactly as in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_cl.data.privscreen import PiiField, Screen, TaskItem
from robustbench_cl.errors import UserError


def load_protector(path: Path):  # noqa: ANN201
    """A ``defend dualtap`` artifact: the defense (settings) and its protector module."""
    from robustbench_cl.defenses import make_defense
    from robustbench_cl.models.artifacts import (
        artifact_exists,
        load_artifact_config,
        load_artifact_weights,
        with_extension,
    )

    base = path.with_suffix("") if path.suffix in (".json", ".safetensors") else path
    if not artifact_exists(base):
        raise UserError(
            "--protector",
            f"no protector artifact at {with_extension(base, '.safetensors')}",
            "train one with `robustbench-cl defend dualtap -o PATH`",
        )
    config = load_artifact_config(base)
    if config.get("defense") != "dualtap":
        raise UserError(
            "--protector", f"{base} is not a dualtap protector", "train one with `defend dualtap`"
        )
    defense = make_defense("dualtap", **config["settings"])
    protector = load_artifact_weights(base, defense.new_protector()).eval()
    return defense, protector


def screen_from_reading(key: str, image: np.ndarray, detections: list, keep: list[str]) -> Screen:
    from robustbench_cl.privacy.metrics import task_success

    pii, tasks = [], []
    for detection in detections:
        if any(task_success(word, detection.text) for word in keep):
            tasks.append(TaskItem(detection.text, "", detection.box))
        elif detection.text.strip():
            pii.append(PiiField("text", detection.text, detection.box))
    return Screen(key, "user", image, pii, tasks)


def protect_files(
    protector_path: Path, images: list[Path], output: Path, keep: list[str]
) -> list[dict[str, Any]]:
    from PIL import Image

    from robustbench_cl.data.privscreen import screen_tensor
    from robustbench_cl.defenses.protectors import quantise
    from robustbench_cl.models.ocr import RecognizerSurrogate
    from robustbench_cl.privacy.routers import EasyOCRRouter

    defense, protector = load_protector(protector_path)
    missing = [str(p) for p in images if not p.is_file()]
    if missing:
        raise UserError(
            "IMAGES", f"no such file: {missing[0]}", "give paths of PNG or JPEG screenshots"
        )
    router, surrogate = EasyOCRRouter(), RecognizerSurrogate()
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in images:
        try:
            image = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8).copy()
        except OSError as error:
            raise UserError(
                "IMAGES", f"{path} is not an image ({error})", "give PNG or JPEG files"
            ) from None
        screen = screen_from_reading(path.name, image, router.read(image), keep)
        x = screen_tensor([screen])
        attention = defense.attention_for(surrogate, x, [screen])
        with torch.no_grad():
            protected = quantise(protector(x, attention))
        target = output / (path.stem + ".png")
        Image.fromarray((protected[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()).save(
            target
        )
        rows.append(
            {
                "image": str(path),
                "private": len(screen.pii),
                "kept": len(screen.tasks),
                "linf": float((protected - x).abs().amax()) * 255,
                "output": str(target),
            }
        )
    return rows
