"""The one boundary between the user's config and what it builds and runs.

Whatever escapes from building or running a config group (the data, the model, the optimizer,
the Trainer, the callbacks, the loggers) is a consequence of the user's settings: inside
:func:`configured` it becomes one :class:`UserError` naming the group, so the entry point
prints one ``error:`` line instead of a traceback (``LLM_SCRATCH_TRACEBACK=1`` shows the
traceback, with the original exception as its cause). A :class:`UserError` raised inside
already names its key and passes unchanged; Ctrl-C and ``SystemExit`` are not errors.

:class:`CheckConfigFirst`, a Hydra callback (configs/hydra/default.yaml), validates the config
before Hydra creates the run directory: a value that would fail there (a ``task_name`` too long
for a file name) is refused naming its key, and a refused run leaves no directory behind.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any

from hydra.errors import InstantiationException

from llm_scratch.errors import UserError, one_line, report_user_error

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


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # another Hydra layout: the job validates the config itself
    _HydraCallback = object  # type: ignore[assignment,misc]


class CheckConfigFirst(_HydraCallback):  # type: ignore[misc,valid-type]
    """Validate a run's config before Hydra creates its run directory; a refusal is one line and
    exit status 2 (the job validates again: for sweeps, whose jobs Hydra starts otherwise, and
    for runs in-process)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """A sweep's first job's config (each swept key at its first value), checked before
        the sweep directory is made; a sweep over config groups is left to its jobs (each
        needs a composition of its own), and so is anything this cannot prepare."""
        from llm_scratch.train.validate import validate_config

        try:
            cfg = _first_job(config)
        except Exception:  # noqa: BLE001 - the jobs validate themselves
            return
        if cfg is not None:
            self._check(cfg, os.path.join(str(cfg.hydra.sweep.dir), "0"), validate_config)

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from llm_scratch.train.validate import validate_config

        self._check(config.copy(), str(config.hydra.run.dir), validate_config)

    @staticmethod
    def _check(cfg: Any, output_dir: str, validate_config: Any) -> None:
        from omegaconf import DictConfig, open_dict

        with open_dict(cfg):
            # what Hydra sets once the directory exists (its name is checked here, not made)
            output_dir = os.path.abspath(output_dir)
            cfg.hydra.runtime.output_dir = output_dir
            if isinstance(cfg.get("paths"), DictConfig):
                cfg.paths.output_dir = output_dir
        try:
            validate_config(cfg)
        except UserError as error:
            # Hydra turns a callback's exception into a warning and goes on to make the
            # directory: leave with the one line here (LLM_SCRATCH_TRACEBACK=1: the job refuses
            # the config again, with the traceback)
            sys.exit(report_user_error(error))


def _first_job(config: Any) -> Any:
    """``config`` (a sweep's) with every swept key at its first value, as the first job gets it;
    None when a config group is swept (``model=gpt-nano,gpt-mini``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from llm_scratch.compat import apply_overrides

    parser = OverridesParser.create()
    given = parser.parse_overrides(list(config.hydra.overrides.task))
    node = config.hydra.sweeper.get("params")
    params = OmegaConf.to_container(node, resolve=False) if node else {}
    swept = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    groups = set(config.hydra.runtime.get("choices") or {})
    first = []
    # the command line's plain overrides are in config already; the sweeper's params are not
    for override in [o for o in given if o.is_sweep_override()] + swept:
        if override.key_or_group in groups or override.package is not None:
            return None
        if override.is_sweep_override():
            value = next(iter(override.sweep_string_iterator()))
            first.append(f"{override.get_key_element()}={value}")
        else:
            first.append(override.input_line)
    cfg = config.copy()
    apply_overrides(cfg, first)
    return cfg
