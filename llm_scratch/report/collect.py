"""Read what each job of a multirun directory left behind."""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llm_scratch.errors import UserError
from llm_scratch.summary import read_summary

log = logging.getLogger(__name__)

# Overrides the launcher adds to every job; they say nothing about what the job varied.
_INTERNAL_PREFIXES = ("hydra.",)


@dataclass
class JobResult:
    """One job: its overrides, its metric curves and the figures of its summary."""

    path: Path
    overrides: list[str]
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    sample: str | None = None
    label: str = ""

    @property
    def finished(self) -> bool:
        return bool(self.summary)

    def last(self, curve: str) -> float | None:
        points = getattr(self, f"{curve}_curve")
        return points[-1][1] if points else None

    def metric(self, key: str) -> float | None:
        return self.summary.get("metrics", {}).get(key)


def _read_curves(metrics_csv: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    train, val = [], []
    if not metrics_csv.is_file():
        return train, val
    damaged = 0
    with metrics_csv.open(newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            try:
                step = int(row["step"])
                t = float(row["train/loss"]) if row.get("train/loss") else None
                v = float(row["val/loss"]) if row.get("val/loss") else None
            except (KeyError, TypeError, ValueError):  # a killed job can leave a partial row
                damaged += 1
                continue
            if t is not None:
                train.append((step, t))
            if v is not None:
                val.append((step, v))
    _warn_damaged(metrics_csv, damaged, "row")
    return train, val


def _read_last_sample(samples: Path) -> str | None:
    if not samples.is_file():
        return None
    text, damaged = None, 0
    for line in samples.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            text = str(json.loads(line)["text"])
        except (ValueError, KeyError, TypeError):  # a killed job can leave a truncated line
            damaged += 1
    _warn_damaged(samples, damaged, "line")
    return text


def _warn_damaged(path: Path, count: int, what: str) -> None:
    if count:
        log.warning("warning: skipped %d damaged %s(s) in %s", count, what, path)


def _read_job(job_dir: Path) -> JobResult:
    overrides_file = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) or [] if overrides_file.is_file() else []
    overrides = [o for o in overrides if not o.startswith(_INTERNAL_PREFIXES)]
    train, val = _read_curves(job_dir / "metrics.csv")
    summary = read_summary(job_dir)
    return JobResult(
        path=job_dir,
        overrides=overrides,
        train_curve=train,
        val_curve=val,
        summary=summary,
        sample=_read_last_sample(job_dir / "samples.jsonl"),
    )


def _labels(jobs: list[JobResult]) -> list[str]:
    """What tells the jobs apart: the overrides not shared by all of them, keys shortened."""
    shared = set.intersection(*(set(j.overrides) for j in jobs)) if jobs else set()
    labels = []
    for job in jobs:
        varied = [o for o in job.overrides if o not in shared]
        short = [o.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + o.split("=", 1)[1] for o in varied]
        keys = [s.split("=", 1)[0] for s in short]
        labels.append(", ".join(short if len(set(keys)) == len(keys) else varied) or job.path.name)
    return labels


def collect_jobs(sweep_dir: str | Path) -> tuple[list[JobResult], list[str]]:
    """The jobs of a multirun directory (sub-folders with ``.hydra/``, in job order), and the
    overrides every job shares."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a directory: pass the multirun directory of a sweep.")
    job_dirs = [p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()]
    if not job_dirs and (sweep_dir / ".hydra").is_dir():
        job_dirs = [sweep_dir]  # a single run's directory
    if not job_dirs:
        raise UserError(
            f"{sweep_dir} holds no jobs (no sub-folder with .hydra/): pass the directory that "
            "`python training/run_experiment.py -m ...` printed, e.g. outputs/<task>/multiruns/<time>."
        )
    job_dirs.sort(key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, p.name))
    jobs = [_read_job(p) for p in job_dirs]
    for job, label in zip(jobs, _labels(jobs), strict=True):
        job.label = label
    shared = sorted(set.intersection(*(set(j.overrides) for j in jobs))) if len(jobs) > 1 else []
    return jobs, shared
