"""A stopped sweep's job continued in its own directory: the job's side of continuing a sweep
(the launcher's: hydra_plugins/llm_scratch_launcher/continuation.py).

The sweep launcher names the job's directory in ``LLM_SCRATCH_CONTINUE_JOB`` (an environment
variable, not an override, so the job's ``.hydra/overrides.yaml`` stays its own). The job then
continues from that directory's ``checkpoints/last.ckpt`` instead of being refused for holding a
run, and drops the rows it logged after that checkpoint from ``metrics.csv`` and
``samples.jsonl``: training logs them again, so both files end as an uninterrupted job's would.
A user's own ``ckpt_path=<run dir> hydra.run.dir=<same dir>`` stays refused, and so does a
directory without the sweep's marker of its job folder (``.sweep_job``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from llm_scratch.errors import UserError
from llm_scratch.sweep_env import CONTINUE_ENV, SWEEP_JOB_MARKER
from llm_scratch.utils.io import atomic_open, atomic_write_text

log = logging.getLogger(__name__)

# metrics.csv while Lightning's CSV logger starts (it deletes an existing metrics.csv)
_ASIDE = ".metrics.csv.continued"


def _continued(output_dir: Path) -> Path | None:
    named = os.environ.get(CONTINUE_ENV)
    if not named or Path(named).resolve() != output_dir.resolve():
        return None
    last = output_dir / "checkpoints" / "last.ckpt"
    if not (output_dir / SWEEP_JOB_MARKER).is_file():
        # its metrics.csv and samples.jsonl are rewritten: only in a sweep's own job folder
        raise UserError(
            f"{CONTINUE_ENV}={named}: that directory is not a sweep's job folder (it holds no "
            f"{SWEEP_JOB_MARKER} marker), so it is not continued in place; unset "
            f"{CONTINUE_ENV} and continue the run in a new directory with ckpt_path={named}."
        )
    if not last.is_file():
        raise UserError(
            f"{CONTINUE_ENV}={named}: the sweep job there has no checkpoints/last.ckpt to "
            "continue from; unset it to start the job afresh in a new directory."
        )
    return last


def continued_sweep_job(output_dir: Path) -> str | None:
    """The checkpoint a sweep job continued in its own directory starts from
    (``<output_dir>/checkpoints/last.ckpt``); None for any other run."""
    last = _continued(output_dir)
    if last is None:
        return None
    log.info("Continuing this sweep job in its own directory from %s", last)
    return str(last)


def drop_rows_after_checkpoint(loggers: list[Any], output_dir: Path) -> None:
    """For a continued sweep job (on the main process only): keep in ``metrics.csv`` the rows
    logged before its checkpoint's step and in ``samples.jsonl`` the samples up to it, and make
    the CSV logger append to them. Call after the loggers are made, before training."""
    last = _continued(output_dir)
    if last is None or _rank() != 0:
        return
    step = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    from lightning.pytorch.loggers import CSVLogger

    for logger in loggers:
        if isinstance(logger, CSVLogger):
            _keep_metrics_before(logger, step)
    _keep_samples_up_to(output_dir / "samples.jsonl", step)


def _rank() -> int:
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def _complete_lines(text: str) -> str:
    """``text`` without a last line the kill cut short (no newline at its end)."""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return text


def _keep_metrics_before(logger: Any, step: int) -> None:
    """Keep the rows the continued run will not log again: those up to the checkpoint's step,
    except an epoch's row at that step. (Rows carry the optimizer steps done; the continued run
    starts after the checkpoint's batch, and logs that batch's epoch row, if the batch ended an
    epoch, itself.)"""
    path = Path(logger.log_dir) / "metrics.csv"
    aside = path.with_name(_ASIDE)
    if aside.is_file() and not path.is_file():  # a continuation stopped right here before
        os.replace(aside, path)
    if not path.is_file():
        return
    with path.open(newline="") as f:
        text = _complete_lines(f.read())
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    every = list(reader)
    # (a row with more fields than the header is damaged: dropped too)
    rows = [row for row in every if None not in row and _logged_before(row, step)]
    # Lightning's CSV writer removes an existing metrics.csv when it starts: start it with the
    # file aside, then put the kept rows in place and tell the writer their columns
    os.replace(path, aside)
    writer = logger.experiment
    if header:
        with atomic_open(path, "w", newline="", encoding="utf-8") as f:
            table = csv.DictWriter(f, fieldnames=header)  # as Lightning writes it (\r\n too)
            table.writeheader()
            table.writerows(rows)
        writer.metrics_keys = header
    aside.unlink()
    log.info(
        "metrics.csv: kept the %d row(s) logged up to step %d, dropped %d logged after it",
        len(rows),
        step,
        len(every) - len(rows),
    )


def _logged_before(row: dict[str, str], step: int) -> bool:
    value = row_step(row)
    return _before(value, step) or (value == step and not row.get("train/epoch_loss"))


def _before(value: int | None, step: int) -> bool:
    """Whether ``value`` (None: a damaged row) is a step before ``step``."""
    return value is not None and value < step


def logged_rows(run_dir: Path) -> list[dict[str, str]]:
    """The complete rows of a run's metrics.csv (none if it has none)."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    text = _complete_lines(path.read_text(encoding="utf-8"))
    return [row for row in csv.DictReader(io.StringIO(text, newline="")) if None not in row]


def last_logged(rows: list[dict[str, str]], step: int) -> dict[str, float]:
    """Each metric's last value logged up to ``step`` (what the Trainer held at that step)."""
    values: dict[str, float] = {}
    for row in rows:
        if not _before(row_step(row), step + 1):
            continue
        for key, value in row.items():
            if value and key not in ("step", "epoch"):
                with contextlib.suppress(ValueError):  # a damaged cell: not a figure
                    values[key] = float(value)
    return values


def row_step(row: dict[str, str]) -> int | None:
    try:
        return int(float(row.get("step") or ""))
    except ValueError:
        return None


def _keep_samples_up_to(path: Path, step: int) -> None:
    """A sample is written at a validation, before the checkpoint saved there: samples of later
    steps came after the checkpoint and will be written again."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    kept = [
        line
        for line in _complete_lines(text).splitlines(keepends=True)
        if _before(_sample_step(line), step + 1)
    ]
    if "".join(kept) != text:
        atomic_write_text(path, "".join(kept))


def _sample_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
