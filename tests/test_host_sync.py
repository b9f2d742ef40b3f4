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
def count_host_syncs(ignore_optimizer: bool = False):
    """Record every syncing call. ``ignore_optimizer`` skips calls made inside ``torch.optim``:
    Adam keeps its step counter as a host tensor and reads it each step, which never waits for
    the device (the generator-training attacks use Adam on the generator's weights)."""
    import traceback

    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def spy(name):
        original = originals[name]

        def wrapper(self, *args, **kwargs):
            inside_optimizer = ignore_optimizer and any(
                "torch/optim/" in frame.filename for frame in traceback.extract_stack(limit=8)
            )
            if not inside_optimizer:
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
    assert counts[0] == counts[1]
