"""Nothing lost, nothing silent: atomic checkpoint writes, a finite-loss guard, a checkpoint on
SIGTERM, the RNG state for exact resumption, and one-line messages for failures during training.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from llm_scratch.checkpoint import read_checkpoint
from llm_scratch.errors import Preempted, UserError
from llm_scratch.utils.io import atomic_open

log = logging.getLogger(__name__)

__all__ = [
    "AtomicCheckpointIO",
    "FiniteLossGuard",
    "NonFiniteLossError",
    "SIGTERMException",
    "SigtermCheckpoint",
    "check_resume_checkpoint",
    "get_rng_states",
    "is_out_of_memory",
    "set_rng_states",
    "training_errors",
]


# ----------------------------------------------------------------------------- checkpoint files
class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same folder, fsynced, then renamed over the
    old one: a crash or a full disk mid-write leaves the previous checkpoint whole. Reads use
    ``torch.load(weights_only=True)`` unless the caller asks otherwise.

    (Lightning's own ``_atomic_save`` writes through an fsspec transaction, which on a local disk
    stages the file in the system temp folder and, when that is another file system, copies it
    into place non-atomically, without an fsync.)
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):  # remote storage: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            with atomic_open(path, "wb") as f:
                torch.save(checkpoint, f)
        except OSError as error:
            raise UserError(
                f"Could not write the checkpoint {path} ({error.strerror or error}); the previous "
                "checkpoint there is kept. Free some disk space, or choose a writable folder with "
                "paths.log_dir=..., then continue with ckpt_path=<the run directory>."
            ) from error

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None):
        if map_location is None:
            return super().load_checkpoint(path, weights_only=_weights_only(weights_only))
        return super().load_checkpoint(path, map_location, weights_only=_weights_only(weights_only))


def _weights_only(value: bool | None) -> bool:
    return True if value is None else value


def check_resume_checkpoint(path: str | Path, model: dict[str, Any], tokenizer: dict[str, Any]):
    """Refuse, with one line, a checkpoint that cannot continue this run: unreadable, unsafe
    (anything but tensors and plain values), of another model configuration, or of another
    tokenizer. Lightning would otherwise fail later with a page-long ``load_state_dict`` error.
    """
    checkpoint = read_checkpoint(path, mmap=True)
    hparams = checkpoint["hyper_parameters"]
    if hparams["tokenizer"] != tokenizer:
        raise UserError(
            f"Checkpoint {path} was trained with another tokenizer "
            f"({_describe_tokenizer(hparams['tokenizer'])}) than this run's data gives "
            f"({_describe_tokenizer(tokenizer)}); resume with the same data settings "
            "(data=..., data.tokenizer=...) as the run that saved it."
        )
    saved = hparams["model"]
    differ = [k for k in sorted(set(saved) | set(model)) if saved.get(k) != model.get(k)]
    if differ:
        shown = ", ".join(
            f"model.{k}={saved.get(k)!r} there but {model.get(k)!r} here" for k in differ
        )
        raise UserError(
            f"Checkpoint {path} belongs to another model configuration ({shown}); resume with "
            "the model settings it was trained with, or start a new run without ckpt_path."
        )
    return checkpoint


def _describe_tokenizer(d: dict[str, Any]) -> str:
    if d.get("type") == "char":
        return f"char, {len(d.get('chars', []))} characters"
    return f"{d.get('type')} {d.get('encoding', '')}".strip()


# ----------------------------------------------------------------------------- failures in fit
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


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(L.Callback):
    """Stops training when the loss becomes NaN or infinite, naming the step and learning rate,
    before any checkpoint of the broken state is written.

    The check reads one flag from the device every ``check_every_n_steps`` optimizer steps (no
    sync per step; with gradient accumulation a step is several batches) and before every
    checkpoint save: ``on_save_checkpoint`` runs before the file is
    written, so ``last.ckpt`` and the best checkpoint keep the last good state.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        if check_every_n_steps < 1:
            raise UserError(
                f"callbacks.finite_loss.check_every_n_steps must be >= 1, got {check_every_n_steps}"
            )
        self.check_every_n_steps = int(check_every_n_steps)
        self._first_bad: torch.Tensor | None = None  # step of the first bad loss, -1: none
        self._bad_value: torch.Tensor | None = None
        self._lrs: dict[int, float] = {}
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step
        if trainer.optimizers:
            self._lrs[self._step] = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach().float().reshape(())
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_value = torch.zeros((), device=loss.device)
        new = (~torch.isfinite(loss)) & (self._first_bad < 0)
        self._first_bad = torch.where(new, self._step, self._first_bad)
        self._bad_value = torch.where(new, loss, self._bad_value)
        # Optimizer steps, not batches: only the last batch of an accumulated step moves
        # global_step past the step this batch started in (self._step).
        step = trainer.global_step
        if step > self._step and step % self.check_every_n_steps == 0:
            self.check()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check()

    def check(self) -> None:
        if self._first_bad is None:
            return
        step = int(self._first_bad.item())  # the one device sync
        if step < 0:
            self._lrs.clear()  # every loss so far was finite
            return
        value = float(self._bad_value.item())
        lr = self._lrs.get(step)
        lr_text = f"learning rate {lr:.3g}" if lr is not None else "learning rate unknown"
        raise NonFiniteLossError(
            f"The training loss became {value} at step {step} ({lr_text}); training stopped "
            "before saving that state, so the checkpoints already saved are the last good ones. "
            "Lower optimizer.lr, lengthen scheduler.warmup_steps or keep "
            "trainer.gradient_clip_val, then continue with ckpt_path=<the run directory>."
        )


class SigtermCheckpoint(L.Callback):
    """On SIGTERM (what cluster schedulers send before preempting a job) save ``last.ckpt`` at
    the end of the current training batch; Lightning then stops the run.

    Lightning 2.6 only sets ``trainer.received_sigterm`` and raises ``SIGTERMException`` after the
    batch, without saving anything. The checkpoint written here is the state Lightning's
    ``every_n_train_steps`` checkpoints hold, so resuming from it continues exactly.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.saved_step: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.received_sigterm:
            self._save(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # The signal came after this callback's on_train_batch_end: Lightning raises at the end
        # of the batch (after any validation due there), a state it also resumes from exactly.
        # During validation it raises mid-way; that state is not saved (the periodic one stays).
        if isinstance(exception, SIGTERMException) and not trainer.validating:
            self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        if self.saved_step is not None or trainer.sanity_checking:
            return
        log.info("SIGTERM received: saving %s at step %d", self.path, trainer.global_step)
        trainer.save_checkpoint(self.path)
        self.saved_step = trainer.global_step


# ----------------------------------------------------------------------------- RNG state
def get_rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python RNG states as tensors and plain lists, so that a
    checkpoint holding them still loads with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------- fit errors
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
