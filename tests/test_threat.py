"""Property tests of the threat model's geometry (hypothesis) and its validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustbench_cl.errors import ThreatModelViolation, UserError
from robustbench_cl.threat import ThreatModel

norms = st.sampled_from(["linf", "l2", "l1"])
eps_values = st.floats(min_value=0.01, max_value=0.9)
seeds = st.integers(min_value=0, max_value=2**16)


def _batch(seed: int, shape=(6, 1, 5, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=generator)
    delta = (torch.rand(shape, generator=generator) - 0.5) * 4
    return x, delta


@settings(max_examples=60, deadline=None)
@given(norm=norms, eps=eps_values, seed=seeds)
def test_projection_is_idempotent_and_lands_in_the_ball(norm, eps, seed):
    threat = ThreatModel(norm=norm, eps=eps)
    _, delta = _batch(seed)
    once = threat.project(delta)
    twice = threat.project(once)
    assert torch.allclose(once, twice, atol=1e-5)
    assert (threat.norm_of(once) <= eps * (1 + 1e-5) + 1e-6).all()


@settings(max_examples=60, deadline=None)
@given(norm=norms, eps=eps_values, seed=seeds)
def test_clip_stays_in_ball_and_bounds(norm, eps, seed):
    threat = ThreatModel(norm=norm, eps=eps)
    x, delta = _batch(seed)
    x_adv = threat.clip(x + delta, x)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    threat.check(x_adv, x)  # raises on violation


@settings(max_examples=60, deadline=None)
@given(norm=norms, eps=eps_values, seed=seeds)
def test_random_init_lands_inside(norm, eps, seed):
    threat = ThreatModel(norm=norm, eps=eps)
    x, _ = _batch(seed)
    start = threat.random_init(x, torch.Generator().manual_seed(seed))
    threat.check(start, x)
    assert not torch.equal(start, x)


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(min_value=0.01, max_value=0.5), seed=seeds)
def test_l1_projection_is_the_euclidean_projection(eps, seed):
    """The l1 projection is the closest point: no random point in the ball is closer."""
    threat = ThreatModel(norm="l1", eps=eps)
    _, delta = _batch(seed, shape=(1, 12))
    projected = threat.project(delta)
    candidates = threat.project(torch.randn(200, 12, generator=torch.Generator().manual_seed(seed)))
    distance = (projected - delta).norm()
    assert ((candidates - delta).norm(dim=1) >= distance - 1e-5).all()


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(min_value=0.01, max_value=2.0), seed=seeds)
def test_embedding_space_projects_each_token(eps, seed):
    threat = ThreatModel(norm="l2", eps=eps, space="embedding", bounds=None, eps_relative=True)
    generator = torch.Generator().manual_seed(seed)
    delta = torch.randn(3, 7, 16, generator=generator) * 5
    scale = 2.5
    projected = threat.project(delta, embedding_scale=scale)
    assert projected.shape == delta.shape
    assert (projected.norm(dim=-1) <= eps * scale * (1 + 1e-5)).all()
    assert torch.allclose(threat.project(projected, embedding_scale=scale), projected, atol=1e-5)
    start = threat.random_init(torch.zeros_like(delta), generator, embedding_scale=scale)
    assert (start.norm(dim=-1) <= eps * scale * (1 + 1e-5)).all()


def test_relative_eps_needs_the_embedding_scale():
    threat = ThreatModel(norm="l2", eps=0.1, space="embedding", bounds=None, eps_relative=True)
    with pytest.raises(UserError, match="embedding_scale"):
        threat.project(torch.zeros(1, 2, 3))


def test_round_trip_and_hashable():
    threat = ThreatModel(norm="l2", eps=0.5, targeted=True, budget={"steps": 10})
    again = ThreatModel.from_dict(threat.to_dict())
    assert again == threat
    assert hash(again) == hash(threat)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": 1.5}, "eps"),
        ({"norm": "l3"}, "norm"),
        ({"bounds": (1, 0)}, "bounds"),
        ({"eps": float("nan")}, "eps"),
    ],
)
def test_bad_threat_models_name_the_field(kwargs, field):
    with pytest.raises(UserError) as error:
        ThreatModel(**kwargs)
    assert error.value.field == field


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(UserError, match="unknown key"):
        ThreatModel.from_dict({"norm": "linf", "eps": 0.1, "epsilon": 3})


def test_check_catches_violations():
    threat = ThreatModel(norm="linf", eps=0.1)
    x = torch.full((2, 3), 0.5)
    with pytest.raises(ThreatModelViolation, match="ball"):
        threat.check(x + 0.2, x)
    with pytest.raises(ThreatModelViolation, match="bounds"):
        ThreatModel(norm="l2", eps=5.0).check(x + 0.6, x)
    with pytest.raises(ThreatModelViolation, match="NaN"):
        threat.check(x * float("nan"), x)
