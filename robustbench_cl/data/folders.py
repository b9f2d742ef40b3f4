"""A user's own labelled images in the layouts they already have, read from local folders.

- ``imagefolder:DIR[?size=32]``: torchvision's ImageFolder tree, one subfolder per class, named
  classes sorted by name. ``DIR/train/`` and ``DIR/test/`` are the splits when they exist;
  otherwise ``DIR`` itself is the test split. Images of mixed sizes are refused (naming one)
  unless ``size`` resizes them all to ``size`` x ``size``.
- ``cifar10:DIR`` / ``cifar100:DIR``: the binary version of CIFAR (``data_batch_*.bin`` and
  ``test_batch.bin``; ``train.bin`` and ``test.bin`` for CIFAR-100, fine labels), not the
  pickled python batches. ``DIR`` may be the folder that holds the ``.bin`` files or its parent.

Both give a :class:`TensorData` in memory, float in [0, 1], (N, C, H, W).
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustbench_cl.data.base import TensorData
from robustbench_cl.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
FOLDER_SCHEMES = ("imagefolder:", "cifar10:", "cifar100:")


def load_folder_dataset(name: str, split: str) -> TensorData:
    from robustbench_cl.models import parse_spec  # the same scheme:path?key=value syntax

    scheme, path, options = parse_spec(name)
    if scheme == "imagefolder":
        size = options.pop("size", None)
        if options:
            raise UserError("data.name", f"unknown option {sorted(options)[0]!r}", "use ?size=N")
        try:
            resize = int(size) if size is not None else None
        except ValueError:
            raise UserError("data.name", f"size must be an integer, got {size!r}") from None
        if resize is not None and resize < 1:
            raise UserError("data.name", f"size must be >= 1, got {resize}")
        return image_folder(Path(path).expanduser(), split, resize, name)
    if options:
        raise UserError("data.name", f"{scheme}: takes no options, got {sorted(options)[0]!r}")
    return cifar_binary(Path(path).expanduser(), split, 10 if scheme == "cifar10" else 100, name)


# ---------------------------------------------------------------------- imagefolder
def image_folder(root: Path, split: str, size: int | None, name: str) -> TensorData:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise UserError("data.name", f"imagefolder: {root} is not a folder", "check the path")
    folder = root / split if (root / split).is_dir() else root
    if folder == root and split == "train" and (root / "test").is_dir():
        raise UserError("data.name", f"imagefolder: {root} has no train/ folder", "add train/")
    classes = sorted(
        p.name for p in folder.iterdir() if p.is_dir() and p.name not in ("train", "test")
    )
    if not classes:
        raise UserError(
            "data.name",
            f"imagefolder: {folder} has no class subfolders",
            "put each class's images in DIR/<class>/",
        )
    images, labels, first = [], [], None
    for label, class_name in enumerate(classes):
        for file in sorted((folder / class_name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    image = image.convert("RGB")
                    if size is not None:
                        image = image.resize((size, size), Image.BILINEAR)
                    image.load()
            except (UnidentifiedImageError, OSError) as error:
                raise UserError(
                    "data.name", f"imagefolder: {file} is not a readable image ({error})"
                ) from None
            if first is None:
                first = (file, image.size)
            elif image.size != first[1]:
                raise UserError(
                    "data.name",
                    f"imagefolder: {file} is {image.size[0]}x{image.size[1]} but {first[0]} is "
                    f"{first[1][0]}x{first[1][1]}",
                    f"resize them all with {name.partition('?')[0]}?size=N",
                )
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            images.append(pixels.view(image.size[1], image.size[0], 3).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise UserError(
            "data.name",
            f"imagefolder: no images under {folder}",
            f"supported: {', '.join(IMAGE_SUFFIXES)}",
        )
    x = torch.stack(images).float().div_(255)
    y = torch.tensor(labels, dtype=torch.long)
    return TensorData(name, split, x, y, n_classes=len(classes))


# ---------------------------------------------------------------------- CIFAR binary
def cifar_binary(root: Path, split: str, n_classes: int, name: str) -> TensorData:
    if not root.is_dir():
        raise UserError("data.name", f"{root} is not a folder", "check the path")
    if n_classes == 10:
        files = (
            ["test_batch.bin"] if split == "test" else [f"data_batch_{i}.bin" for i in range(1, 6)]
        )
        subfolder, header = "cifar-10-batches-bin", 1
    else:
        files, subfolder, header = [f"{split}.bin"], "cifar-100-binary", 2
    if not (root / files[0]).exists() and (root / subfolder / files[0]).exists():
        root = root / subfolder
    record = header + 3 * 32 * 32
    chunks = []
    for file in files:
        path = root / file
        if not path.is_file():
            raise UserError(
                "data.name",
                f"cifar{n_classes}: {path} does not exist",
                f"point at the folder of the binary version ({', '.join(files[:2])}...), "
                "not the python pickles",
            )
        raw = path.read_bytes()
        if not raw or len(raw) % record:
            raise UserError(
                "data.name",
                f"cifar{n_classes}: {path} is {len(raw)} bytes, not a whole number of "
                f"{record}-byte records",
                "re-extract the binary version of the dataset",
            )
        chunks.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, record))
    rows = torch.cat(chunks)
    y = rows[:, header - 1].long()  # CIFAR-100: the second byte is the fine label
    if int(y.max()) >= n_classes:
        raise UserError(
            "data.name",
            f"cifar{n_classes}: a label is {int(y.max())}, beyond {n_classes - 1}",
            "use cifar100: for CIFAR-100" if n_classes == 10 else "check the files",
        )
    x = rows[:, header:].reshape(-1, 3, 32, 32).float().div_(255)
    return TensorData(name, split, x, y, n_classes=n_classes)
