"""Metrics derived from per-sample outcomes."""

from __future__ import annotations

import math


def wilson_interval(
    successes: int, total: int, z: float = 1.959963984540054
) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (exact at the edges, unlike the normal one)."""
    if total <= 0:
        return (0.0, 1.0)
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == total else min(1.0, centre + half)
    return (low, high)


def rate_entry(k: int, n: int) -> dict:
    """``{"rate", "k", "n", "ci95"}`` for k of n (rate and interval null when n is 0)."""
    return {
        "rate": k / n if n else None,
        "k": k,
        "n": n,
        "ci95": list(wilson_interval(k, n)) if n else None,
    }
