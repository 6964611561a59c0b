"""Seed groups of a sweep and the comparisons between its settings.

A group is the jobs whose overrides differ only in ``seed``: replicates of one setting. A factor
is an override key whose value differs between groups; its levels are its values in the order
the sweep lists them (the order of the jobs). The unit of every statistic is one finished job's
value (one seed of one setting). A comparison of two levels of a factor pools the values of all
finished jobs at each level over the levels of the other factors: in a factorial grid that is
the factor's main effect, and the other factors' effects widen its interval like extra noise.

Jobs with the same seed share their data order and, where the settings allow, their initial
weights, so the jobs of one seed are alike: pooled over other factors they are not independent
draws, and Welch's test, which takes them as such, is then too sure. Where both levels ran the
same seeds, a comparison is also made seed by seed (each seed's mean at each level, paired):
the unit is then one seed, and that is the test to go by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llm_scratch.report.collect import BEST_VAL_LOSS, JobResult, parse_value
from llm_scratch.report.stats import Description, Difference, describe, paired, welch

# The figures every group and comparison reports, named as in summary.json's "metrics".
METRICS: dict[str, str] = {
    "val/loss": "final validation loss (the last validation)",
    BEST_VAL_LOSS: "best validation loss (the lowest validation of the run)",
    "train/epoch_loss": "train loss of the last epoch (its token-weighted mean)",
}
# a factor's value in a job that does not set it (a sweep that adds a key to some jobs only)
NOT_SET = "(not set)"


@dataclass
class Group:
    """The jobs of one setting (every job of it, finished or not, in job order)."""

    setting: dict[str, str]
    jobs: list[JobResult]
    label: str = ""

    @property
    def finished(self) -> list[JobResult]:
        return [job for job in self.jobs if job.finished]

    @property
    def unfinished(self) -> list[JobResult]:
        return [job for job in self.jobs if not job.finished]

    @property
    def seeds(self) -> list[Any]:
        """The seeds of the finished jobs, in the order of :meth:`values`."""
        return [job.seed for job in self.finished]

    def values(self, metric: str) -> list[float | None]:
        """One value per finished job (``None`` where the job has no such metric)."""
        return [job.value(metric) for job in self.finished]

    def describe(self, metric: str) -> Description:
        return describe([v for v in self.values(metric) if v is not None])


@dataclass
class Comparison:
    """Level ``a`` minus level ``b`` (the baseline) of ``factor`` for ``metric``, from the
    values of every finished job at each level."""

    metric: str
    factor: str
    factor_name: str  # the key as labels show it (``pre_norm`` for ``model.pre_norm``)
    a: str
    b: str
    n_a: int
    n_b: int
    groups_per_level: int  # > 1: pooled over the other factors' levels
    diff: float | None = None
    ci95: tuple[float, float] | None = None
    p_value: float | None = None
    df: float | None = None
    missing: str | None = None  # why ci95 / p_value (or diff) are not computable
    # seed by seed, where both levels ran at least 2 of the same seeds (None otherwise): each
    # seed's mean at level a minus its mean at level b
    paired: Difference | None = None
    paired_seeds: list[Any] = field(default_factory=list)
    verdict: str = field(default="", repr=False)


def group_jobs(jobs: list[JobResult]) -> list[Group]:
    """The seed groups of ``jobs``, in the order of each group's first job, labelled by the
    factors that tell them apart (``all jobs`` when the jobs differ only in seed, the job's own
    label for a single job). A job whose
    overrides are unknown belongs to no group."""
    groups: dict[frozenset, Group] = {}
    for job in (job for job in jobs if job.overrides_known):
        key = frozenset(job.setting.items())
        groups.setdefault(key, Group(setting=job.setting, jobs=[])).jobs.append(job)
    result = list(groups.values())
    varied = factors(result)
    names = factor_names(varied)
    for group in result:
        parts = [f"{names[key]}={group.setting.get(key, NOT_SET)}" for key in varied]
        alone = group.jobs[0].label if len(group.jobs) == 1 else "all jobs"
        group.label = ", ".join(parts) or alone
    return result


def factors(groups: list[Group]) -> dict[str, list[str]]:
    """Every override key whose value differs between groups, with its levels in the order
    the sweep lists them."""
    keys: list[str] = []
    for group in groups:
        keys += [key for key in group.setting if key not in keys]
    result = {}
    for key in keys:
        levels: list[str] = []
        for group in groups:
            level = group.setting.get(key, NOT_SET)
            if level not in levels:
                levels.append(level)
        if len(levels) > 1:
            result[key] = levels
    return result


def factor_names(varied: dict[str, list[str]]) -> dict[str, str]:
    """The last part of each key (``model.pre_norm`` -> ``pre_norm``) where that is unique."""
    short = {key: key.rsplit(".", 1)[-1] for key in varied}
    unique = len(set(short.values())) == len(short)
    return short if unique else {key: key for key in varied}


def compare(groups: list[Group], metrics: list[str] | None = None) -> list[Comparison]:
    """For each metric and factor, each level after the first compared with the first (the
    baseline): with two levels that is level 2 minus level 1."""
    varied = factors(groups)
    names = factor_names(varied)
    comparisons = []
    for metric in metrics or list(METRICS):
        for factor, levels in varied.items():
            baseline = levels[0]
            for level in levels[1:]:
                comparisons.append(_compare(groups, metric, factor, names[factor], level, baseline))
    return comparisons


def _level_values(groups: list[Group], factor: str, level: str, metric: str) -> list[float]:
    """The pooling unit: every finished job's value at this level, whatever its other factors."""
    at_level = [g for g in groups if g.setting.get(factor, NOT_SET) == level]
    return [v for g in at_level for v in g.values(metric) if v is not None]


def _seed_means(groups: list[Group], factor: str, level: str, metric: str) -> dict[Any, float]:
    """Each seed's mean value at this level, over the other factors' levels."""
    by_seed: dict[Any, list[float]] = {}
    for group in groups:
        if group.setting.get(factor, NOT_SET) == level:
            for seed, value in zip(group.seeds, group.values(metric), strict=True):
                if seed is not None and value is not None:
                    by_seed.setdefault(seed, []).append(value)
    return {seed: math.fsum(values) / len(values) for seed, values in by_seed.items()}


def _compare(
    groups: list[Group], metric: str, factor: str, name: str, a: str, b: str
) -> Comparison:
    values_a = _level_values(groups, factor, a, metric)
    values_b = _level_values(groups, factor, b, metric)
    difference = welch(values_a, values_b)
    means_a = _seed_means(groups, factor, a, metric)
    means_b = _seed_means(groups, factor, b, metric)
    shared = [seed for seed in means_a if seed in means_b]
    comparison = Comparison(
        metric=metric,
        factor=factor,
        factor_name=name,
        a=a,
        b=b,
        n_a=len(values_a),
        n_b=len(values_b),
        groups_per_level=max(
            sum(1 for g in groups if g.setting.get(factor, NOT_SET) == level) for level in (a, b)
        ),
        diff=difference.diff,
        ci95=difference.ci95,
        p_value=difference.p_value,
        df=difference.df,
    )
    if len(shared) >= 2:
        comparison.paired_seeds = shared
        comparison.paired = paired([means_a[s] for s in shared], [means_b[s] for s in shared])
    comparison.missing = _why_missing(comparison, values_a, values_b)
    comparison.verdict = verdict(comparison)
    return comparison


def _why_missing(c: Comparison, values_a: list[float], values_b: list[float]) -> str | None:
    if c.ci95 is not None:
        return None
    for level, n in ((c.a, c.n_a), (c.b, c.n_b)):
        if n == 0:
            return f"no finished job at {c.factor_name}={level} has {c.metric}"
    if not all(math.isfinite(v) for v in values_a + values_b):
        return "a value is not finite (a diverged run?)"
    for level, n in ((c.a, c.n_a), (c.b, c.n_b)):
        if n < 2:
            return (
                f"{c.factor_name}={level} has {n} value: an interval needs at least 2 seeds "
                "on each side"
            )
    return "every value on both sides is the same: no spread to measure the noise by"


def _decimals(c: Comparison) -> int:
    """Enough decimals to show the interval's width with two significant digits (2 to 6)."""
    width = c.ci95[1] - c.ci95[0] if c.ci95 else abs(c.diff or 0)
    if width <= 0:
        return 3
    return min(6, max(2, 1 - math.floor(math.log10(width))))


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _counts(c: Comparison) -> str:
    unit = "jobs" if c.groups_per_level > 1 else "seeds"
    each = f"{c.n_a} {unit} each" if c.n_a == c.n_b else f"{c.n_a} vs {c.n_b} {unit}"
    return each + (", pooled over the other factors" if c.groups_per_level > 1 else "")


def verdict(c: Comparison) -> str:
    """The comparison in one sentence, e.g. ``pre_norm=False raises val/loss by 0.31 compared
    with pre_norm=True (95% CI 0.12 to 0.50, p = 0.01, 3 seeds each)``."""
    a, b = f"{c.factor_name}={c.a}", f"{c.factor_name}={c.b}"
    if c.diff is None:
        return f"{a} vs {b}: no {c.metric} to compare ({c.missing})"
    d = _decimals(c)
    if c.ci95 is None:
        return f"{a} minus {b}: {c.metric} {c.diff:+.{d}f}, no interval and no test ({c.missing})"
    lo, hi = c.ci95
    stats = f"{format_p(c.p_value)}, {_counts(c)}"
    if lo <= 0 <= hi:
        return (
            f"{a} vs {b}: {c.metric} differs by {c.diff:+.{d}f} (95% CI {lo:+.{d}f} to "
            f"{hi:+.{d}f}, {stats}): not distinguishable from seed noise" + _paired_clause(c, d)
        )
    # the interval of the change in the direction the sentence states
    direction, lo, hi = ("lowers", -hi, -lo) if c.diff < 0 else ("raises", lo, hi)
    return (
        f"{a} {direction} {c.metric} by {abs(c.diff):.{d}f} compared with {b} "
        f"(95% CI {lo:.{d}f} to {hi:.{d}f}, {stats})" + _paired_clause(c, d)
    )


def _paired_clause(c: Comparison, d: int) -> str:
    """The seed-by-seed comparison, where its verdict differs from Welch's (it is the one to
    go by: see the module's docstring); nothing where they agree."""
    pair = c.paired
    if pair is None or pair.ci95 is None or c.ci95 is None:
        return ""
    lo, hi = pair.ci95
    pair_noise, welch_noise = lo <= 0 <= hi, c.ci95[0] <= 0 <= c.ci95[1]
    if pair_noise == welch_noise:
        return ""
    return (
        f"; but the jobs share seeds, and seed by seed ({len(c.paired_seeds)} seeds) it is "
        f"{pair.diff:+.{d}f} (95% CI {lo:+.{d}f} to {hi:+.{d}f}, {format_p(pair.p_value)}): "
        + ("not distinguishable from seed noise" if pair_noise else "larger than seed noise")
    )


def _number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those are null."""
    return value if value is not None and math.isfinite(value) else None


def _interval(ci: tuple[float, float] | None) -> list[float] | None:
    return [ci[0], ci[1]] if ci else None


def report_data(
    jobs: list[JobResult], groups: list[Group], comparisons: list[Comparison]
) -> dict[str, Any]:
    """What ``report.json`` holds (null where not computable)."""
    json_groups = []
    for group in groups:
        metrics = {}
        for metric in METRICS:
            stats = group.describe(metric)
            metrics[metric] = {
                "values": group.values(metric),
                "n": stats.n,
                "mean": stats.mean,
                "std": stats.std,
                "ci95": _interval(stats.ci95),
            }
        json_groups.append(
            {
                "label": group.label,
                "overrides": {key: parse_value(value) for key, value in group.setting.items()},
                "seeds": group.seeds,
                "n": len(group.finished),
                "metrics": metrics,
                "jobs": [job.path.name for job in group.finished],
                "failed_jobs": [job.path.name for job in group.unfinished],
            }
        )
    json_comparisons = [
        {
            "metric": c.metric,
            "factor": c.factor,
            "a": parse_value(c.a) if c.a != NOT_SET else None,
            "b": parse_value(c.b) if c.b != NOT_SET else None,
            "diff": c.diff,
            "ci95": _interval(c.ci95),
            "p_value": c.p_value,
            "n_a": c.n_a,
            "n_b": c.n_b,
            "df": c.df,
            "pooled_over_other_factors": c.groups_per_level > 1,
            "paired_by_seed": None
            if c.paired is None
            else {
                "seeds": c.paired_seeds,
                "diff": c.paired.diff,
                "ci95": _interval(c.paired.ci95),
                "p_value": c.paired.p_value,
            },
            "missing": c.missing,
            "verdict": c.verdict,
        }
        for c in comparisons
    ]
    failed = [
        {
            "job": job.path.name,
            "overrides": job.overrides if job.overrides_known else None,
            "last_output_line": job.last_output_line,
        }
        for job in jobs
        if not job.finished
    ]
    return _json_safe(
        {"groups": json_groups, "comparisons": json_comparisons, "failed_jobs": failed}
    )


def _json_safe(value: Any) -> Any:
    """``value`` with every float that JSON cannot hold (NaN, infinity) as null."""
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value
