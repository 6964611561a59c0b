"""Write ``report.md``, ``report.json`` and the PNG plots for a collected sweep (or run)."""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from llm_scratch.errors import UserError  # noqa: E402
from llm_scratch.report.collect import (  # noqa: E402
    BASE_NAME,
    BEST_VAL_LOSS,
    JobResult,
    Unreadable,
    relative_path,
)
from llm_scratch.report.groups import (  # noqa: E402
    PAIRED,
    Comparison,
    Group,
    compare,
    describe_metric,
    factor_names,
    factors,
    format_p,
    group_jobs,
    level_value,
    main_metric,
    metrics_present,
    report_data,
)
from llm_scratch.report.probes import probes_data, probes_section, seeds_label  # noqa: E402
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


def _plot_group(ax, group: Group, curve: str, smooth: bool) -> str | None:
    """The group's curve: a single job's as it is (a moving average over the faint raw curve
    when smoothed); several seeds' mean at each step they all logged, with a band from their
    minimum to their maximum, or, where they share fewer than 2 steps (a short run), a bar
    from the minimum to the maximum at each. "band" or "bars" if one was drawn."""
    curves = [points for job in group.finished if (points := getattr(job, f"{curve}_curve"))]
    if not curves:
        return None
    marker = "o" if max(len(c) for c in curves) < 30 else None
    if len(curves) == 1:
        steps, values = zip(*curves[0], strict=True)
        if smooth:
            line = ax.plot(steps, _ema(list(values)), label=group.label, linewidth=1.5)[0]
            ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
        else:
            ax.plot(steps, values, label=group.label, marker=marker)
        return None
    by_step = [_smoothed(points, smooth) for points in curves]
    steps = sorted(set.intersection(*(set(c) for c in by_step)))
    if not steps:  # the seeds logged at different steps: no mean to take, show each
        for job, points in zip(group.finished, curves, strict=False):
            ax.plot(*zip(*points, strict=True), label=f"{group.label} (job {job.name})", marker="o")
        return None
    per_step = [[c[step] for c in by_step] for step in steps]
    mean = [sum(values) / len(values) for values in per_step]
    label = f"{group.label} ({seeds_label(len(curves))})"
    lows, highs = [min(v) for v in per_step], [max(v) for v in per_step]
    if len(steps) < 2:  # one point: a band of one step draws nothing
        below = [m - lo for m, lo in zip(mean, lows, strict=True)]
        above = [hi - m for m, hi in zip(mean, highs, strict=True)]
        ax.errorbar(steps, mean, yerr=[below, above], label=label, marker="o", capsize=4)
        return "bars"
    line = ax.plot(steps, mean, label=label, marker=marker, linewidth=1.5)[0]
    ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
    return "band"


def _save_png(fig, path: Path) -> None:
    """The figure as a PNG at ``path``, written whole or not at all; the figure is closed.
    Long labels that tight_layout cannot fit are kept whole by saving with a tight bounding
    box instead, without matplotlib's warning on the console."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Tight layout not applied")
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
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
    drawn = [_plot_group(ax, group, curve, smooth) for group in groups]
    for job in unfinished:
        points = getattr(job, f"{curve}_curve")
        if points:
            steps, values = zip(*points, strict=True)
            marker = "o" if len(points) < 2 else None
            ax.plot(
                steps, values, linestyle="--", marker=marker, label=f"{job.label} (did not finish)"
            )
    notes = [
        note
        for note, used in (
            ("lines: moving average", smooth),
            ("bands: min to max over seeds", "band" in drawn),
            ("bars: min to max over seeds", "bars" in drawn),
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
        values = [level_value(level) for level in levels]
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
        label = ", ".join(f"{names[key]}={group.setting[key]}" for key in others)
        lines.setdefault(label, []).append((float(level_value(group.setting[factor])), group))
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
        f"{describe_metric(metric)} against {name}\n(points: mean; bars: 95% CI; dots: seeds)",
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
        f"| job | overrides | final train loss | train loss, last epoch | val loss | val bpb "
        f"| best val loss | val ppl | tokens/s | {memory_head} | parameters | wall time (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for job in jobs:
        if not job.finished:
            lines.append(
                f"| {job.name} | {job.label} | {_fmt(job.last('train'))} | | "
                f"{_fmt(job.last('val'))} | | | | | | | did not finish |"
            )
            continue
        s = job.summary
        lines.append(
            f"| {job.name} | {job.label} | {_fmt(job.last('train'))} "
            f"| {_fmt(job.metric('train/epoch_loss'))} | {_fmt(job.metric('val/loss'))} "
            f"| {_fmt(job.metric('val/bpb'))} | {_fmt(job.value(BEST_VAL_LOSS))} "
            f"| {_fmt(job.metric('val/ppl'), 1)} | {_fmt(s.get('tokens_per_sec'), 0)} "
            f"| {_fmt(s.get('peak_memory_mb'), 0)} | {_params(s.get('num_params'))} "
            f"| {_fmt(s.get('wall_time_s'), 0)} |"
        )
    return lines


def _params(count: int | None) -> str:
    return f"{count:,}" if count is not None else "–"


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
        lines.append(f"| {job.name} | {job.label} | `{last}` |")
    if any(not job.overrides_known for job in unfinished):
        lines += ["", "A job whose overrides are unknown is in no group."]
    return [*lines, ""]


def _values_cell(values: list[float | None], seeds: list) -> str:
    return ", ".join(f"{_fmt(v)} (seed {seed})" for v, seed in zip(values, seeds, strict=True))


def _interval_cell(ci: tuple[float, float] | None, digits: int = 3) -> str:
    return f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}" if ci else "–"


def _groups_section(groups: list[Group], metrics: list[str]) -> list[str]:
    lines = [
        "## Groups: seeds pooled",
        "",
        "A group is the jobs whose overrides differ only in `seed`. n: its finished jobs with "
        "the metric; mean and sd (sample standard deviation, n − 1) of their values; 95% CI of "
        "the mean: Student's t with n − 1 degrees of freedom (none for a group of one).",
        "",
    ]
    for metric in metrics:
        lines += [
            f"### {metric}: {describe_metric(metric)}",
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


def _verdict_item(c: Comparison) -> str:
    beside = f" *Beside it, {c.other}.*" if c.other else ""
    left = (
        f" *Not compared (no partner that differs in `{c.factor_name}` alone): "
        f"{'; '.join(c.left_out)}.*"
        if c.left_out
        else ""
    )
    return f"- {c.verdict}.{beside}{left}"


def _comparisons_section(
    groups: list[Group], comparisons: list[Comparison], metrics: list[str]
) -> list[str]:
    lines = ["## Comparisons: which differences are larger than seed noise", ""]
    varied = factors(groups)
    if not varied:
        return [*lines, "The jobs differ only in seed: one setting, nothing to compare.", ""]
    names = factor_names(varied)
    lines += [
        "For each factor, its baseline b (the defaults where some runs did not set it, else "
        "the first level listed) against each other level a: a − b is the difference of their "
        "means. Each comparison has one verdict, from the test that fits the design:",
        "",
        "- **seed by seed** where both levels ran the same seeds: each seed's value at a minus "
        "its value at b (its mean over the other factors' levels), Student's t interval and "
        "the paired t-test. Jobs of one seed share their data order and, where the settings "
        "allow, their initial weights, so they are not independent draws; pairing them takes "
        "that into account;",
        "- **Welch** otherwise: every finished job one independent value, Welch's interval "
        "(Welch–Satterthwaite degrees of freedom) and two-sided t-test.",
        "",
        "The other test's figures stand beside the verdict, labelled, and both are in the "
        "table. Where the verdict's 95% interval contains 0, the difference is not "
        "distinguishable from seed noise. An interval needs at least 2 values on each side.",
        "",
    ]
    if len(varied) > 1:
        lines += [
            f"The jobs vary {len(varied)} factors "
            f"({', '.join(f'`{names[k]}`' for k in varied)}). A comparison holds the others "
            "fixed: where every setting of the others was run at both levels (a factorial "
            "grid) it pools all jobs at a level, the factor's main effect, the other factors' "
            "effects counting as noise (a wider interval); where not, it compares only runs "
            "that differ in this factor alone, one comparison per setting of the others, and "
            "names the runs left without such a partner.",
            "",
        ]
    for key, levels in varied.items():
        if len(levels) > 2:
            lines += [
                f"`{names[key]}` has {len(levels)} levels: each is compared with the baseline "
                f"`{names[key]}={levels[0]}`.",
                "",
            ]
    for metric in metrics:
        of_metric = [c for c in comparisons if c.metric == metric]
        lines += [f"### {metric}: {describe_metric(metric)}", ""]
        lines += [_verdict_item(c) for c in of_metric]
        lines += [
            "",
            "| factor | a | b (baseline) | other factors | verdict's test | Welch: a − b | 95% CI "
            "| p | n a | n b | seed by seed: a − b | 95% CI | p | seeds |",
            "| --- | --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: "
            "| ---: |",
        ]
        for c in of_metric:
            pair = c.paired
            lines.append(
                f"| {c.factor_name} | {c.a} | {c.b} | {c.context_text or '–'} | {c.test} "
                f"| {_diff_cell(c.diff)} | {_interval_cell(c.ci95)} | {_p_cell(c.p_value)} "
                f"| {c.n_a} | {c.n_b} | {_diff_cell(pair and pair.diff)} "
                f"| {_interval_cell(pair and pair.ci95)} | {_p_cell(pair and pair.p_value)} "
                f"| {len(c.paired_seeds) or '–'} |"
            )
        lines.append("")
    return lines


def _diff_cell(diff: float | None) -> str:
    return f"{diff:+.3f}" if diff is not None else "–"


def _p_cell(p: float | None) -> str:
    return format_p(p)[2:].removeprefix("= ") if p is not None else "–"


def _summary(
    groups: list[Group], comparisons: list[Comparison], metric: str
) -> tuple[list[str], list[dict]]:
    """A few lines for the top of report.md: each factor's effect on ``metric`` with its
    interval and the verdict; and the same as data for report.json."""
    of_metric = [c for c in comparisons if c.metric == metric]
    if not of_metric:
        return [], []
    why = (
        "bits per byte: the same scale for any tokenizer"
        if metric == "val/bpb"
        else "the final validation loss"
    )
    lines = ["## Summary", "", f"On {metric} ({why}); lower is better.", ""]
    data = []
    for c in of_metric:
        diff, ci, p = c.chosen
        lines.append(f"- **{c.factor_name}**: {c.verdict}.")
        data.append(
            {
                "factor": c.factor,
                "a": level_value(c.a),
                "b": level_value(c.b),
                "context": {key: level_value(level) for key, level in c.context.items()},
                "metric": metric,
                "test": "paired_by_seed" if c.test == PAIRED else "welch",
                "diff": diff,
                "ci95": list(ci) if ci else None,
                "p_value": p,
                "distinguishable": c.distinguishable,
                "verdict": c.verdict,
            }
        )
    return [*lines, ""], data


def _unreadable_section(unreadable: list[Unreadable]) -> list[str]:
    if not unreadable:
        return []
    lines = [
        f"## ⚠ Could not read ({len(unreadable)})",
        "",
        "What the report found but could not use, and what it did without it.",
        "",
        "| file | what is wrong | so |",
        "| --- | --- | --- |",
    ]
    for note in unreadable:
        cells = [_cell(note.path), _cell(note.problem), _cell(note.effect)]
        lines.append(f"| `{cells[0]}` | {cells[1]} | {cells[2]} |")
    return [*lines, ""]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("`", "'")


def _datasets(jobs: list[JobResult]) -> list[dict]:
    """The datasets the finished jobs trained on (summary.json's ``dataset``), each with its
    jobs: the index's folder name and fingerprint, never a path of the machine."""
    found: dict[tuple[str, str], list[str]] = {}
    for job in jobs:
        if job.dataset:
            key = (Path(job.dataset["path"]).name, job.dataset["fingerprint"])
            found.setdefault(key, []).append(job.name)
    return [{"name": n, "fingerprint": f, "jobs": names} for (n, f), names in found.items()]


def _datasets_lines(datasets: list[dict], jobs: int) -> list[str]:
    if not datasets:
        return []
    if len(datasets) == 1:
        only = datasets[0]
        which = "" if len(only["jobs"]) == jobs else f", jobs {', '.join(only['jobs'])}"
        return [f"Dataset: `{only['name']}` (fingerprint `{only['fingerprint']}`){which}.", ""]
    lines = ["Datasets:", ""]
    for d in datasets:
        lines.append(
            f"- `{d['name']}` (fingerprint `{d['fingerprint']}`): jobs {', '.join(d['jobs'])}"
        )
    return [*lines, ""]


def write_report(
    jobs: list[JobResult],
    shared: list[str],
    out_dir: Path,
    title: str = "Sweep report",
    single_run: bool = False,
    unreadable: list[Unreadable] | None = None,
    base: Path | None = None,
) -> Path:
    """Write ``report.md``, ``report.json``, ``train_loss.png`` and ``val_loss.png`` into
    ``out_dir`` (for ``single_run``, worded as one run's report, without groups and
    comparisons); paths are written relative to ``base`` (the directory reported on;
    default ``out_dir``), never as absolute paths of this machine. ``unreadable``: what could not be read outside any job.
    A :class:`UserError` when ``out_dir`` cannot be created or written."""
    try:
        # matplotlib's warnings (values too large to place ticks for, labels too long to fit)
        # say nothing the report does not: the console shows the report's own lines only
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _write_report(
                jobs, shared, out_dir, title, single_run, unreadable or [], base or out_dir
            )
    except OSError as error:
        where = error.filename if error.filename is not None else out_dir
        reason = error.strerror or str(error)
        if isinstance(error, (FileExistsError, NotADirectoryError)):
            reason = "a file is in the way of the directory"
        raise UserError(
            f"Cannot write the report to {out_dir} ({where}: {reason}); pass "
            "a writable directory with --out DIR."
        ) from error


def _continued_section(jobs: list[JobResult], base: Path) -> list[str]:
    """Which runs' curves a continued run's plots and best val loss begin with."""
    continued = [job for job in jobs if job.continued_from]
    if not continued:
        return []
    lines = [
        "A continued run (`ckpt_path=` in a new directory) is shown whole: its curves, and its "
        "best val loss, begin with those of the runs it continued, up to the step it started "
        "from (paths relative to the directory reported on).",
        "",
    ]
    for job in continued:
        chain = " → ".join(
            f"`{relative_path(run, base)}` (to step {step})" for run, step in job.continued_from
        )
        lines.append(f"- `{job.name}`: {chain} → this run")
    return [*lines, ""]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _portable(text: str, base: Path) -> str:
    """``text`` with the report's directory, wherever it is written out in full, as
    ``<sweep dir>`` (a job's console line, a value that slipped through)."""
    for form in {str(base.resolve()), str(base.absolute())}:
        if len(form) > 1:
            text = text.replace(form, BASE_NAME)
    return text


def _write_report(
    jobs: list[JobResult],
    shared: list[str],
    out_dir: Path,
    title: str,
    single_run: bool,
    unreadable: list[Unreadable],
    base: Path,
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_jobs(jobs)
    metrics = metrics_present(groups)
    comparisons = compare(groups, metrics)
    main = main_metric(groups)
    unfinished = [job for job in jobs if not job.finished]
    everything_unreadable = unreadable + [note for job in jobs for note in job.unreadable]
    datasets = _datasets(jobs)
    lines = [f"# {title}", ""]
    summary_lines, summary_data = ([], [])
    if single_run:
        overrides = " ".join(jobs[0].overrides) or "none (the defaults)"
        lines += [f"1 job: the run in `{jobs[0].name}`. Its overrides: `{overrides}`.", ""]
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
        if len(unfinished) < len(jobs):
            summary_lines, summary_data = _summary(groups, comparisons, main)
    lines += _datasets_lines(datasets, len(jobs))
    if everything_unreadable:
        lines += [
            f"⚠ {_count(len(everything_unreadable), 'thing')} could not be read: see "
            "[Could not read](#-could-not-read-" + str(len(everything_unreadable)) + ").",
            "",
        ]
    lines += summary_lines
    lines += _continued_section(jobs, base)
    lines += _unreadable_section(everything_unreadable)
    lines += _unfinished_section(jobs, single_run)
    if not single_run and len(unfinished) < len(jobs):
        lines += _groups_section(groups, metrics)
        lines += _response_section(groups, out_dir)
        lines += _comparisons_section(groups, comparisons, metrics)
    lines += [
        "## Run" if single_run else "## Jobs",
        "",
        "Final train loss: the last logged training batch; train loss, last epoch: its "
        "token-weighted mean over the last epoch; val bpb: the last validation's bits per byte "
        "(its cross-entropy in bits over the UTF-8 bytes of the text); best val loss: the "
        "lowest validation; val ppl = exp(val loss). Tokens/s: over the whole training, "
        "validation included.",
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
            "minimum to their maximum (where the seeds share a single logged step, a bar from "
            "minimum to maximum; a group of one seed: its own curve); dashed: a job that did "
            "not finish.",
            "",
        ]
    probes = probes_data(groups)
    lines += probes_section(probes, out_dir, _save_png)
    lines += ["## Samples", "", *_samples(jobs), ""]
    extra = {
        "main_metric": main,
        "summary": summary_data,
        "datasets": datasets,
        "unreadable": [
            {"path": n.path, "problem": n.problem, "effect": n.effect}
            for n in everything_unreadable
        ],
        # the training-health probes per group, probe, block and step (null: none logged)
        "probes": probes,
    }
    data = report_data(jobs, groups, comparisons, extra)
    text = json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write_text(out_dir / "report.json", _portable(text, base))
    path = out_dir / "report.md"
    atomic_write_text(path, _portable("\n".join(lines), base))
    return path
