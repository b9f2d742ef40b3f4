"""Image-caption data for retrieval: a synthetic shapes corpus and a Karpathy-JSON loader.

``shapes`` renders one coloured shape per 32x32 image with Pillow, deterministically from a seed.
An image is described by five attributes (shape, colour, position, size, texture; 480
combinations) and carries five paraphrased captions. The test split holds distinct attribute
combinations, so every test caption has exactly one right image and R@1 is well defined.

``karpathy:DIR`` reads real data in the Karpathy split format used for COCO and Flickr30K:
``DIR/dataset_*.json`` (``{"images": [{"filename", "filepath"?, "split", "sentences": [{"raw"}]}]}``)
with the image files under ``DIR/images/`` (or ``DIR/<filepath>/``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_cl.data.subset import seeded_indices
from robustbench_cl.errors import UserError
from robustbench_cl.utils import tensor_digest

SHAPES = ("circle", "square", "triangle", "diamond")
SHAPE_SYNONYMS = {
    "circle": "round disc",
    "square": "box",
    "triangle": "three-sided shape",
    "diamond": "rhombus",
}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
    "purple": (150, 50, 190),
    "orange": (240, 140, 30),
}
POSITIONS = {  # centre of the shape, in a 32x32 image
    "top left": (9, 9),
    "top right": (23, 9),
    "bottom left": (9, 23),
    "bottom right": (23, 23),
    "center": (16, 16),
}
SIZES = {"small": 5, "large": 8}  # half-width in pixels
TEXTURES = ("plain", "striped")
TEMPLATES = (
    "a {size} {texture} {colour} {shape} in the {position}",
    "{position}: one {texture} {colour} {synonym}, {size}",
    "there is a {size} {texture} {colour} {shape} at the {position}",
    "{size} {synonym} coloured {colour}, {texture}, placed {position}",
    "picture of a {colour} {texture} {shape} near the {position}, {size} size",
)
N_COMBINATIONS = len(SHAPES) * len(COLOURS) * len(POSITIONS) * len(SIZES) * len(TEXTURES)
IMAGE_SIZE = 32


@dataclass(frozen=True)
class CaptionData:
    """Images (N, 3, H, W) in [0, 1] and captions; ``caption_image[j]`` is caption j's image."""

    name: str
    split: str
    images: torch.Tensor
    captions: tuple[str, ...]
    caption_image: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def bounds(self) -> tuple[float, float]:
        return (0.0, 1.0)

    def subset(self, n: int | None, seed: int | None = None) -> CaptionData:
        """``n`` images and all of their captions (everything when ``n`` is ``None``): chosen by
        ``seed``, in stored order (evaluation: the first ``n`` of a file may all be one kind of
        scene), or the first ``n`` when ``seed`` is ``None`` (training sets, whose choice is
        part of the fits' cache keys)."""
        if n is None or n >= len(self):
            return self
        chosen = torch.arange(n) if seed is None else seeded_indices(len(self), n, seed)
        renumber = torch.full((len(self),), -1, dtype=torch.long)
        renumber[chosen] = torch.arange(n)
        owner = renumber[self.caption_image]
        keep = owner >= 0
        captions = tuple(c for c, k in zip(self.captions, keep.tolist()) if k)
        return CaptionData(self.name, self.split, self.images[chosen], captions, owner[keep])

    def captions_of(self) -> list[list[int]]:
        """Caption indices per image."""
        owners: list[list[int]] = [[] for _ in range(len(self))]
        for j, i in enumerate(self.caption_image.tolist()):
            owners[i].append(j)
        return owners

    def digest(self) -> str:
        return tensor_digest(self.images, self.caption_image) + str(hash(self.captions) & 0xFFFF)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "n": len(self),
            "n_captions": len(self.captions),
            "shape": list(self.images.shape[1:]),
        }


def _combination(index: int) -> dict[str, str]:
    index, texture = divmod(index, len(TEXTURES))
    index, size = divmod(index, len(SIZES))
    index, position = divmod(index, len(POSITIONS))
    shape, colour = divmod(index, len(COLOURS))
    return {
        "shape": SHAPES[shape],
        "colour": list(COLOURS)[colour],
        "position": list(POSITIONS)[position],
        "size": list(SIZES)[size],
        "texture": TEXTURES[texture],
    }


def _render(attributes: dict[str, str], rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw

    scale = 4  # draw at 128x128, downsample with antialiasing
    background = rng.uniform(200, 245)
    canvas = Image.new("RGB", (IMAGE_SIZE * scale, IMAGE_SIZE * scale), (int(background),) * 3)
    draw = ImageDraw.Draw(canvas)
    cx, cy = POSITIONS[attributes["position"]]
    cx, cy = cx + rng.uniform(-1.5, 1.5), cy + rng.uniform(-1.5, 1.5)
    r = SIZES[attributes["size"]] * rng.uniform(0.9, 1.1)
    colour = np.clip(np.array(COLOURS[attributes["colour"]]) + rng.normal(0, 10, 3), 0, 255)
    fill = tuple(int(c) for c in colour)
    box = [(cx - r) * scale, (cy - r) * scale, (cx + r) * scale, (cy + r) * scale]
    shape = attributes["shape"]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon(
            [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=fill
        )
    else:
        mx, my = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        draw.polygon([(mx, box[1]), (box[2], my), (mx, box[3]), (box[0], my)], fill=fill)
    image = np.asarray(canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS), dtype=np.float32)
    if attributes["texture"] == "striped":
        stripes = (np.arange(IMAGE_SIZE) // 2 % 2 == 0)[None, :, None]  # vertical stripes
        mask = np.abs(image - background).sum(-1, keepdims=True) > 60
        image = np.where(mask & stripes, image * 0.45, image)
    image = image + rng.normal(0, 4, image.shape)  # sensor noise
    return np.clip(image / 255.0, 0, 1).transpose(2, 0, 1)


def shape_captions(attributes: dict[str, str]) -> list[str]:
    values = dict(attributes, synonym=SHAPE_SYNONYMS[attributes["shape"]])
    return [template.format(**values) for template in TEMPLATES]


def make_shapes(split: str, n: int | None = None, seed: int = 0) -> CaptionData:
    """The shapes corpus: 3000 train images (random combinations), 200 test (distinct ones)."""
    if split not in ("train", "test"):
        raise UserError("data.split", f"unknown split {split!r}", "use 'train' or 'test'")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    if split == "train":
        combos = rng.integers(0, N_COMBINATIONS, n or 3000)
    else:
        combos = rng.permutation(N_COMBINATIONS)[: min(n or 200, N_COMBINATIONS)]
    images, captions, owners = [], [], []
    for i, combo in enumerate(combos.tolist()):
        attributes = _combination(combo)
        images.append(_render(attributes, rng))
        for caption in shape_captions(attributes):
            captions.append(caption)
            owners.append(i)
    return CaptionData(
        "shapes",
        split,
        torch.from_numpy(np.stack(images)).float(),
        tuple(captions),
        torch.tensor(owners, dtype=torch.long),
    )


def load_karpathy(directory: str | Path, split: str, image_size: int = 224) -> CaptionData:
    """Real image-caption data from a local folder in the Karpathy split JSON format."""
    from PIL import Image

    root = Path(directory)
    files = sorted(root.glob("dataset*.json"))
    if not root.is_dir() or not files:
        raise UserError(
            "data.name",
            f"no Karpathy JSON (dataset_*.json) in {str(root)!r}",
            "point karpathy:DIR at a folder with dataset_coco.json or dataset_flickr30k.json",
        )
    entries = json.loads(files[0].read_text())["images"]
    wanted = {"train": ("train", "restval"), "test": ("test",)}[split]
    images, captions, owners = [], [], []
    for entry in entries:
        if entry.get("split") not in wanted:
            continue
        folder = root / entry["filepath"] if entry.get("filepath") else root / "images"
        path = folder / entry["filename"]
        if not path.exists():
            raise UserError("data", f"image {str(path)!r} listed in {files[0].name} is missing")
        with Image.open(path) as image:
            image = image.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
            array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        index = len(images)
        images.append(array)
        for sentence in entry["sentences"]:
            captions.append(sentence["raw"].strip())
            owners.append(index)
    if not images:
        raise UserError("data.split", f"no {split} images in {files[0].name}", "check the split")
    return CaptionData(
        f"karpathy:{root}",
        split,
        torch.from_numpy(np.stack(images)),
        tuple(captions),
        torch.tensor(owners, dtype=torch.long),
    )


def load_captions(name: str, split: str) -> CaptionData:
    """``shapes`` or ``karpathy:DIR[?size=224]``."""
    if name == "shapes":
        return make_shapes(split)
    if name.startswith("karpathy:"):
        target, _, query = name.removeprefix("karpathy:").partition("?")
        size = int(query.removeprefix("size=")) if query.startswith("size=") else 224
        return load_karpathy(target, split, size)
    raise UserError(
        "data.name",
        f"unknown image-caption dataset {name!r}",
        "use shapes or karpathy:DIR (a folder in the Karpathy JSON format)",
    )
