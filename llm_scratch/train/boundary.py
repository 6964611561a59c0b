"""The one boundary between the user's config and what it builds and runs.

Whatever escapes from building or running a config group (the data, the model, the optimizer,
the Trainer, the callbacks, the loggers) is a consequence of the user's settings: inside
:func:`configured` it becomes one :class:`UserError` naming the group, so the entry point
prints one ``error:`` line instead of a traceback (``LLM_SCRATCH_TRACEBACK=1`` shows the
traceback, with the original exception as its cause). A :class:`UserError` raised inside
already names its key and passes unchanged; Ctrl-C and ``SystemExit`` are not errors.

The config's values are checked before any of this (llm_scratch/train/validate.py, also before
Hydra makes the run directory: its ``CheckConfigFirst``); the boundary is for what only the
libraries find.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

from hydra.errors import InstantiationException

from llm_scratch.errors import UserError, one_line

# Where a failure while running comes from: the modules of what each group instantiates.
_RUNNING_GROUPS = (
    ("torch.optim.lr_scheduler", "scheduler"),
    ("torch.optim", "optimizer"),
    ("llm_scratch.train.optim", "scheduler"),
    ("llm_scratch.data", "data"),
    ("torch.utils.data", "data"),
    ("llm_scratch.model", "model"),
    ("llm_scratch.train.callbacks", "callbacks"),
    ("lightning.pytorch.callbacks", "callbacks"),
    ("lightning.pytorch.loggers", "logger"),
    ("llm_scratch.train.csv_logger", "logger"),
    ("llm_scratch.train.loggers", "logger"),
)


def describe_failure(group: str, error: BaseException) -> str:
    """One line for ``error`` raised while building or running ``group``."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, UserError):
        return str(error)
    text = one_line(str(error)).rstrip(".") if str(error).strip() else type(error).__name__
    return (
        f"{group}: {text} ({type(error).__name__} from the {group} your config sets up; check "
        f"its {group}.* settings; LLM_SCRATCH_TRACEBACK=1 shows where it was raised)."
    )


@contextlib.contextmanager
def configured(group: str) -> Iterator[None]:
    """Turn any exception raised inside (building ``group`` from the config) into one
    :class:`UserError` naming ``group``; a :class:`UserError` passes unchanged."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - the boundary: anything the user's group raised
        raise UserError(describe_failure(group, error)) from error


def group_of(error: BaseException, default: str = "trainer") -> str:
    """The config group whose code raised ``error``: the innermost frame of its traceback in
    a module of one (the optimizer's, a callback's, the data's ...); ``default`` otherwise."""
    frames = [
        frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(error.__traceback__)
    ]
    for module in reversed(frames):
        for prefix, group in _RUNNING_GROUPS:
            if module == prefix or module.startswith(prefix + "."):
                return group
    return default


@contextlib.contextmanager
def running(default: str = "trainer") -> Iterator[None]:
    """As :func:`configured`, for running what the config built (``trainer.fit``): the group
    named is the one whose code raised (:func:`group_of`)."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - the boundary, as configured()
        raise UserError(describe_failure(group_of(error, default), error)) from error
