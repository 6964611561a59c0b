"""User-facing errors: one clear line that names the problem and the fix."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

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


@contextlib.contextmanager
def one_line_hydra_errors() -> Iterator[None]:
    """Make Hydra report a bad override or config group (``model.pre_normm=1``, ``model=typo``) as
    one ``error:`` line with exit status 2, like the package's own errors, instead of its
    multi-line report with exit status 1. ``HYDRA_FULL_ERROR=1`` or ``LLM_SCRATCH_TRACEBACK=1``
    keep Hydra's full report. Any other exception is left to Hydra's own reporting.
    """
    try:
        import hydra._internal.utils as hydra_utils
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:  # another Hydra layout: keep its reporting
        yield
        return
    original = getattr(hydra_utils, "run_and_report", None)
    if original is None:
        yield
        return

    def run_and_report(func):
        try:
            return func()
        except (HydraException, OmegaConfBaseException) as error:
            if show_traceback() or os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0"):
                raise
            cause = error.__cause__
            text = str(error)
            if isinstance(cause, OmegaConfBaseException) and str(cause) not in text:
                text += "\n" + str(cause)
            print(f"error: {one_line(text)}", file=sys.stderr)
            sys.exit(2)
        except Exception as error:  # noqa: BLE001 - handed back to Hydra's report unchanged
            caught = error

        def reraise():
            raise caught

        return original(reraise)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original
