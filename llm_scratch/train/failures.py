"""What can go wrong inside ``trainer.fit``, as one-line :class:`UserError` s: out of memory,
a checkpoint that does not fit, a full or read-only disk, and a stop by SIGTERM or Ctrl-C
(SIGINT), each of which saves ``last.ckpt`` at the end of the batch."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from llm_scratch.compat import stop_at_batch_end
from llm_scratch.errors import Interrupted, Preempted, UserError
from llm_scratch.sweep_env import SWEEP_ID_ENV
from llm_scratch.train.callbacks import SigtermCheckpoint
from llm_scratch.train.commands import continue_command
from llm_scratch.utils.memory import is_out_of_memory

log = logging.getLogger(__name__)


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
def ctrl_c_stops_at_batch_end(trainer: L.Trainer) -> Iterator[list[int]]:
    """While inside, a first Ctrl-C (SIGINT) stops training as SIGTERM does: at the end of the
    batch, with ``last.ckpt`` saved; a second one stops at once (Lightning's KeyboardInterrupt
    shutdown, nothing saved). Yields the list the signal is recorded in."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # signal handlers belong to the main thread
        return

    def on_sigint(signum, frame) -> None:
        if received:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        received.append(signum)
        log.warning(
            "Ctrl-C: stopping at the end of this batch (saving checkpoints/last.ckpt unless it "
            "came during a validation); press Ctrl-C again to stop at once without saving."
        )
        stop_at_batch_end(trainer)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def training_errors(trainer: L.Trainer, batch_size: int, output_dir: Path) -> Iterator[None]:
    """Turn what can go wrong inside ``trainer.fit`` into one-line :class:`UserError` s."""
    try:
        with ctrl_c_stops_at_batch_end(trainer) as ctrl_c:
            yield
    except UserError:
        raise
    except SIGTERMException as error:
        stopped = Interrupted if ctrl_c else Preempted
        raise stopped(stop_message(trainer, output_dir, bool(ctrl_c))) from error
    except ValueError as error:
        if "`val_check_interval` (" in str(error):  # Lightning's, when the data is set up
            raise UserError(
                f"trainer.val_check_interval={trainer.val_check_interval} is more than the "
                f"{trainer.num_training_batches} training batches of an epoch: to validate every "
                f"{trainer.val_check_interval} batches across epochs add "
                "trainer.check_val_every_n_epoch=null, or lower trainer.val_check_interval."
            ) from error
        raise
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
                f"space or choose a writable folder with paths.log_dir=..., then {_go_on(output_dir)}"
            ) from error
        raise


def saved_step(path: Path) -> int | None:
    """The global step of the checkpoint at ``path``; None when there is none (or unreadable)."""
    if not path.is_file():
        return None
    try:
        return int(
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"]
        )
    except Exception:  # damaged, or not one of ours
        return None


def _go_on(output_dir: Path) -> str:
    """How to go on after a stop: continue from the checkpoint there is, or start again."""
    if os.environ.get(SWEEP_ID_ENV):
        return "continue the sweep with its own command"
    if saved_step(output_dir / "checkpoints" / "last.ckpt") is not None:
        return f"continue it with: {continue_command(output_dir)}"
    return "start it again (no checkpoint of it was saved)"


def stop_message(trainer: L.Trainer, output_dir: Path, ctrl_c: bool) -> str:
    """The one line for a run stopped by SIGTERM or Ctrl-C: the checkpoint it saved, or the one
    it keeps (only one that exists), and the command that continues from it."""
    saved = [c.saved_step for c in trainer.callbacks if isinstance(c, SigtermCheckpoint)]
    kept = saved_step(output_dir / "checkpoints" / "last.ckpt")
    if saved and saved[0] is not None:
        where = f"saved checkpoints/last.ckpt at step {saved[0]}"
    elif kept is not None:
        where = (
            "no checkpoint saved on the way out (it came during a validation); the last periodic "
            f"checkpoints/last.ckpt, of step {kept}, is kept"
        )
    else:
        where = "it came during the first validation, before any checkpoint was saved"
    if os.environ.get(SWEEP_ID_ENV):
        then = "the sweep's own command continues it (printed when the sweep stops)"
    elif kept is None:
        then = "nothing to continue from: start the run again"
    else:
        then = f"continue it in a new run directory with: {continue_command(output_dir)}"
    signal_name = "Ctrl-C (SIGINT)" if ctrl_c else "SIGTERM"
    return f"Training stopped by {signal_name} at step {trainer.global_step}; {where}; {then}"
