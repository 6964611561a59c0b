"""Where a training process's wall time goes: ``PhaseTimes``, a callback that writes
``phase_times.json`` into the run directory when the process exits.

Add it to any run with ``+callbacks.phase_times._target_=llm_scratch.train.timing.PhaseTimes``
(``python -m llm_scratch.bench sweep`` does). It records wall-clock times (``time.time()``): the
process start (Linux ``/proc/self/stat``), the marks the training job sets (:func:`mark`: data,
model, fit), Lightning's hooks (setup, each training batch, each validation, the end of
training), and the time spent in ``trainer.save_checkpoint`` (and in the checkpoint IO
plugin's write, with the bytes written) and in the text sampler at each validation.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L

# (label, wall time) of the training job's marks, in this process; PhaseTimes reads them
_MARKS: list[tuple[str, float]] = []


def mark(label: str) -> None:
    """Note that the job reached ``label`` now (a few list appends per run: always on)."""
    _MARKS.append((label, time.time()))


def process_start_time() -> float | None:
    """When this process started, in ``time.time()`` seconds (Linux: /proc); None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


class PhaseTimes(L.Callback):
    """Record the times of a run's phases; write them to ``<output_dir>/phase_times.json``
    (default: the trainer's log directory) when the process exits."""

    def __init__(self, output_dir: str | None = None) -> None:
        self.output_dir = output_dir
        self.times: dict[str, Any] = {
            "process_start": process_start_time(),
            "callbacks_built": time.time(),
            "steps": [],  # [start, end] of each training batch
            "validations": [],  # [start, end] of each validation loop (sanity check too)
            "samples": [],  # [start, end] of the text sampler at each validation
            "saves": [],  # [start, end, path] of each trainer.save_checkpoint
            "writes": [],  # [start, end, bytes] of each checkpoint file written
        }
        self._path: Path | None = None
        atexit.register(self._write)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.times.setdefault("setup", time.time())
        if trainer.is_global_zero:
            folder = self.output_dir or trainer.default_root_dir
            self._path = Path(folder) / "phase_times.json"
        self._wrap(trainer, "save_checkpoint", self.times["saves"], "path")
        io = trainer.strategy.checkpoint_io
        # the write itself: AtomicCheckpointIO's may run on its background thread
        write = "write_checkpoint" if hasattr(io, "write_checkpoint") else "save_checkpoint"
        self._wrap(io, write, self.times["writes"], "size")
        from llm_scratch.train.callbacks import TextSampler

        for callback in trainer.callbacks:
            if isinstance(callback, TextSampler):
                self._wrap(callback, "on_validation_end", self.times["samples"])

    def _wrap(self, owner: Any, name: str, into: list, extra: str | None = None) -> None:
        """Time each call of ``owner.name`` (an instance attribute shadows the method); with
        ``extra`` "path" note its first argument (a checkpoint path), with "size" the size of
        the file its second argument names (the checkpoint IO's ``(checkpoint, path)``)."""
        method = getattr(owner, name)
        if getattr(method, "_phase_timed", False):
            return

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.time()
            try:
                return method(*args, **kwargs)
            finally:
                end = time.time()
                if extra == "path":
                    into.append([start, end, str(args[0]) if args else None])
                elif extra == "size":
                    path = Path(str(args[1])) if len(args) > 1 else None
                    size = path.stat().st_size if path is not None and path.is_file() else None
                    into.append([start, end, size])
                else:
                    into.append([start, end])

        timed._phase_timed = True  # type: ignore[attr-defined]
        setattr(owner, name, timed)

    def on_train_start(self, trainer, pl_module) -> None:
        self.times.setdefault("train_start", time.time())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_start = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times["steps"].append([self._step_start, time.time()])

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.time()

    def on_validation_end(self, trainer, pl_module) -> None:
        # runs after the text sampler's on_validation_end (callbacks are called in their
        # order, this one added after the configured ones) and before the checkpoint callbacks'
        # (Lightning calls those last)
        self.times["validations"].append([self._val_start, time.time()])

    def on_train_end(self, trainer, pl_module) -> None:
        self.times["train_end"] = time.time()

    def _write(self) -> None:
        if self._path is None:
            return
        self.times["marks"] = [[label, t] for label, t in _MARKS]
        self.times["exit"] = time.time()
        with contextlib.suppress(OSError):  # the run directory is gone: nothing to record
            self._path.write_text(json.dumps(self.times, indent=1))
