"""Empirical privacy: lower bounds on epsilon that a membership attack certifies.

A mechanism that is (epsilon, delta)-DP bounds every membership test: its false positive and
false negative rates satisfy ``FPR + e^epsilon FNR >= 1 - delta`` and the symmetric form. An
attack's measured rates therefore certify

    epsilon >= max(log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR))

(Kairouz et al., 2015; Jagielski et al., 2020; Nasr et al., 2021). The rates are bounded by
two-sided Clopper-Pearson intervals at confidence ``1 - alpha`` (upper bounds on FPR and FNR),
so the bound holds with that confidence. The threshold is chosen on one half of the audited
samples and the rates are counted on the other: maximising over thresholds on the samples
that are also counted overstates the bound.

One run (Steinke, Nasr and Jagielski, 2023): m canaries, each in the training set with
probability 1/2; the auditor guesses "in" for the k+ highest scores and "out" for the k-
lowest and abstains on the rest. If v of the r = k+ + k- guesses are right, epsilon is at
least the largest value at which ``P[Binomial(r, e^eps / (1 + e^eps)) >= v]`` (plus the delta
term of their Theorem 5.2) is still below ``p``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

#: the audit's confidence: two-sided Clopper-Pearson at alpha 0.05 (as TF-privacy's audit)
ALPHA = 0.05
#: an audit that could not certify more than this even with a perfect attack is underpowered
UNDERPOWERED_EPSILON = 2.0


def clopper_pearson(count: int, total: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The exact two-sided ``1 - alpha`` interval of a binomial proportion ``count / total``."""
    if total <= 0:
        return 0.0, 1.0
    low = 0.0 if count == 0 else float(stats.beta.ppf(alpha / 2, count, total - count + 1))
    high = 1.0 if count == total else float(stats.beta.ppf(1 - alpha / 2, count + 1, total - count))
    return low, high


def _log_ratio(numerator: float, denominator: float) -> float:
    if numerator <= 0:
        return 0.0
    if denominator <= 0:
        return math.inf
    return max(math.log(numerator / denominator), 0.0)


def two_world_epsilon(
    hits_in: int, n_in: int, hits_out: int, n_out: int, alpha: float = ALPHA, copies: int = 1
) -> float:
    """Jagielski et al.'s bound: ``log(p1 / p0) / k`` with p1 the Clopper-Pearson lower bound
    of the IN world's positive rate and p0 the upper bound of the OUT world's (swapped to the
    other tail when ``p0 + p1 > 1``)."""
    p1 = clopper_pearson(hits_in, n_in, alpha)[0]
    p0 = clopper_pearson(hits_out, n_out, alpha)[1]
    if p0 + p1 > 1:
        p1, p0 = 1 - p0, 1 - p1
    return _log_ratio(p1, p0) / copies


def rates_epsilon(
    false_positives: int,
    n_negatives: int,
    false_negatives: int,
    n_positives: int,
    delta: float = 0.0,
    alpha: float = ALPHA,
    end: int = 1,
) -> float:
    """Nasr et al.'s bound from Clopper-Pearson upper bounds on FPR and FNR (``end`` 1); with
    ``end`` 0, the other end of its interval, from the lower bounds (inf when a rate can be 0)."""
    fpr = clopper_pearson(false_positives, n_negatives, alpha)[end]
    fnr = clopper_pearson(false_negatives, n_positives, alpha)[end]
    return max(_log_ratio(1 - delta - fpr, fnr), _log_ratio(1 - delta - fnr, fpr))


def _rates_point(fp: int, n_neg: int, fn: int, n_pos: int, delta: float) -> float:
    fpr, fnr = fp / max(n_neg, 1), fn / max(n_pos, 1)
    return max(_log_ratio(1 - delta - fpr, fnr), _log_ratio(1 - delta - fnr, fpr))


def max_certifiable_epsilon(n_negatives: int, n_positives: int, delta: float = 0.0) -> float:
    """The bound of a perfect attack (no error) on this many samples: no attack can certify
    more. Below :data:`UNDERPOWERED_EPSILON` the audit cannot show a meaningful violation."""
    return rates_epsilon(0, n_negatives, 0, n_positives, delta)


def underpowered_below(delta: float = 0.0, epsilon: float = UNDERPOWERED_EPSILON) -> int:
    """The smallest per-class count of evaluated samples whose perfect attack certifies more
    than ``epsilon``: fewer than that, and the audit is underpowered."""
    n = 1
    while max_certifiable_epsilon(n, n, delta) <= epsilon:
        n += 1
    return n


def _errors(scores: np.ndarray, members: np.ndarray, threshold: float) -> tuple[int, int]:
    guess = scores > threshold
    return int((guess & ~members).sum()), int((~guess & members).sum())


def audit_split(members: np.ndarray, seed: int = 0) -> np.ndarray:
    """A stratified half of the audited samples (True: they choose the threshold)."""
    rng = np.random.default_rng(seed)
    choose = np.zeros(len(members), dtype=bool)
    for value in (True, False):
        index = np.nonzero(members == value)[0]
        choose[rng.permutation(index)[: len(index) // 2]] = True
    return choose


def epsilon_lower_bound(
    scores: Any, members: Any, delta: float = 0.0, alpha: float = ALPHA, seed: int = 0
) -> dict[str, Any]:
    """The attack's empirical epsilon lower bound, threshold chosen on a separate half.

    Returns the bound (``epsilon_lb``, at confidence ``1 - alpha``), the point value at the
    measured rates (``epsilon_point``; None when unbounded), the interval from the
    Clopper-Pearson upper and lower bounds on the rates (``epsilon_interval``; None for an
    unbounded upper end), the threshold, the error counts of the counted half, and the largest
    epsilon any attack could certify on that half.
    """
    scores = np.asarray(scores, dtype=np.float64)
    members = np.asarray(members).astype(bool)
    choose = audit_split(members, seed)
    count = ~choose
    s_choose, m_choose = scores[choose], members[choose]
    n_pos_c, n_neg_c = int(m_choose.sum()), int((~m_choose).sum())
    best, threshold = -1.0, math.inf
    # thresholds between consecutive distinct scores (and below all: guess everyone a member)
    values = np.unique(s_choose)
    candidates = np.concatenate([[values[0] - 1.0], values]) if len(values) else [0.0]
    for t in candidates:
        fp, fn = _errors(s_choose, m_choose, t)
        bound = rates_epsilon(fp, n_neg_c, fn, n_pos_c, delta, alpha)
        if bound > best:
            best, threshold = bound, float(t)
    s_count, m_count = scores[count], members[count]
    n_pos, n_neg = int(m_count.sum()), int((~m_count).sum())
    fp, fn = _errors(s_count, m_count, threshold)
    point = _rates_point(fp, n_neg, fn, n_pos, delta)
    lower = rates_epsilon(fp, n_neg, fn, n_pos, delta, alpha)
    upper = rates_epsilon(fp, n_neg, fn, n_pos, delta, alpha, end=0)
    return {
        "epsilon_lb": lower,
        "epsilon_point": None if math.isinf(point) else point,
        "epsilon_interval": [lower, None if math.isinf(upper) else upper],
        "delta": delta,
        "confidence": 1 - alpha,
        "threshold": threshold,
        "n_counted": [n_pos, n_neg],
        "false_positives": fp,
        "false_negatives": fn,
        "max_certifiable": max_certifiable_epsilon(n_neg, n_pos, delta),
    }


# ---------------------------------------------------------------------- one run
def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Steinke et al.'s p-value of v correct guesses out of r among m canaries under
    (epsilon, delta)-DP."""
    q = math.exp(epsilon) / (1 + math.exp(epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))  # P[Bin(r, q) >= v]
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += float(stats.binom.pmf(v - i, r, q))
        alpha = max(alpha, total / i)
    return min(beta + 2 * m * delta * alpha, 1.0)


def one_run_epsilon(m: int, r: int, v: int, delta: float = 0.0, p: float = ALPHA) -> float:
    """The largest epsilon whose p-value stays below ``p`` (0 when none does)."""
    if one_run_p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    low, high = 0.0, 1.0
    while one_run_p_value(m, r, v, high, delta) < p:
        low, high = high, high + 1
        if high > 100:
            return math.inf
    for _ in range(30):
        middle = (low + high) / 2
        if one_run_p_value(m, r, v, middle, delta) < p:
            low = middle
        else:
            high = middle
    return low


def one_run_guesses(scores: Any, included: Any, k_plus: int, k_minus: int) -> tuple[int, int]:
    """``(r, v)``: guess "in" for the ``k_plus`` highest scores and "out" for the ``k_minus``
    lowest; r guesses, v of them right."""
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included).astype(bool)
    k_plus, k_minus = min(k_plus, len(scores)), min(k_minus, len(scores) - min(k_plus, len(scores)))
    order = np.argsort(-scores, kind="stable")
    guessed_in, guessed_out = order[:k_plus], order[len(order) - k_minus :] if k_minus else []
    right = int(included[guessed_in].sum()) + int((~included[guessed_out]).sum())
    return k_plus + k_minus, right
