"""Contrastive losses against slow loop references (relative error <= 1e-5), and invariants:
batch permutation, temperature limits."""

from __future__ import annotations

import math

import pytest
import torch

from robustbench_cl.errors import UserError
from robustbench_cl.losses import (
    cwcl,
    dcl,
    hard_negative_info_nce,
    info_nce,
    mochi_negatives,
    mv_dhel,
    mv_infonce,
    mw_loss,
    pair_loss,
)


@pytest.fixture(autouse=True)
def _float64():  # the references are float64 loops
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _pair(b: int = 6, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(
        b, d, generator=g, dtype=torch.float64
    )


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(_unit(a) @ _unit(b))


def close(a: torch.Tensor | float, b: float) -> None:
    assert abs(float(a) - b) <= 1e-5 * max(1.0, abs(b)), (float(a), b)


# ---------------------------------------------------------------------- references
def ref_info_nce(z1, z2, t):  # noqa: ANN001, ANN201
    z = list(z1) + list(z2)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = i + n if i < n else i - n
        denominator = sum(math.exp(_cos(z[i], z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(_cos(z[i], z[j]) / t) / denominator)
    return total / (2 * n)


def ref_dcl_side(a, b, t, w):  # noqa: ANN001, ANN201
    n = len(a)
    total = 0.0
    for i in range(n):
        positive = _cos(a[i], b[i]) / t * (w[i] if w is not None else 1.0)
        negative = sum(
            math.exp(_cos(a[i], a[k]) / t) + math.exp(_cos(a[i], b[k]) / t)
            for k in range(n)
            if k != i
        )
        total += -positive + math.log(negative)
    return total / n


def ref_dcl(z1, z2, t, weighted=False, sigma=0.5):  # noqa: ANN001, ANN201
    w = None
    if weighted:
        e = [math.exp(_cos(z1[k], z2[k]) / sigma) for k in range(len(z1))]
        mean = sum(e) / len(e)
        w = [2 - v / mean for v in e]
    return ref_dcl_side(z1, z2, t, w) + ref_dcl_side(z2, z1, t, w)


def ref_mv_infonce(u, t):  # noqa: ANN001, ANN201
    m, n, _ = u.shape
    total = 0.0
    for i in range(m):
        positive = 2 * sum(
            math.exp(_cos(u[i, v], u[i, k]) / t) for v in range(n) for k in range(v + 1, n)
        )
        for v in range(n):
            negative = sum(
                math.exp(_cos(u[i, v], u[j, k]) / t)
                for j in range(m)
                for k in range(n)
                if (j, k) != (i, v)
            )
            total += -math.log(positive / negative)
    return total / (m * n)


def ref_mv_dhel(u, t):  # noqa: ANN001, ANN201
    m, n, _ = u.shape
    total = 0.0
    for i in range(m):
        positive = sum(
            math.exp(_cos(u[i, v], u[i, k]) / t) for v in range(n) for k in range(v + 1, n)
        )
        negatives = 0.0
        for v in range(n):
            negatives += math.log(
                sum(math.exp(_cos(u[i, v], u[j, v]) / t) for j in range(m) if j != i)
            )
        total += -math.log(positive) + negatives
    return total / m


def ref_cwcl(z1, z2, r, t):  # noqa: ANN001, ANN201
    n = len(z1)
    total = 0.0
    for i in range(n):
        logits = [_cos(z1[i], z2[j]) / t for j in range(n)]
        log_z = math.log(sum(math.exp(v) for v in logits))
        weights = [(1 + _cos(r[i], r[j])) / 2 for j in range(n)]
        total += -sum(w * (v - log_z) for w, v in zip(weights, logits)) / sum(weights)
    return total / n


def ref_mw(scores):  # noqa: ANN001, ANN201
    n = len(scores)
    pos = [float(scores[i, i]) for i in range(n)]
    neg = [float(scores[i, j]) for i in range(n) for j in range(n) if i != j]
    return sum(math.log1p(math.exp(b - a)) for a in pos for b in neg) / (len(pos) * len(neg))


# ---------------------------------------------------------------------- against the loops
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_info_nce_matches_the_loop(t):
    z1, z2 = _pair()
    close(info_nce(z1, z2, t), ref_info_nce(z1, z2, t))


@pytest.mark.parametrize("weighted", [False, True])
def test_dcl_and_dclw_match_the_loop(weighted):
    z1, z2 = _pair(seed=1)
    close(dcl(z1, z2, 0.1, weighted=weighted), ref_dcl(z1, z2, 0.1, weighted=weighted))


def test_dclw_uses_the_paper_weight_not_the_softmax_shortcut():
    z1, z2 = _pair(b=4, seed=2)
    paper = dcl(z1, z2, 0.1, weighted=True)
    # the unofficial code's "2 - softmax" lacks the factor B; it gives another number
    a, b = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    shortcut_w = 2 - torch.softmax((a * b).sum(1) / 0.5, dim=0)
    from robustbench_cl.losses.contrastive import _dcl_one_side

    shortcut = _dcl_one_side(a, b, 0.1, shortcut_w) + _dcl_one_side(b, a, 0.1, shortcut_w)
    assert not torch.isclose(paper, shortcut)


@pytest.mark.parametrize("views", [2, 3, 4])
def test_multi_view_losses_match_the_loops(views):
    u = torch.randn(
        5, views, 4, generator=torch.Generator().manual_seed(views), dtype=torch.float64
    )
    close(mv_infonce(u, 0.5), ref_mv_infonce(u, 0.5))
    close(mv_dhel(u, 0.5), ref_mv_dhel(u, 0.5))


def test_cwcl_matches_the_loop():
    z1, z2 = _pair(seed=3)
    reference, _ = _pair(seed=4)
    close(cwcl(z1, z2, reference, 0.5), ref_cwcl(z1, z2, reference, 0.5))


def test_mw_loss_matches_the_loop_and_bounds_the_area_over_the_curve():
    scores = torch.randn(5, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    close(mw_loss(scores), ref_mw(scores))
    eye = torch.eye(5, dtype=torch.bool)
    pos, neg = scores[eye], scores[~eye]
    auc = (pos[:, None] > neg[None, :]).double().mean()
    assert 1 - auc <= mw_loss(scores) / math.log(2) + 1e-12


def test_mochi_negatives_mix_the_hardest_negatives():
    anchors, negatives = _pair(b=8, d=6, seed=6)
    generator = torch.Generator().manual_seed(0)
    synthetic = mochi_negatives(anchors, negatives, n_hardest=3, n_synthetic=4, generator=generator)
    assert synthetic.shape == (8, 4, 6)
    assert torch.allclose(synthetic.norm(dim=-1), torch.ones(8, 4))
    a = torch.nn.functional.normalize(anchors, dim=1)
    n = torch.nn.functional.normalize(negatives, dim=1)
    sim = (a @ n.T).masked_fill(torch.eye(8, dtype=torch.bool), float("-inf"))
    for i in range(8):  # each synthetic lies in the span of anchor i's 3 hardest negatives
        hardest = n[sim[i].topk(3).indices]
        solution = torch.linalg.lstsq(hardest.T, synthetic[i].T).solution
        assert torch.allclose(hardest.T @ solution, synthetic[i].T, atol=1e-8)


def test_hard_negatives_make_the_task_harder():
    z1, z2 = _pair(b=8, seed=7)
    generator = torch.Generator().manual_seed(0)
    with_hard = hard_negative_info_nce(z1, z2, 0.5, n_hardest=4, n_synthetic=8, generator=generator)
    a = torch.nn.functional.normalize(z1, dim=1)
    b = torch.nn.functional.normalize(z2, dim=1)
    baseline = torch.nn.functional.cross_entropy(a @ b.T / 0.5, torch.arange(8))
    assert with_hard > baseline  # more negatives can only raise the loss


# ---------------------------------------------------------------------- invariants
def test_losses_are_invariant_to_permuting_the_batch():
    z1, z2 = _pair(b=7, seed=8)
    reference, _ = _pair(b=7, seed=9)
    order = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    for loss in (
        lambda a, b, r: info_nce(a, b, 0.3),
        lambda a, b, r: dcl(a, b, 0.3),
        lambda a, b, r: dcl(a, b, 0.3, weighted=True),
        lambda a, b, r: cwcl(a, b, r, 0.3),
        lambda a, b, r: mw_loss(a @ b.T),
    ):
        close(loss(z1[order], z2[order], reference[order]), float(loss(z1, z2, reference)))
    u = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(3))
    close(mv_infonce(u[perm], 0.5), float(mv_infonce(u, 0.5)))
    close(mv_dhel(u[perm], 0.5), float(mv_dhel(u, 0.5)))
    views = torch.randperm(3, generator=torch.Generator().manual_seed(4))
    close(mv_dhel(u[:, views], 0.5), float(mv_dhel(u, 0.5)))  # and to permuting the views


def test_temperature_limits():
    z1, z2 = _pair(b=6, seed=10)
    n = len(z1)
    # t -> infinity: every similarity looks alike, InfoNCE -> log(2n - 1)
    close(info_nce(z1, z2, 1e6), math.log(2 * n - 1))
    # t -> 0: InfoNCE -> max(0, hardest negative - positive) / t: with identical views
    # (positive = 1 > every negative) the loss vanishes
    assert info_nce(z1, z1.clone(), 1e-3) < 1e-6
    # DCL at t -> infinity: (2n - 2 negatives, no positive) -> 2 log(2n - 2) - 0
    close(dcl(z1, z2, 1e6), 2 * math.log(2 * n - 2))


def test_pair_loss_by_name_and_shape_errors():
    assert pair_loss("infonce") is info_nce
    with pytest.raises(UserError, match="unknown contrastive loss"):
        pair_loss("triplet")
    with pytest.raises(UserError, match="views"):
        mv_dhel(torch.randn(4, 6), 0.5)
    with pytest.raises(UserError, match="square"):
        mw_loss(torch.randn(3, 4))
