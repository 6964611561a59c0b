"""Checkpointing in training: atomic checkpoint files, and the RNG states that make a resumed run
exact. (Reading checkpoints and choosing which file a run directory means: llm_scratch/checkpoint.py.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from llm_scratch.errors import UserError
from llm_scratch.train.commands import continue_command
from llm_scratch.utils.io import atomic_open

log = logging.getLogger(__name__)


# Checkpoints holding at least this many bytes of tensors are written in the background: below
# it a write takes milliseconds, and a synchronous one keeps a small run's files where a kill
# finds them
BACKGROUND_BYTES = 64 * 2**20


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file in the same folder, fsynced, then renamed over the
    old one: a crash or a full disk mid-write leaves the previous checkpoint whole. Reads use
    ``torch.load(weights_only=True)`` unless the caller asks otherwise.

    A checkpoint of ``background_bytes`` or more of tensors is written by a background thread
    from a CPU copy taken when it is saved, so training goes on while the bytes reach the disk.
    Writes and removals run one at a time in the order asked (a best is removed only after its
    successor is written); the next save, a read, and the end of the run wait for them, and a
    failed write is raised there.

    (Lightning's own ``_atomic_save`` writes through an fsspec transaction, which on a local disk
    stages the file in the system temp folder and, when that is another file system, copies it
    into place non-atomically, without an fsync.)
    """

    def __init__(self, background_bytes: int | None = None) -> None:
        super().__init__()
        self.background_bytes = BACKGROUND_BYTES if background_bytes is None else background_bytes
        self._writer: ThreadPoolExecutor | None = None
        self._queued: list[Future] = []
        self._failure: BaseException | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        # one copy in memory at a time, and a failed earlier write stops the run here
        self.wait()
        if "://" in str(path):  # remote storage: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        if _tensor_bytes(checkpoint) < self.background_bytes:
            return self.write_checkpoint(checkpoint, path)
        self._queue(self.write_checkpoint, _cpu_copies(checkpoint), path)

    def write_checkpoint(self, checkpoint: dict[str, Any], path: Any) -> None:
        """Write ``checkpoint`` to ``path`` now: temporary file, fsync, rename."""
        try:
            with atomic_open(path, "wb") as f:
                torch.save(checkpoint, f)
        except OSError as error:
            raise _unwritten(path, error.strerror or str(error)) from error
        except RuntimeError as error:
            # torch.save's zip writer reports a failed write (a full disk) as a RuntimeError:
            # "[enforce fail at inline_container.cc:...] . unexpected pos" or "... file write
            # failed"
            text = str(error)
            if "inline_container" not in text and "PytorchStreamWriter" not in text:
                raise
            raise _unwritten(path, f"the write failed: {_free_space(path)}") from error
        remove_stale_temporaries(Path(path))

    def remove_checkpoint(self, path: Any) -> None:
        if self._queued:
            self._queue(super().remove_checkpoint, path)
        else:
            super().remove_checkpoint(path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None):
        self.wait()
        if map_location is None:
            return super().load_checkpoint(path, weights_only=_weights_only(weights_only))
        return super().load_checkpoint(path, map_location, weights_only=_weights_only(weights_only))

    def wait(self) -> None:
        """Return once every queued write and removal is done; raise a write's failure once."""
        queued, self._queued = self._queued, []
        for future in queued:
            future.result()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def teardown(self) -> None:
        try:
            self.wait()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None

    def _queue(self, task: Callable[..., None], *args: Any) -> None:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._queued.append(self._writer.submit(self._run, task, *args))

    def _run(self, task: Callable[..., None], *args: Any) -> None:
        if self._failure is not None:  # after a failed write: keep the files that are there
            return
        try:
            task(*args)
        except BaseException as error:  # raised on the training thread by wait()
            self._failure = error


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _cpu_copies(value: Any) -> Any:
    """``value`` with each tensor replaced by a CPU copy that later updates do not change."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        copies = {k: _cpu_copies(v) for k, v in value.items()}
        return type(value)(copies) if type(value) in (dict, OrderedDict) else copies
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):  # not a namedtuple
        return type(value)(_cpu_copies(v) for v in value)
    return value


def wait_for_checkpoints(trainer: Any) -> None:
    """Wait for the checkpoint files the trainer's checkpoint IO is still writing, if any."""
    wait = getattr(trainer.strategy.checkpoint_io, "wait", None)
    if wait is not None:
        wait()


def _unwritten(path: Any, reason: str) -> UserError:
    """The one line for a checkpoint that could not be written: what is kept, and how to go on,
    as the run directory holds it (a promised checkpoint exists)."""
    path = Path(path)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if path.is_file():
        kept = "the previous checkpoint there is kept"
    elif any(path.parent.glob("*.ckpt")):
        kept = "the run's other checkpoints are kept"
    else:
        kept = "no checkpoint of this run was saved before it"
    if path.is_file() or any(path.parent.glob("*.ckpt")):
        then = f"then continue with: {continue_command(run_dir)}"
    else:
        then = "then start the run again"
    return UserError(
        f"Could not write the checkpoint {path} ({reason}); {kept}. Free some disk space, or "
        f"choose a writable folder with paths.log_dir=..., {then}"
    )


def _free_space(path: Any) -> str:
    try:
        free = shutil.disk_usage(Path(path).parent).free
    except OSError:
        return "is the disk full?"
    return f"{free / 2**20:.0f} MiB free on its disk"


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files a process killed while saving ``path`` left next to it
    (``.last.ckpt.<random>.tmp``, as large as a checkpoint): saves of one file follow each other
    in one process, and two runs never share a directory, so once ``path`` is in place every
    other one is stale. (Readers never take them: they end in .tmp, not .ckpt.)"""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


# what atomic_open names a checkpoint's temporary file: .<name>.<mkstemp's random part>.tmp
_TEMPORARY = re.compile(r"^\.(?P<name>[^/]+\.ckpt)\.[A-Za-z0-9_]{8}\.tmp$")
# a save in progress writes its temporary file continuously; one untouched this long is stale
_STALE_AFTER_S = 600


def remove_stale_run_temporaries(run_dir: Path) -> list[Path]:
    """Remove the checkpoint temporaries a killed save left in ``run_dir/checkpoints`` (when the
    run is continued elsewhere, none of its own saves would ever remove them): only files of
    :func:`atomic_open`'s naming for a checkpoint, and only when no save can be writing them:
    the run that claimed the directory is no longer running on this machine, or the file has
    not been written for 10 minutes. Returns the files removed."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    holder_gone = not _holder_running(run_dir)
    removed = []
    for path in folder.iterdir():
        if not _TEMPORARY.match(path.name) or not path.is_file():
            continue
        try:
            idle = time.time() - path.stat().st_mtime
        except OSError:
            continue
        if holder_gone or idle > _STALE_AFTER_S:
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) of an interrupted save in %s", len(removed), folder)
    return removed


def _holder_running(run_dir: Path) -> bool:
    """Whether the process that claimed ``run_dir`` (its ``.run.claim``: pid and host) may still
    be running: True unless it is on this machine and gone."""
    from llm_scratch.train.run_dir import CLAIM

    try:
        text = (run_dir / CLAIM).read_text(encoding="utf-8")
    except OSError:
        return False  # no claim: no run holds the directory
    match = re.match(r"pid (\d+) on (\S+),", text)
    if match is None or match[2] != socket.gethostname():
        return True
    pid = int(match[1])
    if pid == os.getpid():
        return False  # this process: it is not saving into that directory now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists (another user's)
    return True


def _weights_only(value: bool | None) -> bool:
    return True if value is None else value


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
