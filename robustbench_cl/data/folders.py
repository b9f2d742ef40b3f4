"""A user's own labelled images in the layouts they already have, read from local folders.

- ``imagefolder:DIR[?size=32]``: torchvision's ImageFolder tree, one subfolder per class, named
  classes sorted by name. ``DIR/train/`` and ``DIR/test/`` are the splits when they exist;
  otherwise ``DIR`` itself is the test split. Images of mixed sizes are refused (naming one)
  unless ``size`` resizes them all to ``size`` x ``size``. A folder of greyscale images gives one
  channel; any colour image makes every image RGB.
- ``cifar10:DIR`` / ``cifar100:DIR``: the binary version of CIFAR (``data_batch_*.bin`` and
  ``test_batch.bin``; ``train.bin`` and ``test.bin`` for CIFAR-100, fine labels), not the
  pickled python batches. ``DIR`` may be the folder that holds the ``.bin`` files or its parent.
- ``hf-disk:DIR[?image=COL&label=COL&size=N]``: a Hugging Face ``datasets`` folder written by
  ``save_to_disk`` (a ``DatasetDict`` with ``train``/``test`` splits, or one ``Dataset``, which is
  then the test split), with an image column and an integer label column (found by name or by
  feature type unless named). Needs the ``datasets`` extra.

Each is a :class:`LazyData`: the labels are read when the dataset opens, and every image is
checked then for size and readability from its header, but pixels are decoded only for the rows
the engine asks for (``rows(start, end)``), so ``engine.shard_size`` streams them as it streams
``safetensors:`` files. Inputs are float in [0, 1], (N, C, H, W).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_cl.data.base import LazyData, image_errors
from robustbench_cl.errors import UserError
from robustbench_cl.utils import parse_spec  # the models' scheme:path?key=value syntax

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
FOLDER_SCHEMES = ("imagefolder:", "cifar10:", "cifar100:", "hf-disk:")
IMAGE_COLUMNS = ("image", "img", "pixel_values", "pixels")
GREY_MODES = ("1", "L", "I", "I;16", "F")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")


def load_folder_dataset(name: str, split: str) -> LazyData:
    scheme, path, options = parse_spec(name)
    root = Path(path).expanduser()
    if scheme in ("cifar10", "cifar100"):
        if options:
            raise UserError("data.name", f"{scheme}: takes no options, got {sorted(options)[0]!r}")
        return CifarBinary(root, split, 10 if scheme == "cifar10" else 100, name)
    allowed = ("size",) if scheme == "imagefolder" else ("size", "image", "label")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        hint = "use ?size=N" if scheme == "imagefolder" else "use ?image=COL&label=COL&size=N"
        raise UserError("data.name", f"unknown option {unknown[0]!r}", hint)
    size = _size_option(options.get("size"))
    if scheme == "imagefolder":
        return ImageFolder(root, split, size, name)
    return HFDisk(root, split, size, name, options.get("image"), options.get("label"))


def _size_option(size: str | None) -> int | None:
    if size is None:
        return None
    try:
        resize = int(size)
    except ValueError:
        raise UserError("data.name", f"size must be an integer, got {size!r}") from None
    if resize < 1:
        raise UserError("data.name", f"size must be >= 1, got {resize}")
    return resize


def _pil_to_uint8(image: Any, size: int | None, mode: str) -> torch.Tensor:
    from PIL import Image

    image = image.convert(mode)
    if size is not None:
        image = image.resize((size, size), Image.BILINEAR)
    channels = 1 if mode == "L" else 3
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(image.size[1], image.size[0], channels).permute(2, 0, 1)


def _check_same_size(where: str, first: tuple[str, tuple[int, int]], size, name: str) -> None:
    if size != first[1]:
        raise UserError(
            "data.name",
            f"{where} is {size[0]}x{size[1]} but {first[0]} is {first[1][0]}x{first[1][1]}",
            f"resize them all with {name.partition('?')[0]}?size=N",
        )


# ---------------------------------------------------------------------- imagefolder
class ImageFolder(LazyData):
    def __init__(self, root: Path, split: str, size: int | None, name: str) -> None:
        from PIL import Image

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
        files, labels, first, grey = [], [], None, True
        for label, class_name in enumerate(classes):
            for file in sorted((folder / class_name).iterdir()):
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:  # the header only: size and format, no pixels yet
                    with Image.open(file) as image:
                        image_size = image.size
                        grey = grey and image.mode in GREY_MODES
                except image_errors() as error:
                    raise UserError(
                        "data.name", f"imagefolder: {file} is not a readable image ({error})"
                    ) from None
                if first is None:
                    first = (str(file), image_size)
                elif size is None:
                    _check_same_size(f"imagefolder: {file}", first, image_size, name)
                files.append(file)
                labels.append(label)
        if first is None:
            raise UserError(
                "data.name",
                f"imagefolder: no images under {folder}",
                f"supported: {', '.join(IMAGE_SUFFIXES)}",
            )
        width, height = (size, size) if size is not None else first[1]
        self.files, self.size, self.mode = files, size, "L" if grey else "RGB"
        y = torch.tensor(labels, dtype=torch.long)
        super().__init__(name, split, y, len(classes), (1 if grey else 3, height, width))

    def _read(self, start: int, end: int) -> torch.Tensor:
        from PIL import Image

        images = []
        for file in self.files[start:end]:
            try:
                with Image.open(file) as image:
                    images.append(_pil_to_uint8(image, self.size, self.mode))
            except image_errors() as error:  # truncated pixel data shows only when decoding
                raise UserError(
                    "data.name", f"imagefolder: {file} is not a readable image ({error})"
                ) from None
        return torch.stack(images)


# ---------------------------------------------------------------------- CIFAR binary
class CifarBinary(LazyData):
    def __init__(self, root: Path, split: str, n_classes: int, name: str) -> None:
        if not root.is_dir():
            raise UserError("data.name", f"{root} is not a folder", "check the path")
        if n_classes == 10:
            files = (
                ["test_batch.bin"]
                if split == "test"
                else [f"data_batch_{i}.bin" for i in range(1, 6)]
            )
            subfolder, header = "cifar-10-batches-bin", 1
        else:
            files, subfolder, header = [f"{split}.bin"], "cifar-100-binary", 2
        if not (root / files[0]).exists() and (root / subfolder / files[0]).exists():
            root = root / subfolder
        record = header + 3 * 32 * 32
        self.header, self.record = header, record
        self.paths: list[Path] = []
        self.offsets = [0]  # the first global row of each file
        labels = []
        for file in files:
            path = root / file
            if not path.is_file():
                test_file = "test_batch.bin" if n_classes == 10 else "test.bin"
                if split == "train" and (root / test_file).is_file():  # a test-only folder
                    fix = f"copy the train files ({', '.join(files)}) beside {test_file}"
                elif list(root.glob("*_batch*")) and not list(root.glob("*.bin")):
                    fix = "these are the python pickles: download the binary version"
                else:
                    fix = f"point at the folder of the binary version ({', '.join(files[:2])}...)"
                raise UserError("data.name", f"cifar{n_classes}: {path} does not exist", fix)
            length = path.stat().st_size
            if not length or length % record:
                raise UserError(
                    "data.name",
                    f"cifar{n_classes}: {path} is {length} bytes, not a whole number of "
                    f"{record}-byte records",
                    "re-extract the binary version of the dataset",
                )
            rows = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, record)
            labels.append(torch.from_numpy(np.array(rows[:, header - 1], dtype=np.int64)))
            self.paths.append(path)
            self.offsets.append(self.offsets[-1] + rows.shape[0])
        y = torch.cat(labels)  # CIFAR-100: the second byte of a record is the fine label
        if int(y.max()) >= n_classes:
            raise UserError(
                "data.name",
                f"cifar{n_classes}: a label is {int(y.max())}, beyond {n_classes - 1}",
                "use cifar100: for CIFAR-100" if n_classes == 10 else "check the files",
            )
        super().__init__(name, split, y, n_classes, (3, 32, 32))

    def _read(self, start: int, end: int) -> torch.Tensor:
        chunks = []
        for index, path in enumerate(self.paths):
            first, last = self.offsets[index], self.offsets[index + 1]
            lo, hi = max(start, first), min(end, last)
            if lo >= hi:
                continue
            rows = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, self.record)
            chunks.append(torch.from_numpy(np.array(rows[lo - first : hi - first, self.header :])))
        return torch.cat(chunks).view(-1, 3, 32, 32)


# ---------------------------------------------------------------------- hf-disk
def _damaged_arrow(method):  # noqa: ANN001, ANN202
    """A damaged Arrow file makes pyarrow raise anything (ArrowInvalid, OSError, even
    SystemError): one line naming the folder instead."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        try:
            return method(self, *args, **kwargs)
        except (UserError, MemoryError):
            raise
        except Exception as error:  # noqa: BLE001
            first = str(error).splitlines()[0] if str(error) else ""
            root = getattr(self, "root", None) or (args[0] if args else "the folder")
            raise UserError(
                "data.name",
                f"hf-disk: {root} could not be read ({type(error).__name__}: {first})",
                "write it again with save_to_disk",
            ) from None

    return wrapper


class HFDisk(LazyData):
    @_damaged_arrow
    def __init__(
        self,
        root: Path,
        split: str,
        size: int | None,
        name: str,
        image_column: str | None,
        label_column: str | None,
    ) -> None:
        try:
            import datasets
        except ImportError:
            raise UserError(
                "data.name",
                "hf-disk: needs the Hugging Face datasets package",
                "pip install 'robustbench_cl[datasets]'",
            ) from None
        if not root.is_dir():
            raise UserError("data.name", f"hf-disk: {root} is not a folder", "check the path")
        try:
            loaded = datasets.load_from_disk(str(root))
        except Exception as error:  # noqa: BLE001 - any unreadable folder is the user's to fix
            raise UserError(
                "data.name",
                f"hf-disk: {root} is not a save_to_disk folder ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})",
                "write it with Dataset.save_to_disk(DIR) or DatasetDict.save_to_disk(DIR)",
            ) from None
        if isinstance(loaded, datasets.DatasetDict):
            names = [split] if split == "train" else [split, "validation"]
            found = next((n for n in names if n in loaded), None)
            if found is None:
                raise UserError(
                    "data.name",
                    f"hf-disk: {root} has splits {sorted(loaded)}, not {split!r}",
                    f"save a {split!r} split (or use data.split / data.train_split)",
                )
            table = loaded[found]
        else:
            table = loaded
        # a damaged Arrow file is memory-mapped as is: without a full validation, reading a row
        # whose offsets point outside the file crashes the process instead of raising
        table.data.table.validate(full=True)
        if len(table) == 0:
            raise UserError("data.name", f"hf-disk: {root} ({split}) has no rows")
        features = table.features
        image_column = self._column(
            root,
            features,
            image_column,
            IMAGE_COLUMNS,
            lambda f: isinstance(f, datasets.Image),
            "image",
        )
        label_column = self._column(
            root,
            features,
            label_column,
            LABEL_COLUMNS,
            lambda f: isinstance(f, datasets.ClassLabel),
            "label",
        )
        label_feature = features[label_column]
        try:
            y = torch.as_tensor(np.asarray(table[label_column]))
        except (TypeError, ValueError):
            y = torch.empty(0)
        if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise UserError(
                "data.name",
                f"hf-disk: column {label_column!r} must hold one integer label per row",
                "name the label column with ?label=COL",
            )
        y = y.long()
        if isinstance(label_feature, datasets.ClassLabel):
            n_classes = label_feature.num_classes
        else:
            n_classes = int(y.max()) + 1
        if int(y.min()) < 0 or int(y.max()) >= n_classes:
            raise UserError(
                "data.name",
                f"hf-disk: labels in {label_column!r} must lie in 0..{n_classes - 1}",
                "fix the labels (a -1 means unlabelled: drop those rows)",
            )
        self.is_pil = isinstance(features[image_column], datasets.Image)
        self.table, self.column, self.size, self.root = table, image_column, size, root
        if self.is_pil:  # sizes and modes from the encoded bytes' headers, no pixels decoded
            raw = table.cast_column(image_column, datasets.Image(decode=False))
            self.raw = raw
            first, grey = None, True
            for index in range(len(raw)):
                with self._open(index) as image:
                    grey = grey and image.mode in GREY_MODES
                    if first is None:
                        first = (f"row {index}", image.size)
                    elif size is None:
                        _check_same_size(f"hf-disk: {root} row {index}", first, image.size, name)
            self.mode = "L" if grey else "RGB"
            width, height = (size, size) if size is not None else first[1]
            shape = (1 if self.mode == "L" else 3, height, width)
        else:
            if size is not None:
                raise UserError(
                    "data.name",
                    f"hf-disk: ?size= resizes images; column {image_column!r} holds arrays",
                    "drop ?size= or store a datasets.Image column",
                )
            shape = tuple(self._array(0).shape)
        super().__init__(name, split, y, n_classes, shape)

    @staticmethod
    def _column(root, features, chosen, names, is_type, what) -> str:
        if chosen is not None:
            if chosen not in features:
                raise UserError(
                    "data.name",
                    f"hf-disk: {root} has no column {chosen!r} (columns: {sorted(features)})",
                    f"name the {what} column with ?{what}=COL",
                )
            return chosen
        typed = [column for column, feature in features.items() if is_type(feature)]
        named = [column for column in names if column in features]
        found = (typed or named or [None])[0]
        if found is None:
            raise UserError(
                "data.name",
                f"hf-disk: no {what} column in {root} (columns: {sorted(features)})",
                f"name it with ?{what}=COL",
            )
        return found

    def _open(self, index: int):
        from PIL import Image

        cell = self.raw[index][self.column]
        try:
            if cell.get("bytes"):
                return Image.open(io.BytesIO(cell["bytes"]))
            return Image.open(cell["path"])
        except (*image_errors(), TypeError) as error:
            raise UserError(
                "data.name", f"hf-disk: {self.root} row {index} is not a readable image ({error})"
            ) from None

    def _array(self, index: int) -> torch.Tensor:
        value = torch.as_tensor(np.asarray(self.table[index][self.column]))
        if value.dim() == 2:
            value = value.unsqueeze(0)
        elif value.dim() == 3 and value.shape[-1] in (1, 3, 4) and value.shape[0] not in (1, 3):
            value = value.permute(2, 0, 1)  # HWC -> CHW
        if value.dim() != 3:
            raise UserError(
                "data.name",
                f"hf-disk: {self.root} row {index} of {self.column!r} has shape "
                f"{list(value.shape)}",
                "store images as (H, W), (H, W, C) or (C, H, W)",
            )
        if value.dtype.is_floating_point:
            if not bool(((value >= 0) & (value <= 1)).all()):
                raise UserError(
                    "data.name",
                    f"hf-disk: {self.root} row {index} of {self.column!r} has floats outside [0, 1]",
                    "store uint8 pixels or floats in [0, 1]",
                )
            return value.float()
        if value.dtype != torch.uint8:
            if value.dtype == torch.bool or int(value.min()) < 0 or int(value.max()) > 255:
                raise UserError(
                    "data.name",
                    f"hf-disk: {self.root} row {index} of {self.column!r} is not 0..255 pixels",
                    "store uint8 pixels or floats in [0, 1]",
                )
            value = value.to(torch.uint8)
        return value

    @_damaged_arrow
    def _read(self, start: int, end: int) -> torch.Tensor:
        images = []
        for index in range(start, end):
            if self.is_pil:
                with self._open(index) as image:
                    try:
                        images.append(_pil_to_uint8(image, self.size, self.mode))
                    except (
                        OSError,
                        SyntaxError,
                        ValueError,
                    ) as error:
                        raise UserError(
                            "data.name",
                            f"hf-disk: {self.root} row {index} is not a readable image ({error})",
                        ) from None
            else:
                value = self._array(index)
                if tuple(value.shape) != self._shape:
                    raise UserError(
                        "data.name",
                        f"hf-disk: {self.root} row {index} has shape {list(value.shape)}, "
                        f"row 0 {list(self._shape)}",
                        "store images of one shape",
                    )
                images.append(value)
        batch = torch.stack([image.float() for image in images])
        return batch if any(i.is_floating_point() for i in images) else batch.to(torch.uint8)
