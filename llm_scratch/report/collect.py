"""Read what each job of a multirun directory (or one run's directory) left behind."""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from llm_scratch.errors import UserError
from llm_scratch.summary import read_summary

log = logging.getLogger(__name__)

# Overrides the launcher adds to every job; they say nothing about what the job varied.
_INTERNAL_PREFIXES = ("hydra.",)
# The config key of the random seed: jobs that differ only in it are replicates of one setting.
SEED_KEY = "seed"
# Not in summary.json (which has the last validation's val/loss): the lowest val/loss of the
# job's validation curve, unless a summary.json of a later version carries it.
BEST_VAL_LOSS = "val/loss_best"
# Enough of job_output.log to find the last line a job printed before it failed.
_OUTPUT_TAIL_BYTES = 64 * 1024


def split_override(override: str) -> tuple[str, str]:
    """``key=value`` as (key, value), the key without Hydra's ``+``/``++`` prefix; an override
    without ``=`` (``~key`` deletes a key) is its own key with an empty value."""
    key, _, value = override.partition("=")
    return key.lstrip("+"), value


def parse_value(text: str) -> bool | int | float | str | None:
    """A Hydra override value as the scalar it stands for (``True`` -> true, ``1e-3`` ->
    0.001); anything else (a list, a name) stays the text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    for number in (int, float):
        try:
            value = number(text)
        except ValueError:
            continue
        if math.isfinite(value):
            return value
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


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
    # the last line of job_output.log, read for a job that did not finish (why it stopped)
    last_output_line: str | None = None
    seed: int | str | None = None
    # False for a job that failed before Hydra wrote its .hydra/ (only its job_output.log is
    # left): its overrides, so its group, are unknown
    overrides_known: bool = True
    # the runs this one continued (ckpt_path= in a new directory), oldest first, each with the
    # step its successor started from: the curves above begin with theirs
    continued_from: list[tuple[Path, int]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return bool(self.summary)

    @property
    def setting(self) -> dict[str, str]:
        """The job's overrides less the seed, as {key: value text}: what its seed group shares."""
        pairs = (split_override(o) for o in self.overrides)
        return {key: value for key, value in pairs if key != SEED_KEY}

    def last(self, curve: str) -> float | None:
        points = getattr(self, f"{curve}_curve")
        return points[-1][1] if points else None

    def metric(self, key: str) -> float | None:
        return self.summary.get("metrics", {}).get(key)

    def value(self, metric: str) -> float | None:
        """A figure of the finished job for the report's statistics: a metric of summary.json,
        or :data:`BEST_VAL_LOSS`; ``None`` when the job has none (or did not finish)."""
        if not self.finished:
            return None
        value = self.metric(metric)
        if value is None and metric == BEST_VAL_LOSS and self.val_curve:
            value = min(loss for _, loss in self.val_curve)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)


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


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: where, and what."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or type(error).__name__
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _read_overrides(job_dir: Path) -> list[str]:
    """The job's overrides, less the launcher's ``hydra.*``; a :class:`UserError` naming the
    file when it is damaged (grouping by overrides cannot guess)."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    fix = (
        "restore it (the job's .hydra/hydra.yaml lists the same overrides under "
        "hydra.overrides.task) or move the job directory out of the sweep"
    )
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"Cannot read {path}: {error}; {fix}.") from error
    except yaml.YAMLError as error:
        raise UserError(f"Cannot read {path}: not YAML ({_yaml_problem(error)}); {fix}.") from error
    if overrides is None:
        return []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise UserError(
            f"Cannot read {path}: not a list of overrides (lines such as `- seed=1`) but "
            f"{type(overrides).__name__} {str(overrides)[:80]!r}; {fix}."
        )
    return [o for o in overrides if not o.startswith(_INTERNAL_PREFIXES)]


def _seed(job_dir: Path, overrides: list[str]) -> int | str | None:
    """The job's seed: its ``seed=`` override, else the seed its composed config had."""
    for key, value in map(split_override, overrides):
        if key == SEED_KEY:
            parsed = parse_value(value)
            return parsed if isinstance(parsed, (int, str)) else value
    try:
        config = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None  # only a label: a damaged config does not stop the report
    seed = config.get(SEED_KEY) if isinstance(config, dict) else None
    return seed if isinstance(seed, (int, str)) and not isinstance(seed, bool) else None


def _read_last_output_line(job_dir: Path) -> str | None:
    path = job_dir / "job_output.log"
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - _OUTPUT_TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:300] if lines else None


def _read_job(job_dir: Path) -> JobResult:
    if not (job_dir / ".hydra").is_dir():
        return JobResult(
            path=job_dir,
            overrides=[],
            last_output_line=_read_last_output_line(job_dir),
            overrides_known=False,
        )
    overrides = _read_overrides(job_dir)
    train, val = _read_curves(job_dir / "metrics.csv")
    summary = read_summary(job_dir)
    earlier = _earlier_runs(job_dir, summary)
    for run_dir, step in reversed(earlier):  # the whole run's curve: its predecessors' first
        before_train, before_val = _read_curves(run_dir / "metrics.csv")
        train = [point for point in before_train if point[0] <= step] + train
        val = [point for point in before_val if point[0] <= step] + val
    return JobResult(
        path=job_dir,
        overrides=overrides,
        train_curve=train,
        val_curve=val,
        continued_from=earlier,
        summary=summary,
        sample=_read_last_sample(job_dir / "samples.jsonl"),
        last_output_line=None if summary else _read_last_output_line(job_dir),
        seed=_seed(job_dir, overrides),
    )


def _earlier_runs(job_dir: Path, summary: dict) -> list[tuple[Path, int]]:
    """The chain of runs ``job_dir`` continues, from its summary's ``continued_from`` back to a
    run that started afresh, oldest first, each with the step its successor started from. A
    predecessor that is gone (or wrote no summary) ends the chain there, with a warning."""
    chain: list[tuple[Path, int]] = []
    link, successor = summary.get("continued_from"), job_dir
    while isinstance(link, dict) and isinstance(link.get("global_step"), int):
        checkpoint = Path(str(link.get("checkpoint")))
        run_dir = checkpoint.parent
        if run_dir.name == "checkpoints":
            run_dir = run_dir.parent
        if run_dir == job_dir or any(run_dir == earlier for earlier, _ in chain):
            break  # a loop (a hand-edited summary): each run's curve once
        if not (run_dir / "metrics.csv").is_file():
            log.warning(
                "warning: %s continued the run in %s, which has no metrics.csv now: its curves "
                "start at step %d",
                successor,
                run_dir,
                link["global_step"],
            )
            break
        chain.insert(0, (run_dir, link["global_step"]))
        try:
            link = read_summary(run_dir).get("continued_from")
        except UserError as error:
            log.warning("warning: %s; the curves start with that run's", error)
            break
        successor = run_dir
    return chain


def _shared(jobs: list[JobResult]) -> set[str]:
    """The overrides every job whose overrides are known has."""
    known = [set(j.overrides) for j in jobs if j.overrides_known]
    return set.intersection(*known) if known else set()


def _labels(jobs: list[JobResult]) -> list[str]:
    """What tells the jobs apart: the overrides not shared by all of them, keys shortened."""
    shared = _shared(jobs)
    labels = []
    for job in jobs:
        if not job.overrides_known:
            labels.append("(overrides unknown: it stopped before Hydra wrote its .hydra/)")
            continue
        varied = [o for o in job.overrides if o not in shared]
        short = [o.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + o.split("=", 1)[1] for o in varied]
        keys = [s.split("=", 1)[0] for s in short]
        labels.append(", ".join(short if len(set(keys)) == len(keys) else varied) or job.path.name)
    return labels


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is the directory of one run (it has ``.hydra/`` itself), not a sweep's."""
    return (Path(path) / ".hydra").is_dir()


def collect_jobs(sweep_dir: str | Path) -> tuple[list[JobResult], list[str]]:
    """The jobs of a multirun directory (sub-folders with ``.hydra/``, or with only the
    ``job_output.log`` of a job that failed before Hydra set it up; in job order), and the
    overrides every job shares."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a directory: pass the multirun directory of a sweep.")
    job_dirs = [
        p
        for p in sweep_dir.iterdir()
        if (p / ".hydra").is_dir() or (p / "job_output.log").is_file()
    ]
    if not job_dirs and is_run_dir(sweep_dir):
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
    shared = sorted(_shared(jobs)) if len(jobs) > 1 else []
    return jobs, shared
