"""The folder datasets: imagefolder: and cifar10:/cifar100:, on small files each test writes,
and their one-line refusals of malformed input (exit code 2)."""

from __future__ import annotations

import json

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
    assert "test_batch.bin does not exist" in line and "these are the python pickles" in line


def test_list_datasets_shows_the_folder_schemes():
    result = CliRunner().invoke(cli, ["list", "datasets"])
    assert result.exit_code == 0
    for scheme in ("safetensors:DIR", "imagefolder:DIR", "cifar10:DIR", "cifar100:DIR"):
        assert scheme in result.output


def test_list_datasets_shows_hf_disk():
    result = CliRunner().invoke(cli, ["list", "datasets"])
    assert result.exit_code == 0 and "hf-disk:DIR" in result.output


# ---------------------------------------------------------------------- streaming
def test_folder_datasets_decode_only_the_rows_asked_for(tmp_path):
    _write_tree(tmp_path, sizes=((8, 8), (8, 8), (8, 8)))
    data = load_dataset(f"imagefolder:{tmp_path}")
    assert len(data) == 6 and data.sample_shape == (3, 8, 8)
    whole = data.rows(0, 6)
    # replace the last image by one whose header reads but whose pixel data is cut short
    last = tmp_path / "dog" / "2.png"
    noise = torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8, generator=torch.Generator())
    Image.fromarray(noise.numpy()).save(last)
    last.write_bytes(last.read_bytes()[:100])
    fresh = load_dataset(f"imagefolder:{tmp_path}")
    assert torch.equal(fresh.rows(1, 4), whole[1:4])  # rows before it decode, it is never read
    with pytest.raises(UserError, match="2.png is not a readable image"):
        fresh.rows(4, 6)


def test_cifar_rows_are_read_from_the_files_per_range(tmp_path):
    for i in range(1, 6):
        (tmp_path / f"data_batch_{i}.bin").write_bytes(_cifar_records([i, i + 1], header=1))
    data = load_dataset(f"cifar10:{tmp_path}", split="train")
    assert data.y.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    across = data.rows(1, 5)  # spans three batch files
    assert across.shape == (4, 3, 32, 32)
    assert [round(float(r.max()) * 255) for r in across] == [1, 0, 1, 0]
    assert torch.equal(data.x[1:5], across)


def test_an_imagefolder_run_streams_shards(tmp_path):
    import robustbench_cl as rbcl
    from robustbench_cl.data.folders import ImageFolder

    digits = load_dataset("digits", split="test")
    for label in range(10):  # every class folder, so that folder order is label order
        (tmp_path / "digits" / str(label)).mkdir(parents=True)
    for index in range(24):
        folder = tmp_path / "digits" / f"{int(digits.y[index])}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.x[index, 0] * 255).round().to(torch.uint8)
        Image.fromarray(pixels.numpy(), mode="L").save(folder / f"{index:03d}.png")
    asked = []
    rows = ImageFolder.rows

    def counting(self, start, end):
        asked.append(end - start)
        return rows(self, start, end)

    config = {
        "suite": "folder",
        "seed": 0,
        "data": {"name": f"imagefolder:{tmp_path / 'digits'}", "n": 24},
        "models": [{"spec": "builtin:digits-cnn", "name": "cnn"}],
        "attacks": [{"attack": "fgsm", "threat": {"norm": "linf", "eps": 0.1}}],
        "engine": {"sanity_probe_size": 4, "batch_size": 8, "shard_size": 8},
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ImageFolder, "rows", counting)
        run_dir = rbcl.run(config, out=tmp_path / "run", profile=None)
    assert asked and max(asked) <= 8  # one shard of inputs at a time, never all 24
    records = [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]
    (cell,) = [r for r in records if r["type"] == "cell"]
    assert len(cell["outcomes"]) == 24 and cell["clean_accuracy"] > 0.8  # greyscale: 1 channel


# ---------------------------------------------------------------------- hf-disk
datasets = pytest.importorskip("datasets")


def _hf_images(n, size=(8, 8), mode="RGB"):
    return [
        Image.fromarray(
            torch.full((size[1], size[0], 3 if mode == "RGB" else 1), 10 * i, dtype=torch.uint8)
            .squeeze(-1)
            .numpy(),
            mode=mode,
        )
        for i in range(n)
    ]


def test_hf_disk_reads_a_dataset_dict_with_image_and_class_label_columns(tmp_path):
    features = datasets.Features(
        {"img": datasets.Image(), "fine": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"img": _hf_images(2), "fine": [2, 0]}, features=features
            ),
            "test": datasets.Dataset.from_dict(
                {"img": _hf_images(3), "fine": [0, 1, 2]}, features=features
            ),
        }
    )
    splits.save_to_disk(str(tmp_path / "ds"))
    test = load_dataset(f"hf-disk:{tmp_path / 'ds'}", split="test")
    assert test.sample_shape == (3, 8, 8) and test.n_classes == 3  # from the ClassLabel
    assert test.y.tolist() == [0, 1, 2]
    assert torch.allclose(test.rows(2, 3), torch.full((1, 3, 8, 8), 20 / 255))
    assert load_dataset(f"hf-disk:{tmp_path / 'ds'}", split="train").y.tolist() == [2, 0]
    resized = load_dataset(f"hf-disk:{tmp_path / 'ds'}?size=4")
    assert resized.x.shape == (3, 3, 4, 4)


def test_hf_disk_reads_one_dataset_of_arrays_with_named_columns(tmp_path):
    pixels = torch.arange(2 * 4 * 4, dtype=torch.uint8).view(2, 4, 4)
    table = datasets.Dataset.from_dict({"pix": pixels.tolist(), "digit": [7, 3]})
    table.save_to_disk(str(tmp_path / "ds"))
    data = load_dataset(f"hf-disk:{tmp_path / 'ds'}?image=pix&label=digit")
    assert data.sample_shape == (1, 4, 4) and data.n_classes == 8
    assert torch.allclose(data.x[:, 0], pixels.float() / 255)


def test_hf_disk_grayscale_images_keep_one_channel(tmp_path):
    table = datasets.Dataset.from_dict(
        {"image": _hf_images(2, mode="L"), "label": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    table.save_to_disk(str(tmp_path / "ds"))
    assert load_dataset(f"hf-disk:{tmp_path / 'ds'}").sample_shape == (1, 8, 8)


def test_hf_disk_refusals_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    line = _cli_error("attack", "fgsm", "--data", f"hf-disk:{tmp_path / 'empty'}", "--eps", "0.1")
    assert "is not a save_to_disk folder" in line
    table = datasets.Dataset.from_dict({"image": _hf_images(2), "y": [0, 1]})
    table.save_to_disk(str(tmp_path / "nolabel"))
    line = _cli_error("attack", "fgsm", "--data", f"hf-disk:{tmp_path / 'nolabel'}", "--eps", "0.1")
    assert "no label column" in line and "?label=COL" in line
    mixed = datasets.Dataset.from_dict(
        {"image": _hf_images(1) + _hf_images(1, size=(6, 6)), "label": [0, 1]}
    )
    mixed.save_to_disk(str(tmp_path / "mixed"))
    line = _cli_error("attack", "fgsm", "--data", f"hf-disk:{tmp_path / 'mixed'}", "--eps", "0.1")
    assert "row 1 is 6x6" in line and "?size=N" in line
    with pytest.raises(UserError, match="has splits"):
        datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "dict"))
        load_dataset(f"hf-disk:{tmp_path / 'dict'}?label=y", split="test")
    with pytest.raises(UserError, match="unknown option 'colour'"):
        load_dataset(f"hf-disk:{tmp_path / 'mixed'}?colour=1")
