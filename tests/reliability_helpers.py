"""Callbacks the reliability tests add to a run through the entry point (``+callbacks.x=...``)."""

from __future__ import annotations

import os
import signal
import time

import lightning as L
import torch


class Throttle(L.Callback):
    """Sleeps before (``where="start"``) or after each training batch, so a test can signal the
    run mid-epoch."""

    def __init__(self, seconds: float = 0.1, where: str = "end") -> None:
        self.seconds = seconds
        self.where = where

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.where == "start":
            time.sleep(self.seconds)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.where == "end":
            time.sleep(self.seconds)


class PoisonLoss(L.Callback):
    """Turns the weights to NaN after ``at_step`` optimizer steps (the next loss is NaN)."""

    def __init__(self, at_step: int = 3) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


class Malicious:
    """Unpickling this writes a marker file: stands for code a checkpoint must never run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class FakeSigterm(L.Callback):
    """Acts as if SIGTERM arrived during the batch that reaches ``at_step`` (or, with
    ``where="validation_end"``, in the end hooks of the validation at that step): Lightning stops
    after it and SigtermCheckpoint saves last.ckpt."""

    def __init__(self, at_step: int, where: str = "batch") -> None:
        self.at_step = at_step
        self.where = where

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.where == "batch" and trainer.global_step == self.at_step:
            trainer._signal_connector.received_sigterm = True  # what the handler sets

    def on_validation_end(self, trainer, pl_module) -> None:
        # a plain callback: its hook runs before the Checkpoint callbacks'
        if self.where == "validation_end" and trainer.global_step == self.at_step:
            trainer._signal_connector.received_sigterm = True


class KillAt(L.Callback):
    """SIGKILLs its own process, as a lost node or the kernel's OOM killer would: during the
    validation at ``at_step`` (``where="validation"``), or where training ends
    (``where="train_end"``, after the last step's checkpoint and validation)."""

    def __init__(self, at_step: int = -1, where: str = "validation") -> None:
        self.at_step = at_step
        self.where = where

    def on_validation_batch_end(self, trainer, *args, **kwargs) -> None:
        here = trainer.global_step == self.at_step and not trainer.sanity_checking
        if self.where == "validation" and here:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.where == "train_end":
            os.kill(os.getpid(), signal.SIGKILL)
