"""The folder datasets: imagefolder: and cifar10:/cifar100:, on small files each test writes,
and their one-line refusals of malformed input (exit code 2)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from robustbench_cl.cli.main import cli
from robustbench_cl.data import load_dataset
from robustbench_cl.errors import UserError

Image = pytest.importorskip("PIL.Image")


def _write_tree(root, sizes=((8, 8), (8, 8)), classes=("cat", "dog")):
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for index, size in enumerate(sizes):
            pixels = torch.full((size[1], size[0], 3), 40 * label + index, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(root / name / f"{index}.png")


def _cli_error(*args):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_imagefolder_reads_classes_in_name_order(tmp_path):
    _write_tree(tmp_path / "data" / "test")
    _write_tree(tmp_path / "data" / "train", sizes=((8, 8),))
    data = load_dataset(f"imagefolder:{tmp_path / 'data'}", split="test")
    assert data.x.shape == (4, 3, 8, 8) and data.n_classes == 2
    assert data.y.tolist() == [0, 0, 1, 1]
    assert torch.allclose(data.x[3, :, 0, 0], torch.full((3,), 41 / 255))
    assert len(load_dataset(f"imagefolder:{tmp_path / 'data'}", split="train")) == 2


def test_imagefolder_refuses_mixed_sizes_naming_a_file_unless_resized(tmp_path):
    _write_tree(tmp_path, sizes=((8, 8), (10, 6)))
    line = _cli_error("attack", "fgsm", "--data", f"imagefolder:{tmp_path}", "--eps", "0.1")
    assert "1.png is 10x6" in line and "?size=N" in line
    data = load_dataset(f"imagefolder:{tmp_path}?size=5", split="test")
    assert data.x.shape == (4, 3, 5, 5)


def test_imagefolder_refuses_a_broken_image_and_an_empty_tree(tmp_path):
    _write_tree(tmp_path)
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    assert "broken.png is not a readable image" in _cli_error(
        "attack", "fgsm", "--data", f"imagefolder:{tmp_path}", "--eps", "0.1"
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class subfolders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    with pytest.raises(UserError, match="unknown option 'colour'"):
        load_dataset(f"imagefolder:{tmp_path}?colour=1")


def _cifar_records(labels, header):
    rows = []
    for index, label in enumerate(labels):
        head = bytes([label % 20, label]) if header == 2 else bytes([label])
        rows.append(head + bytes([index % 256]) * 3072)
    return b"".join(rows)


def test_cifar10_and_cifar100_binary_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(_cifar_records([3, 7, 9], header=1))
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(_cifar_records([i], header=1))
    data = load_dataset(f"cifar10:{tmp_path}", split="test")  # the parent folder works too
    assert data.x.shape == (3, 3, 32, 32) and data.y.tolist() == [3, 7, 9]
    assert float(data.x[1].max()) == pytest.approx(1 / 255)
    assert load_dataset(f"cifar10:{folder}", split="train").y.tolist() == [1, 2, 3, 4, 5]
    (tmp_path / "c100").mkdir()
    (tmp_path / "c100" / "test.bin").write_bytes(_cifar_records([42, 99], header=2))
    hundred = load_dataset(f"cifar100:{tmp_path / 'c100'}", split="test")
    assert hundred.y.tolist() == [42, 99] and hundred.n_classes == 100


def test_cifar_refuses_a_truncated_batch_and_the_python_pickles(tmp_path):
    (tmp_path / "test_batch.bin").write_bytes(_cifar_records([1, 2], header=1)[:-5])
    line = _cli_error("attack", "fgsm", "--data", f"cifar10:{tmp_path}", "--eps", "0.1")
    assert "not a whole number of 3073-byte records" in line
    pickles = tmp_path / "py"
    pickles.mkdir()
    (pickles / "test_batch").write_bytes(b"\x80\x04")
    line = _cli_error("attack", "fgsm", "--data", f"cifar10:{pickles}", "--eps", "0.1")
    assert "test_batch.bin does not exist" in line and "not the python pickles" in line


def test_list_datasets_shows_the_folder_schemes():
    result = CliRunner().invoke(cli, ["list", "datasets"])
    assert result.exit_code == 0
    for scheme in ("safetensors:DIR", "imagefolder:DIR", "cifar10:DIR", "cifar100:DIR"):
        assert scheme in result.output
