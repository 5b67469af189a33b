"""Paired significance tests over the same items, with scipy.stats: two models' item-by-item
differences vary far less than their unpaired stderrs suggest, so a paired test separates models
whose error bars overlap. Sums use ``math.fsum``: the result does not depend on the items' order.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Paired:
    """A difference (first model minus second), its stderr, two-sided p and how many pairs."""

    delta: float
    se: float
    p: float
    n: int


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = math.fsum(values) / n if n else 0.0
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1) / n if n > 1 else 0.0
    return mean, math.sqrt(variance)


def normal_two_sided(z: float) -> float:
    return float(2.0 * stats.norm.sf(abs(z)))


def _test(delta: float, se: float, n: int, p_of: Callable[[float], float]) -> Paired:
    """``p_of`` the statistic delta / se; a zero stderr is certain either way."""
    p = (1.0 if delta == 0.0 else 0.0) if se == 0.0 else p_of(delta / se)
    return Paired(delta, se, p, n)


def mcnemar(first: Sequence[bool], second: Sequence[bool]) -> Paired:
    """McNemar's exact test: only the items the two models disagree on count, each a fair coin
    under the null."""
    diffs = [float(x) - float(y) for x, y in zip(first, second, strict=True)]
    b, c = diffs.count(1.0), diffs.count(-1.0)
    p = stats.binomtest(min(b, c), b + c, 0.5).pvalue if b + c else 1.0
    return Paired(*mean_se(diffs), float(p), len(diffs))


def suite_average(per_task: dict[str, tuple[Sequence[bool], Sequence[bool]]]) -> Paired:
    """The difference of two suite averages (means of per-task accuracies) from paired per-item
    differences: the tasks' variances add (independent items), z test."""
    if not per_task:
        return Paired(0.0, 0.0, 1.0, 0)
    diffs = [[float(x) - float(y) for x, y in zip(a, b, strict=True)] for a, b in per_task.values()]
    parts = [mean_se(d) for d in diffs]
    delta = math.fsum(mean for mean, _ in parts) / len(parts)
    se = math.sqrt(math.fsum(se * se for _, se in parts)) / len(parts)
    return _test(delta, se, sum(map(len, diffs)), normal_two_sided)


def paired_t(diffs: Sequence[float]) -> Paired:
    """Student's t test of the mean of paired differences (per-document log-likelihoods, seeds)."""
    (mean, se), n = mean_se(diffs), len(diffs)
    if n < 2:
        return Paired(mean, se, 1.0, n)
    return _test(mean, se, n, lambda t: float(2.0 * stats.t.sf(abs(t), n - 1)))


def unpaired(
    a: float | None, se_a: float | None, b: float | None, se_b: float | None
) -> Paired | None:
    """``a - b`` with the stderrs added in quadrature, z test (where items cannot be paired)."""
    if a is None or b is None:
        return None
    return _test(a - b, math.sqrt((se_a or 0.0) ** 2 + (se_b or 0.0) ** 2), 0, normal_two_sided)
