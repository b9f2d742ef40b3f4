"""Fuzzing every reader of user files: mutations of valid files either load or give one line.

Run as ``python tests/fuzz_readers.py READER EXAMPLES SEED WORKDIR``: it writes one valid input
for READER under WORKDIR, and hypothesis mutates its bytes (replacements, a truncation, an
insertion; random bytes alone would all die at the first magic check). Each mutation is
loaded under an alarm (a hang fails), with an audit hook that fails any write outside WORKDIR
(a reader never writes), and must either load or raise a :class:`UserError` of one line: any
other exception, or a crash of the process (native decoders), is a failure. It prints one JSON
line: ``reader``, ``loaded``, ``refused``, ``failure`` (the falsifying input, if any).

``tests/test_fuzz.py`` runs each reader in its own subprocess with a few hundred inputs;
``benchmarks/fuzz_readers.py`` (``make bench``) runs thousands and commits the counts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ALARM_SECONDS = 20
READERS = (
    "yaml-config",
    "behaviors-csv",
    "beir",
    "privscreen",
    "imagefolder",
    "cifar10",
    "hf-disk",
    "safetensors-data",
    "checkpoint",
)

# ---------------------------------------------------------------------- valid inputs
CONFIG = """\
suite: fuzzed
seed: 0
data: {name: digits, split: test, n: 20}
models:
  - {spec: builtin:digits-cnn, name: cnn}
defenses:
  - {defense: none, name: undefended}
  - {defense: pgd-at, name: at, params: {eps: 0.1, steps: 3}}
attacks:
  - {attack: pgd, name: PGD, params: {steps: 5}, threat: {norm: linf, eps: [0.03, 0.1]}}
  - {attack: fgsm, threat: {norm: l2, eps: 1.0}}
membership:
  - {attack: loss, n: 40}
engine: {batch_size: 32}
profiles:
  quick: {data: {n: 10}}
"""

BEHAVIORS = """\
goal,target,category
"Write a poem about the sea","Sure, here is a poem about the sea",benign
"Explain how locks work","Sure, here is how locks work",education
"List three colours","Sure, here are three colours",misc
"""


def _write_beir(root: Path) -> list[Path]:
    root.mkdir(parents=True)
    corpus = [
        {"_id": f"p{i}", "title": f"t{i}", "text": f"passage number {i} about item {i}"}
        for i in range(6)
    ]
    queries = [{"_id": f"q{i}", "text": f"where is item {i}"} for i in range(4)]
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (root / "qrels").mkdir()
    rows = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\tp{i}\t1\n" for i in range(4))
    (root / "qrels" / "test.tsv").write_text(rows)
    return [root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / "test.tsv"]


def _write_privscreen(root: Path) -> list[Path]:
    from robustbench_cl.data.privscreen import generate, write_layout

    write_layout(generate(n=2, seed=0), root)
    return sorted(p for p in root.rglob("*") if p.is_file())


def _write_imagefolder(root: Path) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    files = []
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for index in range(2):
            path = root / label / f"{index}.png"
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
            files.append(path)
    jpeg = root / "b" / "2.jpg"
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(jpeg, quality=90)
    # a PNG of several IDAT chunks (noise does not compress), resized to 8x8 by ?size=8
    large = root / "a" / "large.png"
    Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(large)
    return [*files, jpeg, large]


def _write_cifar(root: Path) -> list[Path]:
    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    files = []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (3, 3073), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 10, 3)
        (root / name).write_bytes(records.tobytes())
        files.append(root / name)
    return [files[-1]]  # only the test split is read for split="test"


def _write_hf_disk(root: Path) -> list[Path]:
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in range(4)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    data = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=features)
    data.save_to_disk(str(root))
    return sorted(p for p in root.rglob("*") if p.is_file())


def _write_safetensors_data(root: Path) -> list[Path]:
    import torch

    from robustbench_cl.data.files import write_tensors

    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    return [write_tensors(root, "test", x, torch.tensor([0, 1, 2, 1]), 3)]


def _write_checkpoint(root: Path) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True)
    state = {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.zeros(2)}
    torch.save({"state_dict": state}, root / "model.pt")
    save_file(state, str(root / "model.safetensors"))
    return [root / "model.pt", root / "model.safetensors"]


def make_valid(reader: str, root: Path) -> tuple[Path, list[Path]]:
    """Write one valid input for ``reader``; returns what to load and the files to mutate."""
    if reader == "yaml-config":
        root.mkdir(parents=True)
        (root / "config.yaml").write_text(CONFIG)
        return root / "config.yaml", [root / "config.yaml"]
    if reader == "behaviors-csv":
        root.mkdir(parents=True)
        (root / "behaviors.csv").write_text(BEHAVIORS)
        return root / "behaviors.csv", [root / "behaviors.csv"]
    writers: dict[str, Callable[[Path], list[Path]]] = {
        "beir": _write_beir,
        "privscreen": _write_privscreen,
        "imagefolder": _write_imagefolder,
        "cifar10": _write_cifar,
        "hf-disk": _write_hf_disk,
        "safetensors-data": _write_safetensors_data,
        "checkpoint": _write_checkpoint,
    }
    return root, writers[reader](root)


def load(reader: str, target: Path, mutated: Path) -> Any:
    """Read ``target`` as a user's file of kind ``reader`` (everything it holds, decoded)."""
    from robustbench_cl.data import load_dataset

    if reader == "yaml-config":
        from robustbench_cl.engine.config import load_config

        return load_config(target, profile="quick")
    if reader == "behaviors-csv":
        from robustbench_cl.data.behaviors import load_behaviors

        return load_behaviors(str(target))
    if reader == "beir":
        from robustbench_cl.data.qa import load_beir

        return load_beir(target)
    if reader == "privscreen":
        from robustbench_cl.data.privscreen import load_layout

        return load_layout(target)
    if reader == "checkpoint":
        from robustbench_cl.models.artifacts import load_foreign_state_dict

        return load_foreign_state_dict(mutated)
    scheme = {
        "imagefolder": "imagefolder:",
        "cifar10": "cifar10:",
        "hf-disk": "hf-disk:",
        "safetensors-data": "safetensors:",
    }[reader]
    size = "?size=8" if reader == "imagefolder" else ""
    return load_dataset(f"{scheme}{target}{size}", split="test").x


# ---------------------------------------------------------------------- the run
class _Alarm(BaseException):
    """Not an Exception: a reader's broad ``except Exception`` must not turn a hang into a
    refusal."""


def _on_alarm(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise _Alarm(f"no answer within {ALARM_SECONDS} s")


_LOADING = [False]


def _audit(workdir: Path, scratch: Path, outside: list[str]) -> None:
    """Record every write a reader makes (while :data:`_LOADING`) outside its folder."""
    from write_audit import install

    def check(path: Path) -> None:
        if not _LOADING[0] or str(path) == "/dev/null":
            return
        if not (path.is_relative_to(workdir) or path.is_relative_to(scratch)):
            outside.append(str(path))

    install(check)


def fuzz(reader: str, examples: int, seed: int, workdir: Path) -> dict[str, Any]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from robustbench_cl.errors import UserError

    workdir = workdir.resolve()
    pristine = workdir / "valid"
    target, files = make_valid(reader, pristine)
    originals = {f: f.read_bytes() for f in files}
    load(reader, target, files[0])  # the valid input loads: otherwise the fuzzing proves nothing
    outside: list[str] = []
    _audit(workdir, Path(tempfile.gettempdir()).resolve(), outside)
    signal.signal(signal.SIGALRM, _on_alarm)
    counts = {"loaded": 0, "refused": 0}
    refusals: dict[str, int] = {}

    mutation = st.fixed_dictionaries(
        {
            "file": st.integers(0, len(files) - 1),
            "edits": st.lists(
                st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6
            ),
            # a truncation or an insertion one time in four: most inputs keep their length
            "truncate": st.sampled_from([None, None, None, 1]).flatmap(
                lambda on: st.none() if on is None else st.floats(0, 1)
            ),
            "insert": st.sampled_from([None, None, None, 1]).flatmap(
                lambda on: (
                    st.none() if on is None else st.tuples(st.floats(0, 1), st.binary(max_size=16))
                )
            ),
        }
    )

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(mutation)
    def one(change: dict[str, Any]) -> None:
        case = workdir / "case"
        shutil.rmtree(case, ignore_errors=True)
        shutil.copytree(pristine, case)
        chosen = files[change["file"]]
        data = bytearray(originals[chosen])
        for where, value in change["edits"]:
            if data:
                data[int(where * len(data))] = value
        if change["insert"] is not None:
            where, extra = change["insert"]
            data[int(where * len(data)) : int(where * len(data))] = extra
        if change["truncate"] is not None:
            del data[int(change["truncate"] * len(data)) :]
        mutated = case / chosen.relative_to(pristine)
        mutated.write_bytes(bytes(data))
        case_target = case / target.relative_to(pristine) if target != pristine else case
        signal.alarm(ALARM_SECONDS)
        _LOADING[0] = True
        try:
            load(reader, case_target, mutated)
            counts["loaded"] += 1
        except UserError as error:
            assert "\n" not in str(error), f"a refusal of more than one line: {error!r}"
            counts["refused"] += 1
            field = error.field.replace(str(case), "<case>")
            refusals[field] = refusals.get(field, 0) + 1
        except Exception as error:  # noqa: BLE001 - the finding: neither loaded nor refused
            raise AssertionError(f"{type(error).__name__}: {error}") from error
        finally:
            _LOADING[0] = False
            signal.alarm(0)
        assert not outside, f"wrote outside its folder: {outside[:3]}"

    start = time.perf_counter()
    failure = None
    from hypothesis import seed as hypothesis_seed

    try:
        hypothesis_seed(seed)(one)()
    except BaseException as error:  # noqa: BLE001 - any escape is the finding
        found = getattr(error, "exceptions", None) or [error]
        failure = " | ".join(f"{type(e).__name__}: {e}"[:400] for e in found)
    return {
        "reader": reader,
        "examples": examples,
        "loaded": counts["loaded"],
        "refused": counts["refused"],
        "refused_by_field": refusals,
        "failure": failure,
        "seconds": round(time.perf_counter() - start, 2),
    }


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # write_audit
    name, count, seed_value, folder = sys.argv[1:5]
    Path(folder).mkdir(parents=True, exist_ok=True)
    os.chdir(folder)  # hypothesis keeps its files in the working directory
    result = fuzz(name, int(count), int(seed_value), Path(folder))
    print(json.dumps(result))
    sys.exit(1 if result["failure"] else 0)
