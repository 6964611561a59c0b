"""Read what runs left behind: one sweep's jobs, a directory of runs, or several run directories.

Every value the report uses from a run's directory is read and checked here, in one place: a
file that is missing where it must be, a folder in place of a file, bytes that are not UTF-8,
text that is not JSON or YAML, or a value of the wrong kind (null, a string, a list where a
number belongs) becomes an :class:`Unreadable` entry that names the file, what is wrong with it
and what the report does without it, never an exception. Only bad input to the command itself
(a directory that does not exist, one that holds no runs) is a :class:`UserError`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_scratch.errors import UserError
from llm_scratch.report.probes import Series, merge, read_probes

log = logging.getLogger(__name__)

# Overrides the launcher adds to every job; they say nothing about what the job varied.
_INTERNAL_PREFIXES = ("hydra.",)
# The config key of the random seed: jobs that differ only in it are replicates of one setting.
SEED_KEY = "seed"
# Not in summary.json (which has the last validation's val/loss): the lowest val/loss of the
# job's validation curve, unless a summary.json of a later version carries it.
BEST_VAL_LOSS = "val/loss_best"
# and the lowest val/bpb of its validations (a corpus with its bytes counted logs val/bpb)
BEST_VAL_BPB = "val/bpb_best"
# Enough of job_output.log to find the last line a job printed before it failed.
_OUTPUT_TAIL_BYTES = 64 * 1024
# The sweep launcher's list of the sweep's jobs (hydra_plugins/llm_scratch_launcher).
SWEEP_MANIFEST = "sweep.json"
# How deep a directory of runs is searched for runs (outputs/<task>/runs/<time>: 1 or 2).
_MAX_DEPTH = 3
# How a path outside the report's directory is written (no absolute path of the machine).
BASE_NAME = "<sweep dir>"
# a metric's (step, value) points
Curve = list[tuple[int, float]]

# summary.json's fields the report reads, and the kinds of value each may hold (None: absent)
_SUMMARY_NUMBERS = (
    "num_params",
    "global_step",
    "tokens_per_sec",
    "peak_memory_mb",
    "wall_time_s",
)
_SUMMARY_TEXTS = ("peak_memory_kind",)


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


def is_number(value: Any) -> bool:
    """An int or float (NaN and infinity included: a diverged run's loss), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Unreadable:
    """A file (or value in it) the report could not use: where (relative to the report's
    directory), what is wrong, and what the report does without it."""

    path: str
    problem: str
    effect: str


@dataclass
class JobResult:
    """One job: its overrides, its metric curves and the figures of its summary (checked)."""

    path: Path
    overrides: list[str]
    train_curve: Curve = field(default_factory=list)
    val_curve: Curve = field(default_factory=list)
    bpb_curve: Curve = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    sample: str | None = None
    label: str = ""
    # the last line of job_output.log, read for a job that did not finish (why it stopped)
    last_output_line: str | None = None
    seed: int | str | None = None
    # False for a job that failed before Hydra wrote its .hydra/ (only its job_output.log is
    # left), or whose overrides.yaml cannot be read: its overrides, so its group, are unknown
    overrides_known: bool = True
    # the runs this one continued (ckpt_path= in a new directory), oldest first, each with the
    # step its successor started from: the curves above begin with theirs
    continued_from: list[tuple[Path, int]] = field(default_factory=list)
    # the job's name in the report: its folder, relative to the report's directory
    name: str = ""
    # what could not be read of this job
    unreadable: list[Unreadable] = field(default_factory=list)
    # the composed config (.hydra/config.yaml) and Hydra's group choices (.hydra/hydra.yaml),
    # for the value a job had for a key it did not override; None where unknown
    config: dict | None = None
    choices: dict | None = None
    # True when summary.json was read: the job finished
    has_summary: bool = False
    # the training-health probes of metrics.csv: {probe: {"block<i>" or "model": {step: value}}}
    probes: Series = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.has_summary or bool(self.summary)

    @property
    def setting(self) -> dict[str, str]:
        """The job's overrides less the seed, as {key: value text}: what its seed group shares."""
        pairs = (split_override(o) for o in self.overrides)
        return {key: value for key, value in pairs if key != SEED_KEY}

    @property
    def dataset(self) -> dict[str, str] | None:
        return self.summary.get("dataset")

    def last(self, curve: str) -> float | None:
        points = getattr(self, f"{curve}_curve")
        return points[-1][1] if points else None

    def metric(self, key: str) -> float | None:
        return self.summary.get("metrics", {}).get(key)

    def value(self, metric: str) -> float | None:
        """A figure of the finished job for the report's statistics: a metric of summary.json,
        :data:`BEST_VAL_LOSS` or :data:`BEST_VAL_BPB`; ``None`` when the job has none (or did not
        finish)."""
        if not self.finished:
            return None
        value = self.metric(metric)
        curve = {BEST_VAL_LOSS: self.val_curve, BEST_VAL_BPB: self.bpb_curve}.get(metric)
        if value is None and curve:
            value = min(point for _, point in curve)
        return float(value) if is_number(value) else None

    def default_of(self, key: str) -> str | None:
        """The value the job ran with for ``key`` without overriding it: a config group's
        choice (``model`` -> ``gpt-small``) or a config value (``optimizer.lr`` -> ``0.0006``);
        None where the job's .hydra/ does not say."""
        if self.choices and isinstance(self.choices.get(key), str):
            return self.choices[key]
        node: Any = self.config
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if isinstance(node, (dict, list)):
            return None
        return "null" if node is None else str(node)


class _Reader:
    """Reads the files of runs under ``base``, recording what it cannot use."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.unreadable: list[Unreadable] = []

    def shown(self, path: Path | str) -> str:
        return relative_path(path, self.base)

    def note(self, target: list[Unreadable], path: Path, problem: str, effect: str) -> None:
        target.append(Unreadable(self.shown(path), problem, effect))

    def text(
        self, path: Path, effect: str, target: list[Unreadable], required: bool = False
    ) -> str | None:
        """The file's text (UTF-8); None, with an entry, when it cannot be read (a missing
        file gets one only where ``required``)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            if required:
                self.note(target, path, "missing", effect)
            return None
        except IsADirectoryError:
            self.note(target, path, "a folder, not a file", effect)
            return None
        except OSError as error:
            self.note(target, path, error.strerror or str(error), effect)
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            problem = f"not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})"
            self.note(target, path, problem, effect)
            return None

    def json(self, path: Path, effect: str, target: list[Unreadable]) -> tuple[bool, Any]:
        """(read, value) of a JSON file; (False, None) when missing or unreadable."""
        text = self.text(path, effect, target)
        if text is None:
            return False, None
        try:
            return True, json.loads(text)
        except (ValueError, RecursionError) as error:
            problem = f"not JSON ({str(error)[:120]})" if text.strip() else "empty"
            self.note(target, path, problem, effect)
            return False, None

    def yaml(self, path: Path, effect: str, target: list[Unreadable]) -> tuple[bool, Any]:
        text = self.text(path, effect, target)
        if text is None:
            return False, None
        try:
            return True, yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as error:
            problem = "not YAML"
            if isinstance(error, yaml.YAMLError):
                problem += f" ({_yaml_problem(error)})"
            self.note(target, path, problem, effect)
            return False, None


def relative_path(path: Path | str, base: Path) -> str:
    """``path`` as the report writes it: relative to ``base`` (the report's directory) in
    POSIX form, never an absolute path of this machine."""
    path = Path(path)
    absolute = path if path.is_absolute() else Path.cwd() / path
    try:
        shown = os.path.relpath(os.path.abspath(absolute), os.path.abspath(base))
    except ValueError:  # another drive (Windows)
        return path.name
    return Path(shown).as_posix()


def portable_value(text: str, base: Path) -> str:
    """An override's value with an absolute path written from the report's directory
    (``paths.log_dir=/home/me/outputs`` -> ``paths.log_dir=<sweep dir>/../..``)."""
    if not text.startswith("/") and not (len(text) > 2 and text[1:3] in (":\\", ":/")):
        return text
    shown = relative_path(text, base)
    return BASE_NAME if shown == "." else f"{BASE_NAME}/{shown}"


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error on one line: where, and what."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or type(error).__name__
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _describe_value(value: Any) -> str:
    kind = "null" if value is None else type(value).__name__
    return f"{kind} {json.dumps(value, default=str)[:60]}" if value is not None else kind


# ----------------------------------------------------------------------------- the files of a job


def _check_summary(raw: Any, path: Path, reader: _Reader, notes: list[Unreadable]) -> dict:
    """summary.json's fields that the report uses, each of the kind it must be; a field that
    is not is dropped with an entry."""

    def drop(what: str, value: Any, effect: str) -> None:
        reader.note(notes, path, f"{what} is {_describe_value(value)}", effect)

    summary: dict[str, Any] = {}
    metrics = raw.get("metrics")
    if isinstance(metrics, dict):
        summary["metrics"] = {}
        for key, value in metrics.items():
            if is_number(value):
                summary["metrics"][key] = float(value)
            elif value is not None:
                drop(f'"metrics"."{key}"', value, f"{key} of this job is left out")
    else:
        summary["metrics"] = {}
        if "metrics" in raw:
            drop('"metrics"', metrics, "its final figures are left out of the statistics")
        else:
            reader.note(
                notes, path, 'no "metrics"', "its final figures are left out of the statistics"
            )
    for key in _SUMMARY_NUMBERS:
        value = raw.get(key)
        if is_number(value) and math.isfinite(value):
            summary[key] = int(value) if key == "num_params" else value
        elif value is not None:
            drop(f'"{key}"', value, "shown as –")
    for key in _SUMMARY_TEXTS:
        value = raw.get(key)
        if isinstance(value, str):
            summary[key] = value
        elif value is not None:
            drop(f'"{key}"', value, "shown as –")
    link = raw.get("continued_from")
    if link is not None:
        if (
            isinstance(link, dict)
            and isinstance(link.get("checkpoint"), str)
            and isinstance(link.get("global_step"), int)
            and not isinstance(link.get("global_step"), bool)
        ):
            summary["continued_from"] = link
        else:
            drop('"continued_from"', link, "its curves start where this run started")
    dataset = raw.get("dataset")
    if dataset is not None:
        if isinstance(dataset, dict) and all(
            isinstance(dataset.get(k), str) for k in ("path", "fingerprint")
        ):
            summary["dataset"] = {"path": dataset["path"], "fingerprint": dataset["fingerprint"]}
        else:
            drop('"dataset"', dataset, "its dataset is not named")
    return summary


def _read_summary(job_dir: Path, reader: _Reader, notes: list[Unreadable]) -> tuple[bool, dict]:
    """(finished, the checked summary): a job finished when its summary.json is a JSON object."""
    path = job_dir / "summary.json"
    effect = "the job counts as not finished: its final figures are left out of the statistics"
    read, raw = reader.json(path, effect, notes)
    if not read:
        return False, {}
    if not isinstance(raw, dict):
        reader.note(notes, path, f"not a JSON object but {_describe_value(raw)}", effect)
        return False, {}
    return True, _check_summary(raw, path, reader, notes)


def _read_curves(
    metrics_csv: Path, reader: _Reader, notes: list[Unreadable], required: bool
) -> tuple[Curve, Curve, Curve, Series]:
    """The train loss, val loss and val bpb curves of metrics.csv, and its probes (quietly
    empty where it has none, or none the report can read)."""
    train: Curve = []
    val: Curve = []
    bpb: Curve = []
    text = reader.text(metrics_csv, "no curves for this job", notes, required=required)
    if text is None:
        return train, val, bpb, {}
    damaged = 0
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as error:
        reader.note(notes, metrics_csv, f"not CSV ({error})", "no curves for this job")
        return train, val, bpb, {}
    for row in rows:
        try:
            step = int(row["step"])
            t = float(row["train/loss"]) if row.get("train/loss") else None
            v = float(row["val/loss"]) if row.get("val/loss") else None
            b = float(row["val/bpb"]) if row.get("val/bpb") else None
        except (KeyError, TypeError, ValueError):  # a killed job can leave a partial row
            damaged += 1
            continue
        if t is not None:
            train.append((step, t))
        if v is not None:
            val.append((step, v))
        if b is not None:
            bpb.append((step, b))
    if damaged:
        _warn_damaged(metrics_csv, damaged, "row")
        reader.note(notes, metrics_csv, f"{damaged} damaged row(s)", "those rows are skipped")
    return train, val, bpb, read_probes(rows)


def _read_last_sample(samples: Path, reader: _Reader, notes: list[Unreadable]) -> str | None:
    text = reader.text(samples, "no sample for this job", notes)
    if text is None:
        return None
    sample, damaged = None, 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise TypeError
            sample = record["text"]
        except (ValueError, TypeError, RecursionError):  # a killed job leaves a truncated line
            damaged += 1
    if damaged:
        _warn_damaged(samples, damaged, "line")
        reader.note(notes, samples, f"{damaged} damaged line(s)", "those lines are skipped")
    return sample


def _warn_damaged(path: Path, count: int, what: str) -> None:
    log.warning("warning: skipped %d damaged %s(s) in %s", count, what, path.name)


def _read_overrides(job_dir: Path, reader: _Reader, notes: list[Unreadable]) -> list[str] | None:
    """The job's overrides, less the launcher's ``hydra.*``; None (with an entry) when
    ``.hydra/overrides.yaml`` cannot be read: grouping by overrides cannot guess."""
    path = job_dir / ".hydra" / "overrides.yaml"
    effect = (
        "the job is in no group; restore the file (the job's .hydra/hydra.yaml lists the same "
        "overrides under hydra.overrides.task) or move the job directory out"
    )
    before = len(notes)
    read, overrides = reader.yaml(path, effect, notes)
    if not read:
        if len(notes) == before:
            reader.note(notes, path, "missing", effect)
        return None
    if overrides is None:
        return []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        problem = (
            f"not a list of overrides (lines such as `- seed=1`) but {_describe_value(overrides)}"
        )
        reader.note(notes, path, problem, effect)
        return None
    kept = [o for o in overrides if not o.startswith(_INTERNAL_PREFIXES)]
    result = []
    for override in kept:
        key, sep, value = override.partition("=")
        result.append(key + sep + portable_value(value, reader.base) if sep else override)
    return result


def _read_dict(path: Path, reader: _Reader, notes: list[Unreadable], effect: str) -> dict | None:
    """A YAML mapping of .hydra/; None (an entry unless it is simply missing) otherwise."""
    read, value = reader.yaml(path, effect, notes)
    if not read:
        return None
    if not isinstance(value, dict):
        reader.note(notes, path, f"not a mapping but {_describe_value(value)}", effect)
        return None
    return value


def _seed(overrides: list[str], config: dict | None) -> int | str | None:
    """The job's seed: its ``seed=`` override, else the seed its composed config had."""
    for key, value in map(split_override, overrides):
        if key == SEED_KEY:
            parsed = parse_value(value)
            return parsed if isinstance(parsed, (int, str)) else value
    seed = config.get(SEED_KEY) if config else None
    return seed if isinstance(seed, (int, str)) and not isinstance(seed, bool) else None


def _read_last_output_line(job_dir: Path, reader: _Reader, notes: list[Unreadable]) -> str | None:
    path = job_dir / "job_output.log"
    try:
        with path.open("rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - _OUTPUT_TAIL_BYTES))
            tail = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as error:
        problem = "a folder, not a file" if path.is_dir() else (error.strerror or str(error))
        reader.note(notes, path, problem, "the last line it printed is not shown")
        return None
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    if not lines:
        return None
    return lines[-1][:300].replace(str(reader.base.resolve()), BASE_NAME)


def _read_job(job_dir: Path, reader: _Reader) -> JobResult:
    notes: list[Unreadable] = []
    name = reader.shown(job_dir)
    if name == ".":
        name = job_dir.resolve().name
    if not (job_dir / ".hydra").is_dir():
        return JobResult(
            path=job_dir,
            overrides=[],
            last_output_line=_read_last_output_line(job_dir, reader, notes),
            overrides_known=False,
            name=name,
            unreadable=notes,
        )
    overrides = _read_overrides(job_dir, reader, notes)
    finished, summary = _read_summary(job_dir, reader, notes)
    train, val, bpb, probes = _read_curves(
        job_dir / "metrics.csv", reader, notes, required=finished
    )
    config = _read_dict(
        job_dir / ".hydra" / "config.yaml", reader, notes, "its seed and defaults are unknown"
    )
    hydra_config = _read_dict(
        job_dir / ".hydra" / "hydra.yaml", reader, notes, "its config group choices are unknown"
    )
    choices = None
    if hydra_config is not None:
        runtime = (hydra_config.get("hydra") or {}).get("runtime") if hydra_config else None
        found = runtime.get("choices") if isinstance(runtime, dict) else None
        choices = found if isinstance(found, dict) else None
    earlier = _earlier_runs(job_dir, summary, reader, notes)
    for run_dir, step in reversed(earlier):  # the whole run's curve: its predecessors' first
        before_train, before_val, before_bpb, before_probes = _read_curves(
            run_dir / "metrics.csv", reader, notes, True
        )
        train = [point for point in before_train if point[0] <= step] + train
        val = [point for point in before_val if point[0] <= step] + val
        bpb = [point for point in before_bpb if point[0] <= step] + bpb
        probes = merge(before_probes, step, probes)
    return JobResult(
        path=job_dir,
        overrides=overrides or [],
        overrides_known=overrides is not None,
        train_curve=train,
        val_curve=val,
        bpb_curve=bpb,
        continued_from=earlier,
        probes=probes,
        summary=summary,
        has_summary=finished,
        sample=_read_last_sample(job_dir / "samples.jsonl", reader, notes),
        last_output_line=None if finished else _read_last_output_line(job_dir, reader, notes),
        seed=_seed(overrides or [], config),
        name=name,
        unreadable=notes,
        config=config,
        choices=choices,
    )


def _earlier_runs(
    job_dir: Path, summary: dict, reader: _Reader, notes: list[Unreadable]
) -> list[tuple[Path, int]]:
    """The chain of runs ``job_dir`` continues, from its summary's ``continued_from`` back to a
    run that started afresh, oldest first, each with the step its successor started from. A
    predecessor that is gone (or whose summary cannot be read) ends the chain there, with an
    entry."""
    chain: list[tuple[Path, int]] = []
    link, successor = summary.get("continued_from"), job_dir
    while link is not None:
        run_dir = Path(link["checkpoint"]).parent
        if run_dir.name == "checkpoints":
            run_dir = run_dir.parent
        if run_dir == job_dir or any(run_dir == earlier for earlier, _ in chain):
            break  # a loop (a hand-edited summary): each run's curve once
        if not (run_dir / "metrics.csv").is_file():
            reader.note(
                notes,
                successor / "summary.json",
                f'"continued_from" names the run in {reader.shown(run_dir)}, which has no '
                "metrics.csv now",
                f"the curves start at step {link['global_step']}",
            )
            break
        chain.insert(0, (run_dir, link["global_step"]))
        _, earlier_summary = _read_summary(run_dir, reader, notes)
        link, successor = earlier_summary.get("continued_from"), run_dir
    return chain


# ----------------------------------------------------------------------------- finding the jobs


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is the directory of one run (it has ``.hydra/`` itself), not a sweep's."""
    return (Path(path) / ".hydra").is_dir()


def _is_job_dir(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / "job_output.log").is_file()


def _job_order(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def _find_jobs(directory: Path, depth: int = 0) -> list[Path]:
    """The job (run) folders under ``directory``: its sub-folders that hold a run, searched
    down to :data:`_MAX_DEPTH` levels (a directory of runs, a directory of sweeps)."""
    try:
        children = sorted((p for p in directory.iterdir() if p.is_dir()), key=_job_order)
    except OSError:
        return []
    found = []
    for child in children:
        if _is_job_dir(child):
            found.append(child)
        elif depth + 1 < _MAX_DEPTH and not child.name.startswith(".") and not child.is_symlink():
            # (a linked run is read; a linked folder is not searched: it may lead anywhere)
            found += _find_jobs(child, depth + 1)
    return found


def _check_manifest(sweep_dir: Path, reader: _Reader, found: set[Path]) -> None:
    """An entry for each job ``sweep.json`` lists whose folder holds no job (deleted, emptied,
    never started): the report names what it could not read, it does not leave it out."""
    path = sweep_dir / SWEEP_MANIFEST
    effect = "the report cannot check that every job of the sweep is here"
    read, manifest = reader.json(path, effect, reader.unreadable)
    if not read:
        return
    jobs = manifest.get("jobs") if isinstance(manifest, dict) else None
    if not isinstance(jobs, list):
        problem = f'no list of "jobs" but {_describe_value(manifest)}'
        reader.note(reader.unreadable, path, problem, effect)
        return
    for entry in jobs:
        folder = entry.get("dir") if isinstance(entry, dict) else None
        if folder is None and isinstance(entry, dict) and is_number(entry.get("num")):
            folder = str(entry["num"])
        if not isinstance(folder, str) or not folder or "/" in folder or folder in ("..", "."):
            problem = f"a job entry is {_describe_value(entry)}"
            reader.note(reader.unreadable, path, problem, "that entry is skipped")
            continue
        job_dir = sweep_dir / folder
        if job_dir in found:
            continue
        if not job_dir.exists():
            problem = f"lists job {folder}, whose folder is missing (deleted, or never started)"
        elif not job_dir.is_dir():
            problem = f"lists job {folder}, which is a file, not a folder"
        else:
            problem = f"lists job {folder}, whose folder holds no .hydra/ or job_output.log"
        reader.note(reader.unreadable, path, problem, "the job is not in the report")


@dataclass
class Collection:
    """What the report is made from: the jobs (in order), the overrides all of them share,
    what could not be read outside any one job, and the directory paths are written from."""

    jobs: list[JobResult]
    shared: list[str]
    base: Path
    unreadable: list[Unreadable]
    single_run: bool = False

    @property
    def all_unreadable(self) -> list[Unreadable]:
        return self.unreadable + [note for job in self.jobs for note in job.unreadable]


def common_base(directories: Sequence[Path]) -> Path:
    """The directory a report of ``directories`` is written in by default (and its paths
    written from): the one directory, or the deepest folder that holds them all."""
    if len(directories) == 1:
        return directories[0]
    return Path(os.path.commonpath([os.path.abspath(d) for d in directories]))


def collect(directories: str | Path | Iterable[str | Path], base: Path | None = None) -> Collection:
    """The jobs of one or several directories, each a sweep's (its numbered jobs), a directory
    of runs (searched a few levels down), or one run's own directory. Paths in the report are
    written from ``base`` (default: :func:`common_base`)."""
    if isinstance(directories, (str, Path)):
        directories = [directories]
    directories = [Path(d) for d in directories]
    if not directories:
        raise UserError("No directory given: pass a sweep's directory, or run directories.")
    for directory in directories:
        if not directory.is_dir():
            raise UserError(
                f"{directory} is not a directory: pass the multirun directory of a sweep, a "
                "run's directory, or a directory of runs."
            )
    reader = _Reader(base or common_base(directories))
    job_dirs: list[Path] = []
    for directory in directories:
        found = [directory] if is_run_dir(directory) else _find_jobs(directory)
        if (directory / SWEEP_MANIFEST).exists() or (directory / SWEEP_MANIFEST).is_symlink():
            _check_manifest(directory, reader, set(found))
        if not found:
            raise UserError(
                f"{directory} holds no jobs (no run folder with .hydra/): pass the directory that "
                "`python training/run_experiment.py -m ...` printed (outputs/<task>/multiruns/"
                "<time>), a run's directory, or a directory of runs."
            )
        job_dirs += [p for p in found if p.resolve() not in {j.resolve() for j in job_dirs}]
    jobs = [_read_job(p, reader) for p in job_dirs]
    for job, label in zip(jobs, _labels(jobs), strict=True):
        job.label = label
    shared = sorted(_shared(jobs)) if len(jobs) > 1 else []
    single = len(directories) == 1 and [job.path for job in jobs] == directories
    return Collection(jobs, shared, reader.base, reader.unreadable, single)


def collect_jobs(sweep_dir: str | Path | Iterable[str | Path]) -> tuple[list[JobResult], list[str]]:
    """The jobs of a multirun directory (or of the directories given; see :func:`collect`)
    and the overrides every job shares."""
    collection = collect(sweep_dir)
    return collection.jobs, collection.shared


def _shared(jobs: list[JobResult]) -> set[str]:
    """The overrides every job whose overrides are known has."""
    known = [set(j.overrides) for j in jobs if j.overrides_known]
    return set.intersection(*known) if known else set()


def _labels(jobs: list[JobResult]) -> list[str]:
    """What tells the jobs apart: the overrides not shared by all of them, keys shortened; a
    job with none of its own is ``defaults`` (no overrides) or ``shared settings only``."""
    shared = _shared(jobs)
    alone = sum(job.overrides_known for job in jobs) == 1
    labels = []
    for job in jobs:
        if alone and job.overrides_known:
            labels.append("the run")
            continue
        if not job.overrides_known:
            labels.append("(overrides unknown: see what could not be read)")
            continue
        varied = [o for o in job.overrides if o not in shared]
        short = [o.split("=", 1)[0].rsplit(".", 1)[-1] + "=" + o.split("=", 1)[-1] for o in varied]
        keys = [s.split("=", 1)[0] for s in short]
        label = ", ".join(short if len(set(keys)) == len(keys) else varied)
        if not label:
            label = "defaults" if not job.overrides else "shared settings only"
        labels.append(label)
    return labels
