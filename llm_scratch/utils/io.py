"""Atomic file writes (a crash mid-write leaves the previous file whole), and the one way the
package reads a text or JSON file a user names: any problem with it is one line naming it."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows.

    Linux reports it in /proc/self/status; elsewhere it can only be read by setting it, which
    briefly changes it for every thread of the process (kept short, and under a lock).
    """
    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/self/status", encoding="ascii", errors="replace") as f,
    ):
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The permission bits ``open(path, "w")`` would leave: an existing file's own, else
    0o666 less the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success fsync it and rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. The file gets
    the permissions a plain ``open()`` would give it (mkstemp creates it 0600, which would keep
    everyone else on a shared machine from reading checkpoints, results and caches).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _mode_for(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


# ----------------------------------------------------------------------------- user files
def read_user_text(path: str | os.PathLike, name: str) -> str:
    """The UTF-8 text of a file the user named (``name``: how, e.g. ``prompt_file=p.txt``); a
    missing, unreadable or non-UTF-8 file is one :class:`UserError` line naming it."""
    from llm_scratch.errors import UserError

    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{name} is not UTF-8 text ({error.reason} at byte {error.start}); convert it "
            "(e.g. iconv -t utf-8) or give another file."
        ) from error
    except OSError as error:
        raise UserError(f"Cannot read {name}: {error.strerror or error}.") from error


def parse_user_json(text: str, where: str, hint: str = "", line: bool = False) -> object:
    """``json.loads(text)`` for JSON a user gave: invalid JSON, nesting too deep for the
    parser (a RecursionError) or numbers too long to convert are one :class:`UserError` line
    naming ``where`` (the file; ``line``: ``text`` is one line of it, which ``where`` names),
    with ``hint`` (what to give instead)."""
    import json

    from llm_scratch.errors import UserError

    hint = f"; {hint}" if hint else ""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        place = (
            f" at column {error.colno}"
            if line
            else f" at line {error.lineno}, column {error.colno}"
        )
        raise UserError(f"{where} is not valid JSON ({error.msg}{place}){hint}.") from None
    except RecursionError:
        raise UserError(
            f"{where} is nested too deeply to read (more levels of lists or objects than "
            f"Python's parser allows){hint}."
        ) from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        raise UserError(f"{where} cannot be read as JSON ({error}){hint}.") from None
