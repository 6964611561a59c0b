"""Statistics of seed replicates: pure arithmetic on lists of numbers, no I/O.

One setting's values (one per seed): mean, sample standard deviation and the Student's t
confidence interval of the mean. Two settings: the difference of their means with Welch's
interval and Welch's two-sided t-test, which do not assume the two settings are equally noisy;
and, where both were run with the same seeds, the paired difference (seed by seed).
scipy supplies the t distribution; nothing here is a hand-written quantile.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Description:
    """``n`` values: their mean, sample sd (ddof=1) and the interval of the mean. ``None``
    where it cannot be computed: no values, a single value (no sd, no interval), or a value that
    is not finite (a diverged run has no honest average)."""

    n: int
    mean: float | None
    std: float | None
    ci95: tuple[float, float] | None


@dataclass(frozen=True)
class Difference:
    """Mean of ``a`` minus mean of ``b``, with Welch's interval, degrees of freedom and p-value;
    ``None`` where it cannot be computed (see :func:`welch`)."""

    n_a: int
    n_b: int
    diff: float | None
    ci95: tuple[float, float] | None
    df: float | None
    p_value: float | None


@contextlib.contextmanager
def _quiet_near_ties() -> Iterator[None]:
    """scipy warns ("Precision loss occurred in moment calculation") when values are nearly
    equal, as runs on the same plateau are; the p-value is still the t distribution's, and an
    exact tie never gets here (no spread: no test)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Precision loss occurred", category=RuntimeWarning
        )
        yield


def _all_finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _sample_variance(values: Sequence[float], mean: float) -> float:
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> Description:
    """Mean, sample standard deviation and the ``confidence`` interval of the mean from
    Student's t with n - 1 degrees of freedom."""
    n = len(values)
    if n == 0 or not _all_finite(values):
        return Description(n, None, None, None)
    mean = math.fsum(values) / n
    if n < 2:
        return Description(n, mean, None, None)
    std = math.sqrt(_sample_variance(values, mean))
    half_width = scipy_stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return Description(n, mean, std, (mean - half_width, mean + half_width))


def welch(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """mean(a) - mean(b), its ``confidence`` interval with the Welch-Satterthwaite degrees of
    freedom, and Welch's two-sided t-test p-value (``scipy.stats.ttest_ind(equal_var=False)``,
    the same t distribution, so p < 1 - confidence exactly when the interval excludes 0).

    The difference needs a value on each side; the interval and the test need two per side (a
    single value says nothing about the noise) and some spread: if every value on both sides
    is the same, neither is defined and both are ``None``.
    """
    n_a, n_b = len(a), len(b)
    mean_a, mean_b = describe(a).mean, describe(b).mean
    if mean_a is None or mean_b is None:
        return Difference(n_a, n_b, None, None, None, None)
    diff = mean_a - mean_b
    if n_a < 2 or n_b < 2:
        return Difference(n_a, n_b, diff, None, None, None)
    # the squared standard errors of the two means
    se2_a = _sample_variance(a, mean_a) / n_a
    se2_b = _sample_variance(b, mean_b) / n_b
    se = math.sqrt(se2_a + se2_b)
    if se == 0:
        return Difference(n_a, n_b, diff, None, None, None)
    df = (se2_a + se2_b) ** 2 / (se2_a**2 / (n_a - 1) + se2_b**2 / (n_b - 1))
    half_width = scipy_stats.t.ppf((1 + confidence) / 2, df) * se
    with _quiet_near_ties():
        p_value = float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    return Difference(n_a, n_b, diff, (diff - half_width, diff + half_width), df, p_value)


def paired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Difference:
    """The mean of ``a[i] - b[i]`` over pairs (one seed's value at each of two settings), its
    ``confidence`` interval from Student's t with n - 1 degrees of freedom, and the paired
    two-sided t-test's p-value (``scipy.stats.ttest_rel``, the same distribution, so p < 1 -
    confidence exactly when the interval excludes 0). ``None`` where it cannot be computed:
    fewer than 2 pairs, a value that is not finite, or differences that are all the same."""
    if len(a) != len(b):
        raise ValueError(f"paired values need as many on each side, got {len(a)} and {len(b)}")
    n = len(a)
    differences = describe([x - y for x, y in zip(a, b, strict=True)], confidence)
    if differences.ci95 is None or not differences.std:
        return Difference(n, n, differences.mean, None, None, None)
    with _quiet_near_ties():
        p_value = float(scipy_stats.ttest_rel(a, b).pvalue)
    return Difference(n, n, differences.mean, differences.ci95, n - 1, p_value)
