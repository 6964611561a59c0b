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
    job log, opened before our code runs, and the sweep launcher's job_output.log)."""
    return path.parent == output_dir and path.suffix == ".log" and not path.is_dir()


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
    ``cfg``). Returns the files written."""
    check_run_dir(output_dir, ckpt_path)
    claim = output_dir / CLAIM
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise _claimed(output_dir) from None
    except OSError as error:
        raise UserError(
            f"Cannot write to the run directory {output_dir} ({error.strerror}). "
            "Choose a writable place with hydra.run.dir=... or paths.log_dir=..."
        ) from error
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    if cfg is None:
        return [claim]
    try:
        return [claim, *write_hydra_files(output_dir, cfg)]
    except BaseException:
        claim.unlink()
        raise


def write_hydra_files(output_dir: Path, cfg: Any) -> list[Path]:
    """Write what Hydra writes in ``.hydra/`` (the job's config, Hydra's config, the overrides),
    now that the directory is this run's; nothing outside a Hydra app. Returns the files."""
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
    written = []
    for name in HYDRA_FILES:
        written.append(output_dir / HYDRA_SUBDIR / name)
        atomic_write_text(written[-1], OmegaConf.to_yaml(contents[name]))
    return written


def remove_unfinished(output_dir: Path, written: list[Path]) -> None:
    """After a failure, remove the files this call wrote (its claim, .hydra/, config.yaml,
    tokenizer.json) if the run left nothing else: no checkpoint, metrics, samples or logger
    files, so the directory can be used again. The log files stay, and so does anything an
    earlier run put there. A sweep job keeps its .hydra/ (the report names a failed job by its
    overrides)."""
    from llm_scratch.sweep_env import SWEEP_ID_ENV

    ours = {path.resolve() for path in written}
    for path in output_dir.rglob("*"):
        if path.is_file() and not _kept(path, output_dir) and path.resolve() not in ours:
            return  # the run produced something: keep its config and tokenizer with it
    in_sweep = bool(os.environ.get(SWEEP_ID_ENV))
    for path in written:
        if in_sweep and path.parent.name == HYDRA_SUBDIR:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if not in_sweep:
        with contextlib.suppress(OSError):
            (output_dir / HYDRA_SUBDIR).rmdir()
