"""Seed groups of a sweep (or of runs compared) and the comparisons between their settings.

A group is the jobs whose overrides differ only in ``seed``: replicates of one setting. A key
that some jobs override and others do not takes, in those others, the value their own config
had (``lr=0.0006 (default)``), so a run with an override is compared with the defaults. A
factor is a key whose value differs between groups; its levels are its values in the order the
jobs list them, the defaults first. The unit of every statistic is one finished job's value.

A comparison of two levels of a factor holds the other factors fixed. Where every setting of
the other factors was run at both levels (a factorial grid), it pools all finished jobs at each
level: the factor's main effect, the other factors' effects widening its interval like extra
noise. Where not (runs that differ in more than one way), it compares only the groups that
differ in this factor alone, one comparison per setting of the others, and names the groups
that have no such partner: they are never pooled into a level silently.

Each comparison has one verdict, from the test that fits the design: seed by seed (each seed's
value at one level against its value at the other, a paired t-test) where both levels ran the
same seeds, since jobs of one seed share their data order and initial weights and are not
independent draws; Welch's test otherwise. The other test's figures stand beside it, labelled.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from llm_scratch.report.collect import BEST_VAL_BPB, BEST_VAL_LOSS, JobResult, parse_value
from llm_scratch.report.stats import Description, Difference, describe, paired, welch

# The figures every group and comparison reports, named as in summary.json's "metrics".
METRICS: dict[str, str] = {
    "val/loss": "final validation loss (the last validation)",
    "val/bpb": "bits per byte at the last validation (the same scale for any tokenizer)",
    BEST_VAL_LOSS: "best validation loss (the lowest validation of the run)",
    BEST_VAL_BPB: "best bits per byte (the lowest validation of the run)",
    "train/epoch_loss": "train loss of the last epoch (its token-weighted mean)",
}
# the level of a key a job did not set when its .hydra/ does not say what it ran with
DEFAULT = "default"
_DEFAULT_SUFFIX = " (default)"
# kept for scripts that imported it: a key a job does not set is now its default's level
NOT_SET = DEFAULT
PAIRED = "seed by seed"
WELCH = "Welch"


def is_default(level: str) -> bool:
    return level == DEFAULT or level.endswith(_DEFAULT_SUFFIX)


def level_value(level: str) -> Any:
    """A level as the value it stands for (``0.0006 (default)`` -> 0.0006; ``default`` ->
    None)."""
    if level == DEFAULT:
        return None
    return parse_value(level.removesuffix(_DEFAULT_SUFFIX))


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
    values of the finished jobs at each level (with ``context``'s other factors fixed)."""

    metric: str
    factor: str
    factor_name: str  # the key as labels show it (``pre_norm`` for ``model.pre_norm``)
    a: str
    b: str
    n_a: int
    n_b: int
    groups_per_level: int  # > 1: pooled over the other factors' levels
    # Welch's test: every finished job an independent value
    diff: float | None = None
    ci95: tuple[float, float] | None = None
    p_value: float | None = None
    df: float | None = None
    missing: str | None = None  # why ci95 / p_value (or diff) are not computable
    # seed by seed, where both levels ran at least 2 of the same seeds (None otherwise): each
    # seed's mean at level a minus its mean at level b
    paired: Difference | None = None
    paired_seeds: list[Any] = field(default_factory=list)
    # the test the verdict is from: PAIRED where both levels ran the same seeds, else WELCH
    test: str = WELCH
    # the other factors held fixed ({} when there are none, or when pooled over a full grid)
    context: dict[str, str] = field(default_factory=dict)
    context_text: str = ""
    # groups at a or b with no partner at the other level (they differ in more than one way)
    left_out: list[str] = field(default_factory=list)
    verdict: str = field(default="", repr=False)
    # the other test's figures, labelled (shown beside the verdict)
    other: str = ""

    @property
    def chosen(self) -> tuple[float | None, tuple[float, float] | None, float | None]:
        """(difference, 95% CI, p) of the test the verdict is from."""
        if self.test == PAIRED and self.paired is not None:
            return self.paired.diff, self.paired.ci95, self.paired.p_value
        return self.diff, self.ci95, self.p_value

    @property
    def distinguishable(self) -> bool | None:
        """Whether the verdict's interval leaves out 0 (None: no interval)."""
        _, ci, _ = self.chosen
        return None if ci is None else not ci[0] <= 0 <= ci[1]


def group_jobs(jobs: list[JobResult]) -> list[Group]:
    """The seed groups of ``jobs``, in the order of each group's first job, labelled by the
    factors that tell them apart (``all jobs`` when the jobs differ only in seed, the job's own
    label for a single job). A job whose overrides are unknown belongs to no group."""
    known = [job for job in jobs if job.overrides_known]
    keys: list[str] = []
    for job in known:
        keys += [key for key in job.setting if key not in keys]
    groups: dict[frozenset, Group] = {}
    for job in known:
        setting = {
            key: job.setting[key] if key in job.setting else _default(job, key) for key in keys
        }
        groups.setdefault(frozenset(setting.items()), Group(setting=setting, jobs=[])).jobs.append(
            job
        )
    result = list(groups.values())
    varied = factors(result)
    names = factor_names(varied)
    for group in result:
        parts = [f"{names[key]}={group.setting[key]}" for key in varied]
        alone = group.jobs[0].label if len(group.jobs) == 1 else "all jobs"
        group.label = ", ".join(parts) or alone
    return result


def _default(job: JobResult, key: str) -> str:
    value = job.default_of(key)
    return DEFAULT if value is None else value + _DEFAULT_SUFFIX


def factors(groups: list[Group]) -> dict[str, list[str]]:
    """Every override key whose value differs between groups, with its levels: the defaults
    first, then in the order the jobs list them."""
    keys: list[str] = []
    for group in groups:
        keys += [key for key in group.setting if key not in keys]
    result = {}
    for key in keys:
        levels: list[str] = []
        for group in groups:
            level = group.setting.get(key, DEFAULT)
            if level not in levels:
                levels.append(level)
        if len(levels) > 1:
            result[key] = sorted(levels, key=lambda level: not is_default(level))
    return result


def factor_names(varied: dict[str, list[str]]) -> dict[str, str]:
    """The last part of each key (``model.pre_norm`` -> ``pre_norm``) where that is unique."""
    short = {key: key.rsplit(".", 1)[-1] for key in varied}
    unique = len(set(short.values())) == len(short)
    return short if unique else {key: key for key in varied}


# task accuracies logged by evaluation during training (callbacks=eval): eval/<task>/<measure>
_TASK_METRIC = re.compile(r"eval/(?P<task>.+)/(?P<measure>acc|acc_norm)")


def describe_metric(metric: str) -> str:
    """What a metric of the report is, in words."""
    if metric in METRICS:
        return METRICS[metric]
    task = _TASK_METRIC.fullmatch(metric)
    if task is not None:
        normalised = " (length-normalised)" if task["measure"] == "acc_norm" else ""
        return f"accuracy on the task {task['task']}{normalised} at the last evaluation"
    return metric


def all_metrics(groups: list[Group]) -> list[str]:
    """:data:`METRICS`, then the task accuracies some job logged (``eval/<task>/acc``)."""
    tasks = {
        key
        for group in groups
        for job in group.finished
        for key in (job.summary.get("metrics") or {})
        if isinstance(key, str) and _TASK_METRIC.fullmatch(key)
    }
    return [*METRICS, *sorted(tasks)]


def metrics_present(groups: list[Group]) -> list[str]:
    """The metrics of :func:`all_metrics` that some finished job has (runs from before val/bpb
    was logged have none of it: no empty comparisons for it)."""
    return [
        m for m in all_metrics(groups) if any(v is not None for g in groups for v in g.values(m))
    ]


def main_metric(groups: list[Group]) -> str:
    """The metric the summary is about: val/bpb where every finished job logged it (the same
    scale for any tokenizer), else val/loss."""
    finished = [job for group in groups for job in group.finished]
    if finished and all(job.value("val/bpb") is not None for job in finished):
        return "val/bpb"
    return "val/loss"


def compare(groups: list[Group], metrics: list[str] | None = None) -> list[Comparison]:
    """For each metric and factor, each level after the first compared with the first (the
    baseline), the other factors held fixed (see the module's docstring)."""
    varied = factors(groups)
    names = factor_names(varied)
    comparisons = []
    for metric in metrics if metrics is not None else metrics_present(groups):
        for factor, levels in varied.items():
            baseline = levels[0]
            for level in levels[1:]:
                comparisons += _compare_levels(
                    groups, varied, names, metric, factor, level, baseline
                )
    return comparisons


def _compare_levels(
    groups: list[Group],
    varied: dict[str, list[str]],
    names: dict[str, str],
    metric: str,
    factor: str,
    a: str,
    b: str,
) -> list[Comparison]:
    others = [key for key in varied if key != factor]

    def context(group: Group) -> tuple[str, ...]:
        return tuple(group.setting.get(key, DEFAULT) for key in others)

    at_a = [g for g in groups if g.setting.get(factor, DEFAULT) == a]
    at_b = [g for g in groups if g.setting.get(factor, DEFAULT) == b]
    contexts_a = [context(g) for g in at_a]
    contexts_b = [context(g) for g in at_b]
    if set(contexts_a) == set(contexts_b):  # every setting of the others at both: pool
        return [_compare(metric, factor, names[factor], a, b, at_a, at_b, {}, [])]
    shared = [
        c for c in dict.fromkeys(contexts_a + contexts_b) if c in contexts_a and c in contexts_b
    ]
    left_out = [g.label for g in at_a + at_b if context(g) not in shared]
    if not shared:
        comparison = _compare(metric, factor, names[factor], a, b, [], [], {}, left_out)
        comparison.n_a, comparison.n_b = (
            sum(len(g.finished) for g in at_a),
            sum(len(g.finished) for g in at_b),
        )
        comparison.missing = (
            f"no run at {names[factor]}={a} has the same other settings as a run at "
            f"{names[factor]}={b}: they differ in more than one way"
        )
        comparison.diff = comparison.ci95 = comparison.p_value = None
        comparison.verdict = verdict(comparison)
        return [comparison]
    result = []
    for fixed in shared:
        setting = dict(zip(others, fixed, strict=True))
        in_a = [g for g in at_a if context(g) == fixed]
        in_b = [g for g in at_b if context(g) == fixed]
        text = ", ".join(f"{names[key]}={level}" for key, level in setting.items())
        result.append(
            _compare(metric, factor, names[factor], a, b, in_a, in_b, setting, left_out, text)
        )
    return result


def _values(groups: list[Group], metric: str) -> list[float]:
    """The pooling unit: every finished job's value in these groups."""
    return [v for g in groups for v in g.values(metric) if v is not None]


def _seed_means(groups: list[Group], metric: str) -> dict[Any, float]:
    """Each seed's mean value over these groups."""
    by_seed: dict[Any, list[float]] = {}
    for group in groups:
        for seed, value in zip(group.seeds, group.values(metric), strict=True):
            if seed is not None and value is not None:
                by_seed.setdefault(seed, []).append(value)
    return {seed: math.fsum(values) / len(values) for seed, values in by_seed.items()}


def _compare(
    metric: str,
    factor: str,
    name: str,
    a: str,
    b: str,
    at_a: list[Group],
    at_b: list[Group],
    context: dict[str, str],
    left_out: list[str],
    context_text: str = "",
) -> Comparison:
    values_a, values_b = _values(at_a, metric), _values(at_b, metric)
    difference = welch(values_a, values_b)
    means_a, means_b = _seed_means(at_a, metric), _seed_means(at_b, metric)
    shared = [seed for seed in means_a if seed in means_b]
    comparison = Comparison(
        metric=metric,
        factor=factor,
        factor_name=name,
        a=a,
        b=b,
        n_a=len(values_a),
        n_b=len(values_b),
        groups_per_level=max(len(at_a), len(at_b), 1),
        diff=difference.diff,
        ci95=difference.ci95,
        p_value=difference.p_value,
        df=difference.df,
        context=context,
        context_text=context_text,
        left_out=left_out,
    )
    if len(shared) >= 2:
        comparison.paired_seeds = shared
        comparison.paired = paired([means_a[s] for s in shared], [means_b[s] for s in shared])
    same_seeds = len(shared) >= 2 and set(means_a) == set(means_b)
    if same_seeds and comparison.paired.ci95 is not None:
        comparison.test = PAIRED
    comparison.missing = _why_missing(comparison, values_a, values_b)
    comparison.verdict = verdict(comparison)
    comparison.other = other_test(comparison)
    return comparison


def _why_missing(c: Comparison, values_a: list[float], values_b: list[float]) -> str | None:
    if c.chosen[1] is not None:
        return None
    for level, n in ((c.a, c.n_a), (c.b, c.n_b)):
        if n == 0:
            return f"no finished job at {c.factor_name}={level} has {c.metric}"
    if not all(math.isfinite(v) for v in values_a + values_b):
        return "a value is not finite: a diverged run?"
    for level, n in ((c.a, c.n_a), (c.b, c.n_b)):
        if n < 2:
            return (
                f"{c.factor_name}={level} has {n} value: an interval needs at least 2 seeds "
                "on each side"
            )
    return "every value on both sides is the same: no spread to measure the noise by"


def _decimals(c: Comparison) -> int:
    """Enough decimals to show the interval's width with two significant digits (2 to 6)."""
    diff, ci, _ = c.chosen
    width = ci[1] - ci[0] if ci else abs(diff or 0)
    if width <= 0:
        return 3
    return min(6, max(2, 1 - math.floor(math.log10(width))))


def format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _counts(c: Comparison) -> str:
    pooled = ", pooled over the other factors" if c.groups_per_level > 1 else ""
    if c.test == PAIRED:
        return f"seed by seed, {len(c.paired_seeds)} seeds{pooled}"
    unit = "jobs" if c.groups_per_level > 1 else "seeds"
    each = f"{c.n_a} {unit} each" if c.n_a == c.n_b else f"{c.n_a} vs {c.n_b} {unit}"
    return each + pooled


def verdict(c: Comparison) -> str:
    """The comparison in one sentence, from the test that fits the design, e.g.
    ``pre_norm=False raises val/loss by 0.31 compared with pre_norm=True (95% CI 0.12 to 0.50,
    p = 0.01, seed by seed, 3 seeds): larger than seed noise``."""
    a, b = f"{c.factor_name}={c.a}", f"{c.factor_name}={c.b}"
    where = f", with {c.context_text}" if c.context_text else ""
    diff, ci, p = c.chosen
    if diff is None:
        return f"{a} vs {b}{where}: no {c.metric} to compare ({c.missing})"
    d = _decimals(c)
    if ci is None:
        return (
            f"{a} minus {b}{where}: {c.metric} {diff:+.{d}f}, no interval and no test ({c.missing})"
        )
    lo, hi = ci
    stats = f"{format_p(p)}, {_counts(c)}"
    if lo <= 0 <= hi:
        return (
            f"{a} vs {b}{where}: {c.metric} differs by {diff:+.{d}f} (95% CI {lo:+.{d}f} to "
            f"{hi:+.{d}f}, {stats}): not distinguishable from seed noise"
        )
    # the interval of the change in the direction the sentence states
    direction, lo, hi = ("lowers", -hi, -lo) if diff < 0 else ("raises", lo, hi)
    return (
        f"{a} {direction} {c.metric} by {abs(diff):.{d}f} compared with {b}{where} "
        f"(95% CI {lo:.{d}f} to {hi:.{d}f}, {stats}): larger than seed noise"
    )


def other_test(c: Comparison) -> str:
    """The figures of the test the verdict is not from, labelled; empty where there are none."""
    d = _decimals(c)
    if c.test == PAIRED:
        label, diff, ci, p = "Welch's test (each job as independent)", c.diff, c.ci95, c.p_value
    elif c.paired is not None:
        label = f"seed by seed ({len(c.paired_seeds)} seeds both levels ran)"
        diff, ci, p = c.paired.diff, c.paired.ci95, c.paired.p_value
    else:
        return ""
    if diff is None:
        return ""
    if ci is None:
        return f"{label}: {diff:+.{d}f}, no interval"
    return f"{label}: {diff:+.{d}f} (95% CI {ci[0]:+.{d}f} to {ci[1]:+.{d}f}, {format_p(p)})"


def _number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those are null."""
    return value if value is not None and math.isfinite(value) else None


def _interval(ci: tuple[float, float] | None) -> list[float] | None:
    return [ci[0], ci[1]] if ci else None


def report_data(
    jobs: list[JobResult],
    groups: list[Group],
    comparisons: list[Comparison],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``report.json`` holds (null where not computable), with ``extra``'s entries."""
    json_groups = []
    for group in groups:
        metrics = {}
        for metric in all_metrics(groups):
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
                "overrides": {key: level_value(value) for key, value in group.setting.items()},
                # keys the group's jobs did not override: the value their config had
                "defaults": [key for key, value in group.setting.items() if is_default(value)],
                "seeds": group.seeds,
                "n": len(group.finished),
                "metrics": metrics,
                "jobs": [job.name for job in group.finished],
                "failed_jobs": [job.name for job in group.unfinished],
            }
        )
    json_comparisons = [
        {
            "metric": c.metric,
            "factor": c.factor,
            "a": level_value(c.a),
            "b": level_value(c.b),
            "b_is_default": is_default(c.b),
            # the other factors held fixed ({}: none, or pooled over a full grid)
            "context": {key: level_value(level) for key, level in c.context.items()},
            "left_out": c.left_out,
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
            "test": "paired_by_seed" if c.test == PAIRED else "welch",
            "distinguishable": c.distinguishable,
            "verdict": c.verdict,
            "other_test": c.other or None,
        }
        for c in comparisons
    ]
    failed = [
        {
            "job": job.name,
            "overrides": job.overrides if job.overrides_known else None,
            "last_output_line": job.last_output_line,
        }
        for job in jobs
        if not job.finished
    ]
    data = {"groups": json_groups, "comparisons": json_comparisons, "failed_jobs": failed}
    return _json_safe({**data, **(extra or {})})


def _json_safe(value: Any) -> Any:
    """``value`` with every float that JSON cannot hold (NaN, infinity) as null."""
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value
