"""Attack step loops never synchronise with the host: no .item(), .cpu(), .tolist(), NumPy,
or Python bool/int/float of a tensor (each of which waits for the device)."""

from __future__ import annotations

import contextlib

import pytest
import torch

import robustbench_cl as rbcl
from robustbench_cl.attacks.base import CountingModel
from robustbench_cl.threat import ThreatModel

SYNCING = ("item", "cpu", "tolist", "numpy", "nonzero", "__bool__", "__int__", "__float__")


@contextlib.contextmanager
def count_host_syncs(ignore_optimizer: bool = False, ignore_library: str | None = None):
    """Record every syncing call. ``ignore_optimizer`` skips calls made inside ``torch.optim``:
    Adam keeps its step counter as a host tensor and reads it each step, which never waits for
    the device (the generator-training attacks use Adam on the generator's weights).
    ``ignore_library`` skips calls made inside that library's code (e.g. ``transformers/``:
    its attention-mask preparation inspects the mask on the host, which is not our loop)."""
    import traceback

    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def spy(name):
        original = originals[name]

        def wrapper(self, *args, **kwargs):
            inside_optimizer = ignore_optimizer and any(
                "torch/optim/" in frame.filename for frame in traceback.extract_stack(limit=8)
            )
            inside_library = ignore_library is not None and any(
                ignore_library in frame.filename for frame in traceback.extract_stack(limit=12)
            )
            if not (inside_optimizer or inside_library):
                calls.append(name)
            return original(self, *args, **kwargs)

        return wrapper

    for name in SYNCING:
        setattr(torch.Tensor, name, spy(name))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 1.0), ("l1", 2.0)])
@pytest.mark.parametrize("keep_best", [True, False])
def test_pgd_step_loop_makes_no_host_sync(digits_model, digits_batch, norm, eps, keep_best):
    x, y = digits_batch
    attack = rbcl.make_attack("pgd", steps=5, restarts=2, keep_best=keep_best, seed=0)
    model = CountingModel(digits_model)
    with count_host_syncs() as calls:
        attack.perturb(model, x, y, ThreatModel(norm=norm, eps=eps))
    assert calls == []


def test_fgsm_makes_no_host_sync(digits_model, digits_batch):
    x, y = digits_batch
    with count_host_syncs() as calls:
        rbcl.make_attack("fgsm").perturb(digits_model, x, y, ThreatModel(eps=0.1))
    assert calls == []


def test_the_spy_sees_a_sync(digits_batch):
    x, _ = digits_batch
    with count_host_syncs() as calls:
        x.sum().item()
    assert calls == ["item"]


@pytest.mark.parametrize("name", ["cpgc", "pgd-uap"])
def test_universal_attack_steps_make_no_host_sync(name):
    """Twice the steps per epoch (half the batch), the same number of host syncs: the only
    syncs are the once-per-fit setup and once-per-epoch loss logging, none per step."""
    from robustbench_cl.data.captions import make_shapes
    from tests.conftest import TinyVLP

    data = make_shapes("train", n=32)
    model = TinyVLP().eval().requires_grad_(False)
    threat = ThreatModel(eps=12 / 255, universal=True)
    counts = []
    for batch_size in (8, 4):
        params = {"epochs": 1, "batch_size": batch_size}
        if name == "cpgc":
            params["target_batch_size"] = 4
        with count_host_syncs(ignore_optimizer=True) as calls:
            rbcl.make_attack(name, **params).fit(model, data, threat, seed=0)
        counts.append(len(calls))
    if name == "gcg":
        assert 0 < (counts[1] - counts[0]) / 3 <= 4
    else:
        assert counts[0] == counts[1]


@pytest.mark.parametrize(
    "name, params",
    [("embedding", {}), ("embedding", {"init": "suffix"}), ("gcg", {"candidates": 8})],
)
def test_llm_attack_steps_make_no_host_sync(name, params):
    """Twice the steps, the same number of host syncs outside transformers' own code: setup
    (layout, scale) and the final scoring sync once per attack, the step loop never. GCG's one
    exception is its text filter: the tokenizer runs on the host, so each step takes the
    candidate ids there once and brings the kept ones back (at most 4 syncs a step, as in
    every GCG that checks retokenization)."""
    from robustbench_cl.data.chat import make_chat
    from robustbench_cl.models.llm import ChatLM, build_tokenizer, tiny_llama

    corpus = make_chat("train", 20, 20, 10)
    tokenizer = build_tokenizer([f"{e.instruction} {e.response}" for e in corpus.examples], 260)
    torch.manual_seed(0)
    recipe = {"hidden": 16, "intermediate": 32, "layers": 1, "heads": 2}
    lm = ChatLM(tiny_llama(len(tokenizer), recipe).eval(), tokenizer).requires_grad_(False)
    harmful = make_chat("test", 0, 3, 0).of("harmful")
    if name == "embedding" and "init" not in params:
        threat = ThreatModel(norm="l2", eps=0.3, space="embedding", bounds=None, eps_relative=True)
    elif name == "embedding":
        threat = ThreatModel(
            norm="none", eps=0.0, space="embedding", bounds=None, eps_relative=True
        )
    else:
        threat = ThreatModel(norm="none", eps=0.0, space="token", bounds=None)
    assert lm.embedding_scale > 0  # computed once per model, then cached
    counts = []
    for steps in (3, 6):
        attack = rbcl.make_attack(name, steps=steps, **params)
        with count_host_syncs(ignore_library="transformers/") as calls:
            attack.run(lm, [e.instruction for e in harmful], [e.target for e in harmful], threat)
        counts.append(len(calls))
    if name == "gcg":
        assert 0 < (counts[1] - counts[0]) / 3 <= 4
    else:
        assert counts[0] == counts[1]
