"""What can go wrong inside ``trainer.fit``, as one-line :class:`UserError` s: out of memory,
a checkpoint that does not fit, a full or read-only disk, and a stop by SIGTERM."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from llm_scratch.errors import Preempted, UserError
from llm_scratch.train.callbacks import SigtermCheckpoint


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text  # DefaultCPUAllocator
        or "out of memory" in text.lower()  # CUDA, MPS, XPU
    )


def out_of_memory_message(batch_size: int, accumulate: int) -> str:
    smaller = max(batch_size // 2, 1)
    factor = batch_size // smaller
    return (
        f"Out of memory while training with data.batch_size={batch_size}: lower it (e.g. "
        f"data.batch_size={smaller}) and raise trainer.accumulate_grad_batches (e.g. to "
        f"{accumulate * factor}) to keep the same effective batch; or use a smaller model or "
        "data.context_length."
    )


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


@contextlib.contextmanager
def training_errors(trainer: L.Trainer, batch_size: int, output_dir: Path) -> Iterator[None]:
    """Turn what can go wrong inside ``trainer.fit`` into one-line :class:`UserError` s."""
    try:
        yield
    except UserError:
        raise
    except SIGTERMException as error:
        saved = [c.saved_step for c in trainer.callbacks if isinstance(c, SigtermCheckpoint)]
        where = (
            f"saved checkpoints/last.ckpt at step {saved[0]}"
            if saved and saved[0] is not None
            else "no checkpoint saved on the way out (it came during validation); the last "
            "periodic checkpoints/last.ckpt is kept"
        )
        raise Preempted(
            f"Training stopped by SIGTERM at step {trainer.global_step}; {where}. Continue it in "
            "a new run directory with: python training/run_experiment.py <the same overrides, "
            f"without hydra.run.dir> ckpt_path={output_dir}"
        ) from error
    except (RuntimeError, torch.OutOfMemoryError) as error:
        if is_out_of_memory(error):
            accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
            raise UserError(out_of_memory_message(batch_size, accumulate)) from error
        if "Error(s) in loading state_dict" in str(error):
            first = next((ln.strip() for ln in str(error).splitlines()[1:] if ln.strip()), "")
            raise UserError(
                "The checkpoint does not fit this model configuration "
                f"({first[:200]}); resume with the model settings it was trained with."
            ) from error
        raise
    except OSError as error:
        if error.errno in _DISK_ERRNOS:
            raise UserError(
                f"Could not write {error.filename or 'a file'} ({error.strerror}); free some disk "
                "space or choose a writable folder with paths.log_dir=..., then continue with "
                f"ckpt_path={output_dir}."
            ) from error
        raise
