"""Paired significance tests over the same items.

Two models evaluated on the same documents share each item's difficulty; the difference of their
scores item by item has a far smaller variance than the two unpaired stderrs suggest, so a paired
test separates models whose error bars overlap. Plain functions over lists (no SciPy): McNemar's
exact test for one task's correctness, a z test for the suite average (the mean of per-task
differences), and Student's t for continuous per-item differences (log-likelihoods) and seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    """A difference (first model minus second), its stderr, two-sided p and how many pairs."""

    delta: float
    se: float
    p: float
    n: int


def mcnemar(first: Sequence[bool], second: Sequence[bool]) -> Paired:
    """McNemar's exact test of two models' correctness on the same items: only the items on
    which they disagree carry information, and under the null each is a fair coin."""
    if len(first) != len(second):
        raise ValueError("paired samples differ in length")
    n = len(first)
    b = sum(1 for x, y in zip(first, second, strict=True) if x and not y)
    c = sum(1 for x, y in zip(first, second, strict=True) if y and not x)
    delta = (b - c) / n if n else 0.0
    diffs = [float(x) - float(y) for x, y in zip(first, second, strict=True)]
    return Paired(delta, _mean_se(diffs)[1], binomial_two_sided(min(b, c), b + c), n)


def binomial_two_sided(k: int, n: int) -> float:
    """P(X <= k or X >= n - k) for X ~ Binomial(n, 1/2), k <= n / 2 (exact, in log space)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    log_half = n * math.log(0.5)
    tail = sum(math.exp(_log_comb(n, i) + log_half) for i in range(k + 1))
    return min(1.0, 2.0 * tail)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def normal_two_sided(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2.0))


def suite_average(per_task: dict[str, tuple[Sequence[bool], Sequence[bool]]]) -> Paired:
    """The difference of two suite averages (each the mean of per-task accuracies) from paired
    per-item differences: the tasks' variances add (independent items), z test."""
    if not per_task:
        return Paired(0.0, 0.0, 1.0, 0)
    deltas, variances, n = [], [], 0
    for first, second in per_task.values():
        diffs = [float(x) - float(y) for x, y in zip(first, second, strict=True)]
        mean, se = _mean_se(diffs)
        deltas.append(mean)
        variances.append(se * se)
        n += len(diffs)
    tasks = len(deltas)
    delta = math.fsum(deltas) / tasks
    se = math.sqrt(math.fsum(variances)) / tasks
    return Paired(delta, se, _p_from(delta, se, normal_two_sided), n)


def paired_t(diffs: Sequence[float]) -> Paired:
    """Student's t test of the mean of paired differences (per-document log-likelihoods, seeds)."""
    mean, se = _mean_se(diffs)
    n = len(diffs)
    if n < 2:
        return Paired(mean, se, 1.0, n)
    return Paired(mean, se, _p_from(mean, se, lambda t: t_two_sided(t, n - 1)), n)


def _p_from(delta: float, se: float, test) -> float:
    if se == 0.0:
        return 1.0 if delta == 0.0 else 0.0
    return test(delta / se)


def t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2)."""
    return regularized_beta(df / (df + t * t), df / 2.0, 0.5)


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (Lentz's method), the usual way without SciPy."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(x, a, b) / a
    return 1.0 - front * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h
