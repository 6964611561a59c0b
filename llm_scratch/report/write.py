"""Write ``report.md``, ``report.json`` and the PNG plots for a collected sweep (or run)."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from llm_scratch.errors import UserError  # noqa: E402
from llm_scratch.report.collect import BEST_VAL_LOSS, JobResult, parse_value  # noqa: E402
from llm_scratch.report.groups import (  # noqa: E402
    METRICS,
    NOT_SET,
    Comparison,
    Group,
    compare,
    factor_names,
    factors,
    format_p,
    group_jobs,
    report_data,
)
from llm_scratch.utils.io import atomic_write_bytes, atomic_write_text  # noqa: E402


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _ema(values: list[float], alpha: float = 0.2) -> list[float]:
    out, avg = [], None
    for v in values:
        avg = v if avg is None else alpha * v + (1 - alpha) * avg
        out.append(avg)
    return out


def _smoothed(points: list[tuple[int, float]], smooth: bool) -> dict[int, float]:
    steps = [step for step, _ in points]
    values = [value for _, value in points]
    return dict(zip(steps, _ema(values) if smooth else values, strict=True))


def _plot_group(ax, group: Group, curve: str, smooth: bool) -> bool:
    """The group's curve: a single job's as it is (a moving average over the faint raw curve
    when smoothed); several seeds' mean at each step they all logged, with a band from their
    minimum to their maximum. True if a band was drawn."""
    curves = [points for job in group.finished if (points := getattr(job, f"{curve}_curve"))]
    if not curves:
        return False
    marker = "o" if max(len(c) for c in curves) < 30 else None
    if len(curves) == 1:
        steps, values = zip(*curves[0], strict=True)
        if smooth:
            line = ax.plot(steps, _ema(list(values)), label=group.label, linewidth=1.5)[0]
            ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
        else:
            ax.plot(steps, values, label=group.label, marker=marker)
        return False
    by_step = [_smoothed(points, smooth) for points in curves]
    steps = sorted(set.intersection(*(set(c) for c in by_step)))
    if not steps:  # the seeds logged at different steps: no mean to take, show each
        for job, points in zip(group.finished, curves, strict=False):
            ax.plot(*zip(*points, strict=True), label=f"{group.label} (job {job.path.name})")
        return False
    per_step = [[c[step] for c in by_step] for step in steps]
    mean = [sum(values) / len(values) for values in per_step]
    label = f"{group.label} (mean of {len(curves)} seeds)"
    line = ax.plot(steps, mean, label=label, marker=marker, linewidth=1.5)[0]
    lows, highs = [min(v) for v in per_step], [max(v) for v in per_step]
    ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
    return True


def _save_png(fig, path: Path) -> None:
    """The figure as a PNG at ``path``, written whole or not at all; the figure is closed."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_curves(
    groups: list[Group], unfinished: list[JobResult], curve: str, title: str, path: Path
) -> bool:
    """One PNG with the ``curve`` ("train" or "val") of every seed group (its finished jobs)
    and, dashed, of every job that did not finish; False if no data."""
    all_curves = [getattr(job, f"{curve}_curve") for g in groups for job in g.jobs]
    if not any(all_curves):
        return False
    # long, noisy training curves: a moving average (over the faint raw curve of a single job)
    smooth = curve == "train" and max(len(points) for points in all_curves) > 60
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    banded = [_plot_group(ax, group, curve, smooth) for group in groups]
    for job in unfinished:
        points = getattr(job, f"{curve}_curve")
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, linestyle="--", label=f"{job.label} (did not finish)")
    notes = [
        note
        for note, used in (
            ("lines: moving average", smooth),
            ("bands: min to max over seeds", any(banded)),
        )
        if used
    ]
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title + (f" ({'; '.join(notes)})" if notes else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save_png(fig, path)
    return True


def numeric_factors(groups: list[Group]) -> dict[str, list[float]]:
    """The factors with at least 3 levels, every one a number (``optimizer.lr``): a metric's
    response to them is a curve worth drawing. Levels sorted."""
    result = {}
    for key, levels in factors(groups).items():
        values = [parse_value(level) for level in levels]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if len(levels) >= 3 and len(numbers) == len(levels):
            result[key] = sorted(numbers)
    return result


def plot_response(groups: list[Group], factor: str, metric: str, name: str, path: Path) -> bool:
    """One PNG of ``metric`` against the numeric ``factor``: per combination of the other
    factors' levels, each group's mean with its 95% CI as an error bar, each seed as a dot; a
    log axis where the levels span a decade or more. False if no group has the metric."""
    names = factor_names(factors(groups))
    others = [key for key in names if key != factor]
    lines: dict[str, list[tuple[float, Group]]] = {}
    for group in groups:
        if group.describe(metric).n == 0:
            continue
        label = ", ".join(f"{names[key]}={group.setting.get(key, NOT_SET)}" for key in others)
        lines.setdefault(label, []).append((float(parse_value(group.setting[factor])), group))
    if not lines:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, points in lines.items():
        points.sort(key=lambda point: point[0])
        xs = [x for x, _ in points]
        stats = [group.describe(metric) for _, group in points]
        means = [s.mean for s in stats]
        below = [s.mean - s.ci95[0] if s.ci95 else 0.0 for s in stats]
        above = [s.ci95[1] - s.mean if s.ci95 else 0.0 for s in stats]
        bars = ax.errorbar(
            xs, means, yerr=[below, above], marker="o", capsize=3, label=label or None
        )
        for x, group in points:
            seeds = [v for v in group.values(metric) if v is not None]
            ax.plot([x] * len(seeds), seeds, ".", color=bars[0].get_color(), alpha=0.35)
    every = [x for points in lines.values() for x, _ in points]
    if min(every) > 0 and max(every) / min(every) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.set_ylabel(metric)
    ax.set_title(
        f"{METRICS[metric]} against {name}\n(points: mean; bars: 95% CI; dots: seeds)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    if any(lines):
        ax.legend(fontsize=7)
    _save_png(fig, path)
    return True


def _response_section(groups: list[Group], out_dir: Path) -> list[str]:
    lines = []
    numeric = numeric_factors(groups)
    names = factor_names(factors(groups))
    for factor in numeric:
        name = names[factor]
        for metric in ("val/loss", "train/epoch_loss"):
            file = f"{name}_{metric.replace('/', '_')}.png"
            if plot_response(groups, factor, metric, name, out_dir / file):
                lines += [f"![{metric} against {name}]({file})", ""]
    if lines:
        lines = [
            "## Against the numeric factors",
            "",
            "Each group's mean (its seeds pooled) against the factor's value, with the group's "
            "95% CI of the mean as an error bar (none for a group of one) and each seed's value "
            "as a dot; one line per setting of the other factors.",
            "",
            *lines,
        ]
    return lines


def _table(jobs: list[JobResult]) -> list[str]:
    memory_kind = next((j.summary.get("peak_memory_kind") for j in jobs if j.summary), None)
    memory_head = "peak GPU memory (MB)" if memory_kind == "cuda_max_allocated" else "peak RSS (MB)"
    lines = [
        f"| job | overrides | final train loss | train loss, last epoch | val loss | best val loss "
        f"| val ppl | tokens/s | {memory_head} | parameters | wall time (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for job in jobs:
        if not job.finished:
            lines.append(
                f"| {job.path.name} | {job.label} | {_fmt(job.last('train'))} | | "
                f"{_fmt(job.last('val'))} | | | | | | did not finish |"
            )
            continue
        s = job.summary
        lines.append(
            f"| {job.path.name} | {job.label} | {_fmt(job.last('train'))} "
            f"| {_fmt(job.metric('train/epoch_loss'))} | {_fmt(job.metric('val/loss'))} "
            f"| {_fmt(job.value(BEST_VAL_LOSS))} | {_fmt(job.metric('val/ppl'), 1)} | {_fmt(s.get('tokens_per_sec'), 0)} "
            f"| {_fmt(s.get('peak_memory_mb'), 0)} | {s.get('num_params', 0):,} "
            f"| {_fmt(s.get('wall_time_s'), 0)} |"
        )
    return lines


def _sample_cell(text: str | None) -> str:
    """One table cell: newlines shown as ↵ (a run of them as ↵×N), pipes escaped."""
    if not text:
        return "–"
    text = re.sub(r"\n{3,}", lambda m: f" ↵×{len(m.group())} ", text)
    return text.replace("\n", "↵").replace("|", "\\|")


def _samples(jobs: list[JobResult]) -> list[str]:
    lines = [
        "| job | sample at the last validation (callbacks.text_sampler settings; ↵ = newline) |",
        "| --- | --- |",
    ]
    lines += [f"| {job.label} | {_sample_cell(job.sample)} |" for job in jobs]
    return lines


def _unfinished_section(jobs: list[JobResult], single_run: bool) -> list[str]:
    unfinished = [job for job in jobs if not job.finished]
    if not unfinished:
        return []
    if single_run:
        lines = [
            "## ⚠ The run has not finished",
            "",
            "It wrote no summary.json (it failed, was stopped, or is still running). The curves "
            "below are what it logged so far.",
        ]
    elif len(unfinished) == len(jobs):
        lines = [
            "## ⚠ No job has finished",
            "",
            "No job wrote its summary.json (they failed, were stopped, or are still running): "
            "there are no final figures to pool or compare. The curves below are what the jobs "
            "logged so far.",
        ]
    else:
        lines = [
            f"## ⚠ Jobs that did not finish ({len(unfinished)} of {len(jobs)})",
            "",
            "These jobs wrote no summary.json (they failed, were stopped, or are still "
            "running). Their groups below pool only the seeds that finished, and the "
            "comparisons pool fewer jobs at their levels.",
        ]
    lines += ["", "| job | overrides | last line of its job_output.log |", "| --- | --- | --- |"]
    for job in unfinished:
        last = job.last_output_line or "–"
        last = last.replace("`", "'").replace("|", "\\|")  # stays one code span, one cell
        lines.append(f"| {job.path.name} | {job.label} | `{last}` |")
    if any(not job.overrides_known for job in unfinished):
        lines += ["", "A job whose overrides are unknown is in no group."]
    return [*lines, ""]


def _values_cell(values: list[float | None], seeds: list) -> str:
    return ", ".join(f"{_fmt(v)} (seed {seed})" for v, seed in zip(values, seeds, strict=True))


def _interval_cell(ci: tuple[float, float] | None, digits: int = 3) -> str:
    return f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}" if ci else "–"


def _groups_section(groups: list[Group]) -> list[str]:
    lines = [
        "## Groups: seeds pooled",
        "",
        "A group is the jobs whose overrides differ only in `seed`. n: its finished jobs with the metric; mean "
        "and sd (sample standard deviation, n − 1) of their values; 95% CI of the mean: "
        "Student's t with n − 1 degrees of freedom (none for a group of one).",
        "",
    ]
    for metric, meaning in METRICS.items():
        lines += [
            f"### {metric}: {meaning}",
            "",
            "| group | n | mean | sd | 95% CI of the mean | values |",
            "| --- | ---: | ---: | ---: | --- | --- |",
        ]
        for group in groups:
            stats = group.describe(metric)
            lines.append(
                f"| {group.label} | {stats.n} | {_fmt(stats.mean)} "
                f"| {_fmt(stats.std)} | {_interval_cell(stats.ci95)} "
                f"| {_values_cell(group.values(metric), group.seeds) or '–'} |"
            )
        lines.append("")
    return lines


def _comparisons_section(groups: list[Group], comparisons: list[Comparison]) -> list[str]:
    lines = ["## Comparisons: which differences are larger than seed noise", ""]
    varied = factors(groups)
    if not varied:
        return [*lines, "The jobs differ only in seed: one setting, nothing to compare.", ""]
    names = factor_names(varied)
    lines += [
        "For each factor the sweep varies, its first level as listed (the baseline, b) against "
        "each other level (a): a − b is the difference of their means, each finished job (one "
        "seed of one setting) counting once; 95% CI: Welch's interval (Welch–Satterthwaite "
        "degrees of freedom); p: Welch's two-sided t-test. Where the interval contains 0, the "
        "difference is not distinguishable from seed noise. An interval needs at least 2 "
        "values on each side.",
        "",
        "Seed by seed: where both levels ran the same seeds, each seed's mean at a minus its "
        "mean at b (over the other factors' levels), with Student's t interval of their mean "
        "and the paired t-test. Jobs of one seed share their data order and, where the "
        "settings allow, their initial weights, so they are alike and not independent draws: "
        "Welch's test, which counts every job, is then too sure, and the seed-by-seed "
        "comparison, whose unit is one seed, is the one to go by. A verdict says so where the "
        "two disagree.",
        "",
    ]
    if len(varied) > 1:
        lines += [
            f"The sweep varies {len(varied)} factors "
            f"({', '.join(f'`{names[k]}`' for k in varied)}): each comparison pools all jobs at "
            "a level over the other factors' levels, so in a factorial grid it is that factor's "
            "main effect, and the other factors' effects count as noise (a wider interval).",
            "",
        ]
    for key, levels in varied.items():
        if len(levels) > 2:
            lines += [
                f"`{names[key]}` has {len(levels)} levels: each is compared with the baseline "
                f"`{names[key]}={levels[0]}`, the first listed.",
                "",
            ]
    for metric, meaning in METRICS.items():
        of_metric = [c for c in comparisons if c.metric == metric]
        lines += [f"### {metric}: {meaning}", ""]
        lines += [f"- {c.verdict}" for c in of_metric]
        lines += [
            "",
            "| factor | a | b (baseline) | a − b | 95% CI | p | n a | n b "
            "| seed by seed: a − b | 95% CI | p | seeds |",
            "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
        ]
        for c in of_metric:
            pair = c.paired
            lines.append(
                f"| {c.factor_name} | {c.a} | {c.b} | {_diff_cell(c.diff)} "
                f"| {_interval_cell(c.ci95)} | {_p_cell(c.p_value)} | {c.n_a} | {c.n_b} "
                f"| {_diff_cell(pair and pair.diff)} | {_interval_cell(pair and pair.ci95)} "
                f"| {_p_cell(pair and pair.p_value)} | {len(c.paired_seeds) or '–'} |"
            )
        lines.append("")
    return lines


def _diff_cell(diff: float | None) -> str:
    return f"{diff:+.3f}" if diff is not None else "–"


def _p_cell(p: float | None) -> str:
    return format_p(p)[2:].removeprefix("= ") if p is not None else "–"


def write_report(
    jobs: list[JobResult],
    shared: list[str],
    out_dir: Path,
    title: str = "Sweep report",
    single_run: bool = False,
) -> Path:
    """Write ``report.md``, ``report.json``, ``train_loss.png`` and ``val_loss.png`` into
    ``out_dir`` (for ``single_run``, worded as one run's report, without groups and
    comparisons); a :class:`UserError` when ``out_dir`` cannot be created or written."""
    try:
        return _write_report(jobs, shared, out_dir, title, single_run)
    except OSError as error:
        where = error.filename if error.filename is not None else out_dir
        reason = error.strerror or str(error)
        if isinstance(error, (FileExistsError, NotADirectoryError)):
            reason = "a file is in the way of the directory"
        raise UserError(
            f"Cannot write the report to {out_dir} ({where}: {reason}); pass "
            "a writable directory with --out DIR."
        ) from error


def _continued_section(jobs: list[JobResult]) -> list[str]:
    """Which runs' curves a continued run's plots and best val loss begin with."""
    continued = [job for job in jobs if job.continued_from]
    if not continued:
        return []
    lines = [
        "A continued run (`ckpt_path=` in a new directory) is shown whole: its curves, and its "
        "best val loss, begin with those of the runs it continued, up to the step it started "
        "from.",
        "",
    ]
    for job in continued:
        chain = " → ".join(f"`{run}` (to step {step})" for run, step in job.continued_from)
        lines.append(f"- `{job.path}`: {chain} → this run")
    return [*lines, ""]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _write_report(
    jobs: list[JobResult], shared: list[str], out_dir: Path, title: str, single_run: bool
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_jobs(jobs)
    comparisons = compare(groups)
    unfinished = [job for job in jobs if not job.finished]
    lines = [f"# {title}", ""]
    if single_run:
        overrides = " ".join(jobs[0].overrides) or "none"
        lines += [f"1 job: the run in `{jobs[0].path}`. Its overrides: `{overrides}`.", ""]
    else:
        if shared:
            lines += [f"Settings shared by all jobs: `{' '.join(shared)}`", ""]
        finished = f"{len(unfinished)} did not finish" if unfinished else "all finished"
        lines += [
            f"{_count(len(jobs), 'job')} in {_count(len(groups), 'group')} (jobs that differ "
            f"only in `seed`); {finished}. Figures, statistics and verdicts as data: "
            "`report.json`.",
            "",
        ]
    lines += _continued_section(jobs)
    lines += _unfinished_section(jobs, single_run)
    if not single_run and len(unfinished) < len(jobs):
        lines += _groups_section(groups)
        lines += _response_section(groups, out_dir)
        lines += _comparisons_section(groups, comparisons)
    lines += [
        "## Run" if single_run else "## Jobs",
        "",
        "Final train loss: the last logged training batch; train loss, last epoch: its "
        "token-weighted mean over the last epoch; best val loss: the lowest validation; val "
        "ppl = exp(val loss). Tokens/s: over the whole training, validation included.",
        "",
        *_table(jobs),
        "",
    ]
    plotted = False
    if plot_curves(groups, unfinished, "train", "Training loss", out_dir / "train_loss.png"):
        lines += ["![training loss](train_loss.png)", ""]
        plotted = True
    if plot_curves(groups, unfinished, "val", "Validation loss", out_dir / "val_loss.png"):
        lines += ["![validation loss](val_loss.png)", ""]
        plotted = True
    if plotted and not single_run:
        lines += [
            "Curves: one per group, the mean over its seeds at each step with a band from their "
            "minimum to their maximum (a group of one seed: its own curve, no band); dashed: a "
            "job that did not finish.",
            "",
        ]
    lines += ["## Samples", "", *_samples(jobs), ""]
    data = report_data(jobs, groups, comparisons)
    atomic_write_text(out_dir / "report.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
