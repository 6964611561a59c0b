"""What a run directory may hold: a run never writes over an earlier run's results (nor over
files of a folder that is not a run), two runs never share a directory, and a run that fails
on its config leaves nothing of its own behind.

A run claims its directory before it writes anything there: it creates ``.run.claim`` with
``O_EXCL``, which only one process can do, so of two runs started at once with the same
``hydra.run.dir`` the second is refused. Hydra's own ``.hydra/`` files are written by the job
once the directory is claimed (``hydra.output_subdir`` is null in configs/hydra/default.yaml:
Hydra would write them before any check), so a refused run leaves the directory as it was.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

from llm_scratch.errors import UserError

CLAIM = ".run.claim"
HYDRA_SUBDIR = ".hydra"
# what Hydra writes in .hydra/ (hydra.output_subdir), written here once the directory is claimed
HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")
# ranks set by Lightning's launchers, torchrun and SLURM: only the main process claims
_RANK_ENVS = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "SLURM_PROCID")


def is_main_process() -> bool:
    """Whether this process is the run's first (it alone claims and writes the directory); the
    other processes of a multi-process run write into the directory it claimed."""
    return all(os.environ.get(name, "0") in ("", "0") for name in _RANK_ENVS)


def _kept(path: Path, output_dir: Path) -> bool:
    """Files a run directory may hold before a run starts there: log files at its top (Hydra's
    job log, opened before our code runs, and the sweep launcher's job_output.log) and the sweep
    launcher's marker of its job folder."""
    from llm_scratch.sweep_env import SWEEP_JOB_MARKER

    top = path.parent == output_dir and not path.is_dir()
    return top and (path.suffix == ".log" or path.name == SWEEP_JOB_MARKER)


def _holder(output_dir: Path) -> str:
    with contextlib.suppress(OSError):
        return (output_dir / CLAIM).read_text(encoding="utf-8").strip() or "another run"
    return "another run"


def check_run_dir(output_dir: Path, ckpt_path: str | None) -> None:
    """Refuse (one line, nothing written) a run directory that holds anything but log files: an
    earlier run (even the run ``ckpt_path`` continues: the CSV logger would start metrics.csv
    afresh, and a continuation gets its own directory), a run still going, or a folder of other
    files that the run would write over."""
    if not output_dir.is_dir():
        if output_dir.exists():
            raise UserError(
                f"Cannot write to the run directory {output_dir} (a file, not a directory). "
                "Choose a writable place with hydra.run.dir=... or paths.log_dir=..."
            )
        return
    earlier = [p for p in ("checkpoints", "metrics.csv") if (output_dir / p).exists()]
    if (
        earlier
        and ckpt_path is not None
        and Path(ckpt_path).resolve().is_relative_to(output_dir.resolve())
    ):
        raise UserError(
            f"ckpt_path={ckpt_path} would continue the run in its own directory {output_dir} "
            "and overwrite its metrics.csv; leave hydra.run.dir at its default (or choose a new "
            "one) so that the continuation gets a directory of its own."
        )
    if earlier:
        raise UserError(
            f"Run directory {output_dir} already holds a run ({', '.join(earlier)}). "
            "Choose a new hydra.run.dir, or continue that run in a new directory: ckpt_path="
            f"{output_dir} with hydra.run.dir left at its default."
        )
    if (output_dir / CLAIM).exists():
        raise _claimed(output_dir)
    held = sorted(p.name for p in output_dir.iterdir() if not _kept(p, output_dir))
    if held:
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise UserError(
            f"Run directory {output_dir} is not empty (it holds {shown}); a run writes "
            "config.yaml, tokenizer.json, .hydra/, checkpoints/ and its logs there and never over "
            "files it did not write. Choose a new or empty hydra.run.dir."
        )


def _claimed(output_dir: Path) -> UserError:
    return UserError(
        f"Run directory {output_dir} is claimed by another run ({_holder(output_dir)}); two runs "
        f"never share a directory. Choose a new hydra.run.dir (if no run is using it, it was "
        f"stopped before it wrote anything: delete {output_dir / CLAIM} or the directory)."
    )


def claim_run_dir(output_dir: Path, ckpt_path: str | None, cfg: Any = None) -> list[Path]:
    """Check ``output_dir`` (:func:`check_run_dir`), claim it for this run (of two runs that get
    here at once, the second is refused) and write ``.hydra/`` (:func:`write_hydra_files`, with
    ``cfg``). Returns the files written. A write that fails (a full disk) is one line, and leaves
    neither the claim nor a half-written ``.hydra/``."""
    check_run_dir(output_dir, ckpt_path)
    claim = output_dir / CLAIM
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise _claimed(output_dir) from None
    except OSError as error:
        raise _unwritable(output_dir, error) from error
    written = [claim]
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        if cfg is not None:
            write_hydra_files(output_dir, cfg, written)
    except BaseException as error:
        _remove(output_dir, written)
        if isinstance(error, OSError):
            raise _unwritable(output_dir, error) from error
        raise
    return written


def _unwritable(output_dir: Path, error: OSError) -> UserError:
    return UserError(
        f"Cannot write to the run directory {output_dir} ({error.strerror or error}). "
        "Free some disk space, or choose a writable place with hydra.run.dir=... or "
        "paths.log_dir=..."
    )


def _remove(output_dir: Path, written: list[Path]) -> None:
    """Remove the files of ``written`` and the folders they leave empty inside ``output_dir``."""
    for path in reversed(written):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for folder in sorted({p.parent for p in written}, key=lambda p: -len(p.parts)):
        if folder != output_dir and folder.is_relative_to(output_dir):
            with contextlib.suppress(OSError):
                folder.rmdir()


def write_hydra_files(output_dir: Path, cfg: Any, written: list[Path] | None = None) -> list[Path]:
    """Write what Hydra writes in ``.hydra/`` (the job's config, Hydra's config, the overrides),
    now that the directory is this run's; nothing outside a Hydra app. Returns the files (and
    adds each to ``written`` before it is written: a failed write can be undone)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from llm_scratch.utils.io import atomic_write_text

    if not HydraConfig.initialized():
        return []
    hydra_cfg = HydraConfig.get()
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    contents = {
        "config.yaml": job_cfg,
        "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
        "overrides.yaml": hydra_cfg.overrides.task,
    }
    files = []
    for name in HYDRA_FILES:
        files.append(output_dir / HYDRA_SUBDIR / name)
        if written is not None:
            written.append(files[-1])
        atomic_write_text(files[-1], OmegaConf.to_yaml(contents[name]))
    return files


def has_checkpoint(output_dir: Path) -> bool:
    """Whether the run in ``output_dir`` saved a checkpoint (a file, or a sharded one's folder)."""
    folder = output_dir / "checkpoints"
    return folder.is_dir() and any(p.suffix == ".ckpt" for p in folder.iterdir())


def remove_unfinished(
    output_dir: Path, written: list[Path], training_started: bool = False, fresh: bool = False
) -> None:
    """After a failure, a run that saved no checkpoint leaves its directory usable again: the
    files it wrote go (its claim, .hydra/, config.yaml, tokenizer.json, and once training
    started its metrics, samples and logger files: everything but the log files, which were the
    only files the directory could hold when the run claimed it). When it stopped before
    training and Hydra made the directory for this start (``fresh``), the directory goes too,
    with the log Hydra opened in it. A run with a checkpoint keeps everything (it can be
    continued). A sweep job keeps its .hydra/ (the report names a failed job by its overrides)."""
    from llm_scratch.sweep_env import SWEEP_ID_ENV

    in_sweep = bool(os.environ.get(SWEEP_ID_ENV))
    if in_sweep:  # the sweep launcher decides what becomes of its job folders
        _remove_written(output_dir, written, in_sweep)
        return
    if output_dir / CLAIM in written:
        if has_checkpoint(output_dir):
            return
        # the claim proved the directory held only log files: every other file is this run's
        files = [p for p in output_dir.rglob("*") if not p.is_dir() and not _kept(p, output_dir)]
        _remove(output_dir, files)
        for folder in sorted(output_dir.rglob("*"), key=lambda p: -len(p.parts)):
            if folder.is_dir():
                with contextlib.suppress(OSError):
                    folder.rmdir()
    else:
        _remove_written(output_dir, written, in_sweep)
    if fresh and not training_started and output_dir.is_dir():
        _remove_new_directory(output_dir)


def _remove_written(output_dir: Path, written: list[Path], in_sweep: bool) -> None:
    ours = {path.resolve() for path in written}
    for path in output_dir.rglob("*"):
        if path.is_file() and not _kept(path, output_dir) and path.resolve() not in ours:
            return  # the run produced something: keep its config and tokenizer with it
    for path in written:
        if in_sweep and path.parent.name == HYDRA_SUBDIR:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if not in_sweep:
        with contextlib.suppress(OSError):
            (output_dir / HYDRA_SUBDIR).rmdir()


def _remove_new_directory(output_dir: Path) -> None:
    """Remove a directory made for this start, and the log files this process opened there
    (closed first, and taken off their loggers so that no later message opens them again)."""
    import logging

    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in list(getattr(logger, "handlers", [])):
            filename = getattr(handler, "baseFilename", None)
            if filename and Path(filename).parent == output_dir.absolute():
                handler.close()
                logger.removeHandler(handler)
    logs = [p for p in output_dir.iterdir() if p.is_file() and p.suffix == ".log"]
    if len(logs) != len(list(output_dir.iterdir())):
        return  # something else is there: not ours to remove
    _remove(output_dir, logs)
    with contextlib.suppress(OSError):
        output_dir.rmdir()


# The run directories that this process's Hydra run made (they did not exist when the run
# started): a start that fails before training removes such a directory, never another.
_MADE_BY_HYDRA: set[str] = set()


def made_for_this_start(output_dir: Path) -> bool:
    """Whether ``output_dir`` does not exist yet, or was made by Hydra for this start."""
    return not output_dir.exists() or str(output_dir.absolute()) in _MADE_BY_HYDRA


try:  # Hydra's callbacks (configs/hydra/default.yaml: hydra.callbacks)
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[assignment,misc]


class RecordNewRunDir(_HydraCallback):
    """Notes, before Hydra makes the run directory, whether it exists already (Hydra creates
    it before the job runs, so the job alone cannot tell a new directory from a user's)."""

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        with contextlib.suppress(Exception):  # an unresolvable dir: Hydra itself reports it
            path = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
            if not path.exists():
                _MADE_BY_HYDRA.add(str(path))
