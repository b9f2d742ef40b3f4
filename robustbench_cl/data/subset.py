"""Which samples a run evaluates: a seeded, class-stratified draw, the same for every cell.

Taking rows ``0..n`` of a class-sorted folder (an ImageFolder tree, a CIFAR binary written class
by class) evaluates one or two classes and calls it a test set: a model that always answers
class 0 scores 40% on n = 50 of a balanced 10-class tree. :func:`draw_subset` instead draws ``n``
indices in proportion to the classes (each present class at least once when ``n`` allows),
from the run's seed alone, so every model, defense and attack of a run sees the same samples and
a rerun draws them again. The indices come back sorted, so files are read in order; a prefix of
them is *not* representative, which is what :func:`spread_positions` is for. ``n`` at or above
the split's size evaluates the whole split in its stored order.
"""

from __future__ import annotations

import hashlib

import torch

from robustbench_cl.errors import UserError


def draw_subset(y: torch.Tensor, n: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of ``n`` samples of labels ``y``, stratified by class, drawn from ``seed``.

    Each class gets its proportional share (largest remainders first, ties broken by the seed)
    and at least one sample when ``n`` is at least the number of classes present.
    """
    total = int(y.shape[0])
    if n is not None and n < 1:
        raise UserError("data.n", f"must be >= 1, got {n}")
    if n is None or n >= total:
        return torch.arange(total)
    labels = y.detach().cpu().long()
    generator = _generator(seed)
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * n / total
    quota = exact.floor().long()
    if n >= len(classes):
        quota = quota.clamp_min(1)
    while int(quota.sum()) > n:  # the minimum of one per class took from the largest shares
        quota[int(torch.argmax(quota))] -= 1
    remainder = exact - quota  # what each class is still owed (negative: given one already)
    tie_break = torch.rand(len(classes), generator=generator, dtype=torch.float64)
    order = sorted(range(len(classes)), key=lambda k: (-float(remainder[k]), float(tie_break[k])))
    while int(quota.sum()) < n:
        for k in order:
            if int(quota.sum()) == n:
                break
            if quota[k] < counts[k]:
                quota[k] += 1
    chosen = []
    for k, label in enumerate(classes.tolist()):
        members = (labels == label).nonzero().flatten()
        pick = torch.randperm(len(members), generator=generator)[: int(quota[k])]
        chosen.append(members[pick])
    return torch.cat(chosen).sort().values


def spread_positions(y: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Positions ``0..len(y)`` of a stratified probe of ``size`` samples (sanity probes): the
    first ``size`` evaluated samples may all be one class."""
    return draw_subset(y, min(size, int(y.shape[0])), seed)


def subset_digest(indices: torch.Tensor) -> str:
    """A short, stable fingerprint of the evaluated indices (meta.json, ``compare``)."""
    payload = ",".join(str(i) for i in indices.tolist()).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def class_histogram(y: torch.Tensor, n_classes: int) -> list[int]:
    """Samples per class, classes ``0..n_classes - 1``."""
    return torch.bincount(y.detach().cpu().long(), minlength=n_classes).tolist()


def seeded_indices(total: int, n: int | None, seed: int) -> torch.Tensor:
    """Sorted indices of ``n`` of ``total`` items chosen by ``seed`` (all when ``n`` is
    ``None`` or at least ``total``): an unlabelled draw (behaviours, screens, caption images)."""
    if n is None or n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=_generator(seed))[:n].sort().values


def seeded_pick(items: list, n: int | None, seed: int) -> list:
    """``n`` of ``items`` chosen by ``seed``, in their stored order (behaviours, screens): the
    first ``n`` of a file grouped by category or app would be one category."""
    return [items[i] for i in seeded_indices(len(items), n, seed).tolist()]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) & 0xFFFF_FFFF_FFFF)
