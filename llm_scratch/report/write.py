"""Write ``report.md`` and its PNG plots for a collected sweep."""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402

from llm_scratch.errors import UserError  # noqa: E402
from llm_scratch.report.collect import JobResult  # noqa: E402
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


def plot_curves(jobs: list[JobResult], curve: str, title: str, path: Path) -> bool:
    """One PNG with the ``curve`` ("train" or "val") of every job overlaid; False if no data."""
    series = [(job, getattr(job, f"{curve}_curve")) for job in jobs]
    if not any(points for _, points in series):
        return False
    # long, noisy training curves: a moving average over the faint raw curve
    smooth = curve == "train" and max(len(points) for _, points in series) > 60
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for job, points in series:
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        if smooth:
            line = ax.plot(steps, _ema(list(values)), label=job.label, linewidth=1.5)[0]
            ax.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
        else:
            ax.plot(steps, values, label=job.label, marker="o" if len(values) < 30 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title + (" (lines: moving average)" if smooth else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return True


def _table(jobs: list[JobResult]) -> list[str]:
    memory_kind = next((j.summary.get("peak_memory_kind") for j in jobs if j.summary), None)
    memory_head = "peak GPU memory (MB)" if memory_kind == "cuda_max_allocated" else "peak RSS (MB)"
    lines = [
        f"| job | overrides | final train loss | train loss, last epoch | val loss | val ppl "
        f"| tokens/s | {memory_head} | parameters | wall time (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for job in jobs:
        if not job.finished:
            lines.append(
                f"| {job.path.name} | {job.label} | {_fmt(job.last('train'))} | | "
                f"{_fmt(job.last('val'))} | | | | | did not finish |"
            )
            continue
        s = job.summary
        lines.append(
            f"| {job.path.name} | {job.label} | {_fmt(job.last('train'))} "
            f"| {_fmt(job.metric('train/epoch_loss'))} | {_fmt(job.metric('val/loss'))} "
            f"| {_fmt(job.metric('val/ppl'), 1)} | {_fmt(s.get('tokens_per_sec'), 0)} "
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


def write_report(
    jobs: list[JobResult], shared: list[str], out_dir: Path, title: str = "Sweep report"
) -> Path:
    """Write ``report.md``, ``train_loss.png`` and ``val_loss.png`` into ``out_dir``; a
    :class:`UserError` when ``out_dir`` cannot be created or written."""
    try:
        return _write_report(jobs, shared, out_dir, title)
    except OSError as error:
        where = error.filename if error.filename is not None else out_dir
        reason = error.strerror or str(error)
        if isinstance(error, (FileExistsError, NotADirectoryError)):
            reason = "a file is in the way of the directory"
        raise UserError(
            f"Cannot write the report to {out_dir} ({where}: {reason}); pass "
            "a writable directory with --out DIR."
        ) from error


def _write_report(jobs: list[JobResult], shared: list[str], out_dir: Path, title: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if shared:
        lines += [f"Settings shared by all jobs: `{' '.join(shared)}`", ""]
    lines += [
        "Final train loss: the last logged training batch; train loss, last epoch: its "
        "token-weighted mean over the last epoch; val ppl = exp(val loss). Tokens/s: over the "
        "whole training, validation included.",
        "",
        *_table(jobs),
        "",
    ]
    if plot_curves(jobs, "train", "Training loss", out_dir / "train_loss.png"):
        lines += ["![training loss](train_loss.png)", ""]
    if plot_curves(jobs, "val", "Validation loss", out_dir / "val_loss.png"):
        lines += ["![validation loss](val_loss.png)", ""]
    lines += ["## Samples", "", *_samples(jobs), ""]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
