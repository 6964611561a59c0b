"""User-facing errors: one clear line that names the problem and the fix."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

TRACEBACK_ENV = "LLM_SCRATCH_TRACEBACK"


class UserError(Exception):
    """A problem with the user's input or environment, not a bug in the package.

    Entry points catch it and print its message on one line, without a traceback
    (set ``LLM_SCRATCH_TRACEBACK=1`` to see one), and exit with ``exit_code`` (2).
    """

    exit_code = 2


class Preempted(UserError):
    """Training stopped on SIGTERM after saving a checkpoint; exit status 143 (128 + SIGTERM)."""

    exit_code = 143


class Interrupted(UserError):
    """Training stopped by Ctrl-C (SIGINT) after saving a checkpoint; exit status 130
    (128 + SIGINT)."""

    exit_code = 130


class NonFiniteLossError(UserError):
    """The training loss became NaN or infinite."""


def show_traceback() -> bool:
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


def report_user_error(error: UserError) -> int:
    """Print ``error`` as one ``error:`` line on stderr and return its exit status; re-raise it
    instead when ``LLM_SCRATCH_TRACEBACK`` asks for the traceback. For entry points that return
    their exit status; the others use :func:`exit_on_user_error`."""
    if show_traceback():
        raise error
    print(f"error: {error}", file=sys.stderr)
    return error.exit_code


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a :class:`UserError` raised inside into one ``error:`` line on stderr and
    ``sys.exit(error.exit_code)`` (2, or 143 after a SIGTERM); ``LLM_SCRATCH_TRACEBACK=1`` lets
    it propagate with its traceback."""
    try:
        yield
    except UserError as error:
        sys.exit(report_user_error(error))
    except KeyboardInterrupt:  # Ctrl-C outside training (which stops with a checkpoint)
        if show_traceback():
            raise
        print("error: Interrupted by Ctrl-C; nothing was saved.", file=sys.stderr)
        sys.exit(130)


def uncreatable_dir_error(error: BaseException) -> UserError | None:
    """A :class:`UserError` for an ``OSError`` raised while creating a directory (Hydra makes the
    run or sweep directory before our code runs), naming the directory and the fix; ``None``
    for any other error."""
    if not isinstance(error, OSError):
        return None
    # the outermost mkdir frame holds the directory asked for; error.filename is the part that
    # failed (a parent of it, for mkdir(parents=True))
    target = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_name in ("mkdir", "makedirs"):
            target = frame.f_locals.get("self", frame.f_locals.get("name"))
            break
    if target is None:
        return None
    failed = error.filename if error.filename is not None else target
    reason = error.strerror or type(error).__name__
    if error.errno == errno.ENOTDIR:  # name the file that stands where a directory should be
        blocker = next((p for p in reversed(Path(target).parents) if p.is_file()), None)
        if blocker is not None:
            failed, reason = blocker, "a file, not a directory"
    if str(failed) == str(target):
        where = f"{target} ({reason})"
    else:
        where = f"{target} ({failed}: {reason})"
    return UserError(
        f"Cannot create the output directory {where}; choose a writable place with "
        "paths.log_dir=<dir> (or hydra.run.dir=<dir> for a run, hydra.sweep.dir=<dir> with -m)."
    )


def one_line(text: str) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line (search paths and hints dropped)."""
    parts: list[str] = []
    listing = False  # the lines after "Available options in 'model':" are its items
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(("Config search path", "Set the environment")):
            break
        if not line or line.startswith(("full_key:", "object_type=", "reference_type=")):
            continue
        if listing:
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
        else:
            parts.append(line)
            listing = line.endswith(":")
    return "; ".join(p.rstrip(".") for p in parts) + "."
