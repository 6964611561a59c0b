"""Continuing a stopped sweep in its own directory: what each job's directory says about it, the
sweep's job list (``sweep.json``) that a continuation must match, and the command that continues.

``python training/run_experiment.py -m <the same overrides> hydra.sweep.dir=<its directory>``
skips the jobs that finished (``summary.json``: written as a job's very last step), continues
from ``checkpoints/last.ckpt`` in its own directory each job that saved one, starts afresh each
job that started but saved none, and runs the jobs that never started. The job side (a run
continued in its own directory, with the metrics rows after its checkpoint dropped) is
``llm_scratch/train/sweep_resume.py``, told by :data:`CONTINUE_ENV`, so that the job's overrides
(``.hydra/overrides.yaml``, which the report groups jobs by) stay its own.

Nothing here imports Lightning: Hydra imports the launcher plugins at every start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

from llm_scratch.errors import UserError
from llm_scratch.utils.io import atomic_write_bytes, atomic_write_text

# Set by the launcher for a job it continues: the job's directory, where the job continues from
# its own checkpoints/last.ckpt (a user's ckpt_path=<run dir> hydra.run.dir=<same dir> stays
# refused).
# The sweep's jobs, written when it starts: a continuation must ask for the same jobs.
MANIFEST = "sweep.json"
LOCK = ".sweep.lock"


class JobState(str, Enum):
    FINISHED = "finished"  # summary.json: skipped, its directory untouched
    CONTINUE = "continue"  # checkpoints/last.ckpt and no summary: continued in its directory
    RESTART = "restart"  # a directory without a checkpoint: emptied, the job runs afresh
    RUN = "run"  # no directory: never started


class MultirunYaml:
    """Hydra's sweeper rewrites ``<sweep dir>/multirun.yaml`` before the launcher runs: read in
    the launcher's ``setup``, put back (bytes and times) when the launcher refuses the
    directory, or removed if the sweeper made it."""

    def __init__(self, config: Any) -> None:
        self.path: Path | None = None
        self.existed = True
        self.kept: tuple[bytes, os.stat_result] | None = None
        with contextlib.suppress(Exception):  # a sweep.dir that does not resolve: Hydra says so
            self.path = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
            self.existed = self.path.exists()
            self.kept = (self.path.read_bytes(), self.path.stat())

    def restore(self) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError):
            if not self.existed:
                self.path.unlink()
            elif self.kept is not None:
                data, stat = self.kept
                atomic_write_bytes(self.path, data)
                os.utime(self.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def job_state(job_dir: Path) -> JobState:
    if (job_dir / "summary.json").is_file():
        return JobState.FINISHED
    if (job_dir / "checkpoints" / "last.ckpt").is_file():
        return JobState.CONTINUE
    if job_dir.exists():
        return JobState.RESTART
    return JobState.RUN


def _shown(overrides: Sequence[str]) -> str:
    return " ".join(overrides) or "(no overrides)"


def _recorded_jobs(
    sweep_dir: Path, job_dirs: dict[int, Path]
) -> tuple[dict[int, list[str]], bool, list[str]]:
    """The jobs the directory holds, by number: from its ``sweep.json`` (complete: True), or,
    for a sweep started before there was one, from each job directory's
    ``.hydra/overrides.yaml`` (complete: False: jobs that never started are not there); and the
    folders holding a job that none of ``job_dirs`` names."""
    manifest = sweep_dir / MANIFEST
    if manifest.is_file():
        try:
            jobs = json.loads(manifest.read_text())["jobs"]
            recorded = {int(j["num"]): [str(o) for o in j["overrides"]] for j in jobs}
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"Cannot read the sweep's job list {manifest} ({error}); continue the sweep "
                "into a new hydra.sweep.dir."
            ) from error
        return recorded, True, []
    import yaml  # PyYAML comes with Hydra

    recorded: dict[int, list[str]] = {}
    for num, job_dir in job_dirs.items():
        overrides = job_dir / ".hydra" / "overrides.yaml"
        if not overrides.is_file():
            continue  # never started, or Hydra wrote nothing yet: nothing to compare
        try:
            recorded[num] = [str(o) for o in yaml.safe_load(overrides.read_text()) or []]
        except (OSError, yaml.YAMLError, TypeError) as error:
            raise UserError(
                f"Cannot read {overrides} ({error}); continue the sweep into a new hydra.sweep.dir."
            ) from error
    ours = {p.resolve() for p in job_dirs.values()}
    foreign = sorted(
        p.name
        for p in (sweep_dir.iterdir() if sweep_dir.is_dir() else ())
        if (p / ".hydra").is_dir() and p.resolve() not in ours
    )
    return recorded, False, foreign


def check_same_sweep(
    sweep_dir: Path, asked: dict[int, list[str]], job_dirs: dict[int, Path], whole: bool
) -> bool:
    """Refuse, with one line, a directory holding a sweep of other jobs than ``asked``; return
    whether the directory holds this sweep already (a continuation). ``whole``: ``asked`` is
    every job of the sweep (not one of several batches)."""
    recorded, complete, foreign = _recorded_jobs(sweep_dir, job_dirs)
    detail = None
    if foreign and whole:
        detail = (
            f"it holds job folder(s) {', '.join(foreign)}, which the overrides given do not make"
        )
    elif complete and whole and sorted(recorded) != sorted(asked):
        detail = f"it holds {len(recorded)} job(s), the overrides given make {len(asked)}"
    else:
        for num in sorted(set(recorded) & set(asked)):
            if sorted(recorded[num]) != sorted(asked[num]):
                detail = (
                    f"its job #{num} has {_shown(recorded[num])}, the overrides given make "
                    f"{_shown(asked[num])}"
                )
                break
    if detail is not None:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} holds a sweep with other overrides ({detail}); to "
            "continue it give the overrides it was started with, or choose a new hydra.sweep.dir "
            "for this sweep."
        )
    return bool(recorded) or any(p.exists() for p in job_dirs.values())


def write_manifest(sweep_dir: Path, jobs: dict[int, list[str]], job_dirs: dict[int, Path]) -> None:
    """Record the sweep's jobs (once: a continuation leaves the file as it is)."""
    path = sweep_dir / MANIFEST
    recorded = {}
    if path.is_file():
        recorded = {j["num"]: j for j in json.loads(path.read_text())["jobs"]}
        if all(num in recorded for num in jobs):
            return
    for num, overrides in jobs.items():
        recorded.setdefault(
            num, {"num": num, "dir": str(job_dirs[num].name), "overrides": list(overrides)}
        )
    listing = {"jobs": [recorded[n] for n in sorted(recorded)]}
    atomic_write_text(path, json.dumps(listing, indent=1) + "\n")


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Held while this process runs the sweep: a second ``-m ... hydra.sweep.dir=<same>`` started
    meanwhile is refused with one line instead of running the same jobs again. An advisory lock
    (flock): the system releases it when the process ends, however it ends."""
    import fcntl

    path = sweep_dir / LOCK
    with open(path, "a+") as f:
        busy = None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:  # another file system error: no lock there, run unlocked
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                busy = error
        if busy is not None:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise UserError(
                f"hydra.sweep.dir={sweep_dir} is in use by a sweep still running ({holder}); "
                "wait for it to end, or stop it (Ctrl-C or SIGTERM) before continuing the sweep."
            ) from busy
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()


def prepare_restart(job_dir: Path, sweep_dir: Path) -> None:
    """Empty the directory of a job that started but saved no checkpoint, so that it runs afresh
    (no stale metrics rows, samples or logs of the attempt)."""
    import shutil

    inside = job_dir.resolve().is_relative_to(sweep_dir.resolve())
    if not inside or job_dir.resolve() == sweep_dir.resolve():
        raise UserError(
            f"Sweep job directory {job_dir} is not a folder of its own inside {sweep_dir}; leave "
            "hydra.sweep.subdir at its default (the job number)."
        )
    shutil.rmtree(job_dir)


# Values Hydra reads as one plain string without quotes (no spaces, commas, brackets, quotes).
_PLAIN = re.compile(r"[\w/.:+@%~-]+")
_SWEEP_DIR = re.compile(r"^[+~]*hydra\.sweep\.dir=")


def continue_command(sweep_dir: Path) -> str:
    """The command that continues this sweep: the one that started it (this process's command
    line), with ``hydra.sweep.dir`` set to its directory in full."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    args = [a for a in sys.argv[1:] if not _SWEEP_DIR.match(a)]
    if not any(a in ("-m", "--multirun") for a in args):
        args.insert(0, "-m")
    where = str(sweep_dir.resolve())
    if not _PLAIN.fullmatch(where):
        where = "'" + where.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return shlex.join([*head, *args, f"hydra.sweep.dir={where}"])
