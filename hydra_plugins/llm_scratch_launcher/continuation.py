"""Continuing a stopped sweep in its own directory: what each job's directory says about it, the
sweep's job list (``sweep.json``) that a continuation must match, the marker that proves a job
folder is the sweep's own, and the command that continues.

``python training/run_experiment.py -m <the same overrides> hydra.sweep.dir=<its directory>``
skips the jobs that finished (``summary.json``: written as a job's very last step), continues
from ``checkpoints/last.ckpt`` in its own directory each job that saved one, starts afresh each
job that started but saved none, and runs the jobs that never started. The job side (a run
continued in its own directory, with the metrics rows after its checkpoint dropped) is
``llm_scratch/train/sweep_resume.py``, told by :data:`CONTINUE_ENV`, so that the job's overrides
(``.hydra/overrides.yaml``, which the report groups jobs by) stay its own.

The safety rule: a sweep deletes or writes over only what it can prove it wrote. ``sweep.json``
carries the sweep's id; the launcher writes a marker (:data:`MARKER`: the sweep's id and the
job's number) into each job folder it creates, before the job runs. :func:`check_sweep_dir`
refuses, before anything is written or submitted, a directory holding anything else: a run's
directory, a folder of other files, a job folder of another sweep or of a sweep started before
there were markers; and a ``hydra.sweep.subdir`` that is not one new folder per job directly
inside the sweep's directory. Every place below that deletes or rewrites checks again.

Nothing here imports Lightning: Hydra imports the launcher plugins at every start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from llm_scratch.errors import UserError
from llm_scratch.sweep_env import SWEEP_JOB_MARKER
from llm_scratch.train.commands import override, shell_quote
from llm_scratch.utils.io import atomic_write_bytes, atomic_write_text

# The sweep's id and jobs, written when it starts: a continuation must ask for the same jobs.
MANIFEST = "sweep.json"
LOCK = ".sweep.lock"
MARKER = SWEEP_JOB_MARKER
# What a sweep writes at the top of its directory besides its job folders: Hydra's
# multirun.yaml, the job list, the lock, submitit's job files (hydra/launcher=slurm) and
# report.py's report (with its *.png plots); log files are accepted too.
SWEEP_FILES = frozenset({"multirun.yaml", MANIFEST, LOCK, ".submitit", "report.md", "report.json"})
# What a single run's directory holds (llm_scratch/train/run_dir.py): a sweep never goes there.
RUN_FILES = (".run.claim", "summary.json", "checkpoints", "metrics.csv", "config.yaml", ".hydra")
# the temporary file of an atomic write of one of the sweep's files (left by a kill mid-write)
_TEMP = re.compile(r"\.(?P<name>.+)\.[^.]+\.tmp")
_LOCK_TEXT = re.compile(r"(pid \d+\n?)?")


class JobState(str, Enum):
    FINISHED = "finished"  # summary.json: skipped, its directory untouched
    CONTINUE = "continue"  # checkpoints/last.ckpt and no summary: continued in its directory
    RESTART = "restart"  # its folder holds an attempt without a checkpoint: emptied, run afresh
    RUN = "run"  # no folder (or an empty one): never started


@dataclass(frozen=True)
class Manifest:
    """A sweep's ``sweep.json``: its id, and each job's overrides and folder by number."""

    sweep_id: str
    jobs: dict[int, list[str]]
    dirs: dict[int, str]


class MultirunYaml:
    """Hydra's sweeper creates the sweep directory and rewrites ``<sweep dir>/multirun.yaml``
    before the launcher runs: read in the launcher's ``setup``, put back (bytes and times) when
    the launcher refuses the directory, or removed (with the directory, if the sweeper made it
    and it is empty) if the sweeper made it."""

    def __init__(self, config: Any) -> None:
        self.path: Path | None = None
        self.existed = True
        self.dir_existed = True
        self.kept: tuple[bytes, os.stat_result] | None = None
        with contextlib.suppress(Exception):  # a sweep.dir that does not resolve: Hydra says so
            self.path = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
            self.dir_existed = self.path.parent.exists()
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
        if not self.dir_existed:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only if empty: it held nothing but Hydra's file


def new_sweep_id() -> str:
    return uuid.uuid4().hex


def read_marker(job_dir: Path) -> tuple[str, int] | None:
    """The (sweep id, job number) of the marker in ``job_dir``; None if it holds none."""
    path = job_dir / MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return str(data["sweep_id"]), int(data["num"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_manifest(sweep_dir: Path) -> Manifest | None:
    """The sweep ``sweep_dir`` holds (None: no ``sweep.json``). Refuses, with one line, a job
    list it cannot read, and one without an id (a sweep started before there were markers: its
    folders cannot be told from anyone else's)."""
    path = sweep_dir / MANIFEST
    if not path.exists() and not path.is_symlink():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        jobs = {int(j["num"]): [str(o) for o in j["overrides"]] for j in data["jobs"]}
        dirs = {int(j["num"]): str(j.get("dir", j["num"])) for j in data["jobs"]}
        sweep_id = data.get("sweep_id")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(
            f"Cannot read the sweep's job list {path} ({error}); continue the sweep into a new "
            "hydra.sweep.dir."
        ) from error
    if not isinstance(sweep_id, str) or not sweep_id:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} holds a sweep started by an earlier version of "
            f"llm_scratch (its sweep.json has no sweep_id, its job folders no {MARKER} marker), "
            "which is not continued in place: nothing in it is deleted or rewritten. Run the "
            "sweep into a new hydra.sweep.dir (report.py still reads the old one)."
        )
    return Manifest(sweep_id, jobs, dirs)


def _shown_names(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _ours_at_top(path: Path) -> bool:
    """Whether ``path`` (at the top of a sweep directory) is one of the files a sweep writes."""
    name = path.name
    if name in SWEEP_FILES:  # submitit's is a folder, the others are files
        return not path.is_symlink() and path.is_dir() == (name == ".submitit")
    if path.is_file() and not path.is_symlink():
        temp = _TEMP.fullmatch(name)
        return path.suffix in (".log", ".png") or bool(
            temp and (temp["name"] in SWEEP_FILES or temp["name"].endswith(".png"))
        )
    return False


def check_job_paths(sweep_dir: Path, job_dirs: dict[int, Path]) -> None:
    """Refuse a ``hydra.sweep.subdir`` that gives a job anything but a folder of its own directly
    inside the sweep directory: ``..``, an absolute path, a nested path, a symlink, a name the
    sweep or a run uses for its own files (``checkpoints``), or one folder for two jobs."""
    seen: dict[str, int] = {}
    for num, job_dir in sorted(job_dirs.items()):
        bad = (
            job_dir.parent != sweep_dir
            or job_dir.name in ("", ".", "..")
            or job_dir.name in SWEEP_FILES
            or job_dir.name in RUN_FILES
            or job_dir.suffix in (".log", ".png", ".tmp")
            or job_dir.is_symlink()
            or (job_dir.exists() and not job_dir.is_dir())
        )
        if not bad and sweep_dir.exists():
            bad = job_dir.resolve().parent != sweep_dir.resolve()
        if bad or job_dir.name in seen:
            why = f"also job #{seen[job_dir.name]}'s" if job_dir.name in seen else "not a new one"
            raise UserError(
                f"hydra.sweep.subdir gives sweep job #{num} the folder {job_dir} ({why}); each "
                f"job needs a new folder of its own directly inside hydra.sweep.dir={sweep_dir}: "
                "leave hydra.sweep.subdir at its default (the job number)."
            )
        seen[job_dir.name] = num


def check_sweep_dir(sweep_dir: Path, job_dirs: dict[int, Path]) -> Manifest | None:
    """Refuse (one line, nothing written) a sweep directory that holds anything a sweep of this
    package did not write, and bad job folders (:func:`check_job_paths`); return the sweep it
    holds (None: a new or empty directory)."""
    check_job_paths(sweep_dir, job_dirs)
    if not sweep_dir.is_dir():
        if sweep_dir.exists():
            raise UserError(
                f"hydra.sweep.dir={sweep_dir} is a file, not a directory; choose a new "
                "hydra.sweep.dir."
            )
        return None
    entries = sorted(sweep_dir.iterdir())
    run = [p.name for p in entries if p.name in RUN_FILES]
    if run:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} is a run's directory (it holds {', '.join(run)}); a "
            "sweep never writes into a run's directory. Choose a new hydra.sweep.dir."
        )
    manifest = read_manifest(sweep_dir)
    ours = {d.name for d in job_dirs.values()}
    foreign: list[Path] = []
    other_sweep: list[str] = []
    for path in entries:
        if _ours_at_top(path):
            continue
        if not path.is_dir() or path.is_symlink():
            foreign.append(path)
            continue
        marker = read_marker(path)
        if marker is None:
            if path.name in ours and not any(path.iterdir()):
                continue  # an empty folder of this sweep's: nothing in it to lose
            foreign.append(path)
        elif manifest is None or marker[0] != manifest.sweep_id:
            other_sweep.append(path.name)
        elif manifest.dirs.get(marker[1]) != path.name:
            foreign.append(path)
    if foreign:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} holds {foreign[0]}"
            + (f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else "")
            + f", which no sweep wrote (a sweep's job folder holds its {MARKER} marker); a "
            "sweep never deletes or writes over what it did not write. Choose a new "
            "hydra.sweep.dir."
        )
    if other_sweep:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} holds job folder(s) {_shown_names(other_sweep)} of "
            "another sweep (their marker names another sweep than its sweep.json); choose a new "
            "hydra.sweep.dir."
        )
    return manifest


def job_state(job_dir: Path) -> JobState:
    if (job_dir / "summary.json").is_file():
        return JobState.FINISHED
    if (job_dir / "checkpoints" / "last.ckpt").is_file():
        return JobState.CONTINUE
    if job_dir.is_dir() and any(p.name != MARKER for p in job_dir.iterdir()):
        return JobState.RESTART
    return JobState.RUN


def _shown(overrides: Sequence[str]) -> str:
    return " ".join(overrides) or "(no overrides)"


def check_same_sweep(
    sweep_dir: Path, asked: dict[int, list[str]], job_dirs: dict[int, Path], whole: bool
) -> bool:
    """Refuse, with one line, a directory holding a sweep of other jobs than ``asked`` (or
    anything a sweep did not write: :func:`check_sweep_dir`); return whether the directory holds
    this sweep already (a continuation). ``whole``: ``asked`` is every job of the sweep (not one
    of several batches)."""
    manifest = check_sweep_dir(sweep_dir, job_dirs)
    if manifest is None:
        return False
    recorded = manifest.jobs
    detail = None
    if whole and sorted(recorded) != sorted(asked):
        detail = f"it holds {len(recorded)} job(s), the overrides given make {len(asked)}"
    else:
        for num in sorted(set(recorded) & set(asked)):
            if sorted(recorded[num]) != sorted(asked[num]):
                detail = (
                    f"its job #{num} has {_shown(recorded[num])}, the overrides given make "
                    f"{_shown(asked[num])}"
                )
                break
            if manifest.dirs[num] != job_dirs[num].name:
                detail = (
                    f"its job #{num} is in folder {manifest.dirs[num]}, the hydra.sweep.subdir "
                    f"given makes {job_dirs[num].name}"
                )
                break
    if detail is not None:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir} holds a sweep with other overrides ({detail}); to "
            "continue it give the overrides it was started with, or choose a new hydra.sweep.dir "
            "for this sweep."
        )
    return True


def write_manifest(sweep_dir: Path, jobs: dict[int, list[str]], job_dirs: dict[int, Path]) -> str:
    """Record the sweep's id and jobs (once: a continuation leaves the file as it is; a later
    batch adds its jobs); return the sweep's id."""
    path = sweep_dir / MANIFEST
    manifest = read_manifest(sweep_dir)  # refuses a file this package did not write
    sweep_id = manifest.sweep_id if manifest is not None else new_sweep_id()
    recorded: dict[int, dict] = {}
    if manifest is not None:
        if all(num in manifest.jobs for num in jobs):
            return sweep_id
        recorded = {
            n: {"num": n, "dir": manifest.dirs[n], "overrides": o} for n, o in manifest.jobs.items()
        }
    for num, overrides in jobs.items():
        recorded.setdefault(
            num, {"num": num, "dir": str(job_dirs[num].name), "overrides": list(overrides)}
        )
    listing = {"sweep_id": sweep_id, "jobs": [recorded[n] for n in sorted(recorded)]}
    atomic_write_text(path, json.dumps(listing, indent=1) + "\n")
    return sweep_id


def _refuse_not_ours(job_dir: Path, sweep_dir: Path, sweep_id: str, num: int) -> None:
    """Refuse a job folder that is not this sweep's own job #``num`` (its marker)."""
    inside = (
        job_dir.parent == sweep_dir
        and not job_dir.is_symlink()
        and job_dir.resolve().parent == sweep_dir.resolve()
    )
    if not inside:
        raise UserError(
            f"Sweep job directory {job_dir} is not a folder of its own inside {sweep_dir}; leave "
            "hydra.sweep.subdir at its default (the job number)."
        )
    marker = read_marker(job_dir)
    if marker != (sweep_id, num):
        raise UserError(
            f"Sweep job directory {job_dir} holds files this sweep did not write (no {MARKER} "
            f"marker of its job #{num}); it is left as it is. Choose a new hydra.sweep.dir."
        )


def claim_job_dir(job_dir: Path, sweep_dir: Path, sweep_id: str, num: int) -> None:
    """Make job #``num``'s folder (a new or empty one) the sweep's own: write its marker, before
    the job runs. A folder that holds anything else is refused."""
    if read_marker(job_dir) is None:
        job_dir.mkdir(exist_ok=True)
        if any(job_dir.iterdir()) or job_dir.is_symlink():
            raise UserError(
                f"Sweep job directory {job_dir} appeared with files this sweep did not write; it "
                "is left as it is. Choose a new hydra.sweep.dir."
            )
        atomic_write_text(job_dir / MARKER, json.dumps({"sweep_id": sweep_id, "num": num}) + "\n")
    _refuse_not_ours(job_dir, sweep_dir, sweep_id, num)


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Held while this process runs the sweep: a second ``-m ... hydra.sweep.dir=<same>`` started
    meanwhile is refused with one line instead of running the same jobs again. An advisory lock
    (flock): the system releases it when the process ends, however it ends."""
    import fcntl

    path = sweep_dir / LOCK
    with open(path, "a+") as f:
        f.seek(0)
        if not _LOCK_TEXT.fullmatch(f.read(64)):
            raise UserError(
                f"hydra.sweep.dir={sweep_dir} holds a {LOCK} that no sweep wrote; it is left as it "
                "is. Choose a new hydra.sweep.dir."
            )
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


def prepare_restart(job_dir: Path, sweep_dir: Path, sweep_id: str, num: int) -> None:
    """Empty the folder of a job that started but saved no checkpoint, so that it runs afresh
    (no stale metrics rows, samples or logs of the attempt); only a folder holding this sweep's
    marker of job #``num``, which stays."""
    import shutil

    _refuse_not_ours(job_dir, sweep_dir, sweep_id, num)
    for path in job_dir.iterdir():
        if path.name == MARKER:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


_SWEEP_DIR = re.compile(r"^[+~]*hydra\.sweep\.dir=")


def continue_command(sweep_dir: Path) -> str:
    """The command that continues this sweep: the one that started it (this process's command
    line), with ``hydra.sweep.dir`` set to its directory in full; quoted to run as copied."""
    import __main__

    spec = getattr(__main__, "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None else ["python", sys.argv[0]]
    args = [a for a in sys.argv[1:] if not _SWEEP_DIR.match(a)]
    if not any(a in ("-m", "--multirun") for a in args):
        args.insert(0, "-m")
    where = override("hydra.sweep.dir", sweep_dir.resolve())
    return " ".join(shell_quote(a) for a in [*head, *args, where])


def job_config(hydra_context: Any, config: Any, idx: int, overrides: list[str]) -> Any:
    """Job ``idx``'s config, as Hydra composes a sweep job (both launchers' jobs)."""
    from omegaconf import open_dict

    job = hydra_context.config_loader.load_sweep_config(config, overrides)
    with open_dict(job):
        job.hydra.job.num = idx
        job.hydra.job.id = idx
    return job
