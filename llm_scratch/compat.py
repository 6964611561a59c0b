"""Every place we rely on private or undocumented behaviour of Lightning or Hydra, in one file.

Each shim says which upstream behaviour it works around and the versions it was written and
tested against (Lightning 2.6, Hydra 1.3). When upgrading either, read this file first: the
tests that exercise each shim are named with it. Nothing here imports Lightning (the shims take
the trainer they inspect); Hydra's public ``JobReturn`` is imported for the sweep launcher, its
internals only inside the function that patches them. (One more workaround, of documented
Hydra behaviour rather than its internals, stays with the launcher: the sweeper rewrites
``multirun.yaml`` before a continued sweep is checked, see ``MultirunYaml`` in
hydra_plugins/llm_scratch_launcher/continuation.py.)
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from collections.abc import Iterator
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

from llm_scratch.errors import (
    UserError,
    one_line,
    report_user_error,
    show_traceback,
    uncreatable_dir_error,
)


# ----------------------------------------------------------------------------- Lightning loops
def loggers_write_this_step(trainer: Any) -> bool:
    """Whether Lightning's loggers write this training step's metrics.

    Lightning 2.6 decides it in the private ``trainer._logger_connector.should_update_logs``
    (every ``log_every_n_steps``); logging a value on the other steps costs its bookkeeping for
    nothing (tests/test_bench.py::test_training_metrics_stay_logged_at_every_logging_step).
    Without the connector (another Lightning) every step logs.
    """
    connector = getattr(trainer, "_logger_connector", None)
    return connector is None or connector.should_update_logs or bool(trainer.fast_dev_run)


def stop_at_batch_end(trainer: Any) -> None:
    """Make Lightning stop training at the end of the current batch as after a SIGTERM: it raises
    ``SIGTERMException`` there, and SigtermCheckpoint saves ``last.ckpt`` first (Ctrl-C is
    handled so). Lightning 2.6's SIGTERM handler sets the private
    ``trainer._signal_connector.received_sigterm``, which the loops read after each batch.
    Tests: tests/test_run_dir.py::test_ctrl_c_saves_a_checkpoint_and_exits_130.
    """
    trainer._signal_connector.received_sigterm = True


def epoch_cut_short_by_max_steps(trainer: Any) -> bool:
    """Whether ``max_steps`` ended this epoch before its last batch (Lightning 2.6's
    ``fit_loop.epoch_loop.batch_progress.is_last_batch``, a loop internal)."""
    max_steps = trainer.max_steps
    at_max = max_steps is not None and max_steps >= 0 and trainer.global_step >= max_steps
    return at_max and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


def start_next_epoch_plainly(trainer: Any) -> None:
    """After resuming from a checkpoint saved after an epoch's last batch, start the next epoch
    as a plain one.

    Lightning 2.6 has closed that epoch but starts the next one as if resumed inside it
    (``fit_loop.restarted_mid_epoch``), without counting it ready or calling
    ``on_train_epoch_start``, and a checkpoint of that epoch then resumes wrongly. Uses the loop
    internal ``fit_loop.reset_restart_stage()``. Tests: tests/test_resume.py.
    """
    fit = trainer.fit_loop
    progress = fit.epoch_progress.current
    if fit.restarted_mid_epoch and progress.processed == progress.ready:
        fit.reset_restart_stage()


def reopen_epoch_stopped_by_max_steps(checkpoint: dict[str, Any], iteration_based: bool) -> bool:
    """Put a checkpoint's loop state back to the one Lightning resumes exactly, where it would not.

    Lightning (2.6) ends the epoch when ``max_steps`` is reached, whether or not the epoch is
    over: the epoch counts as finished (``current_epoch`` + 1) while the batch counter keeps the
    batches done. A run continued from that checkpoint with a larger ``max_steps`` then started
    the next epoch at that batch count, so the rest of the stopped epoch was never trained and the
    next one was cut short. And a checkpoint saved after an epoch's last batch (at validation or
    epoch end) resumes wrongly whenever ``max_steps`` is set (Lightning issue #19617): steps one
    off, the next epoch's windows skipped.

    Both are rewritten to the state Lightning saves just after that batch (the periodic
    ``last.ckpt``'s), from which it resumes exactly and which the data module's saved position
    matches. Called by the module's ``on_load_checkpoint``, before Lightning restores the loops;
    ``iteration_based``: the continued run sets ``max_steps``. Returns whether it changed the
    checkpoint.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    try:
        epochs = fit["epoch_progress"]
        batches = fit["epoch_loop.batch_progress"]
        loop_state = fit["epoch_loop.state_dict"]
        loop_state["_batches_that_stepped"]
    except KeyError:  # weights only, or another Lightning's layout: leave it to Lightning
        return False
    counts = ("ready", "started", "processed", "completed")
    epoch, batch = epochs["current"], batches["current"]
    if len({batch[c] for c in counts}) != 1 or batch["completed"] == 0:
        return False  # saved during a batch, or before the epoch's first one
    ready = epoch["ready"]
    if epoch["started"] != ready or epoch["processed"] not in (ready - 1, ready):
        return False
    # After the epoch-end hooks (not during validation), the batch loop counted one more batch.
    after_epoch_end = epoch["processed"] == ready
    if batches.get("is_last_batch"):
        if not iteration_based:
            return False  # Lightning resumes the finished epoch right without max_steps
    elif not after_epoch_end:
        return False  # mid-epoch, saved at validation: a state Lightning resumes
    for key in ("current", "total"):
        shift = epochs[key]["ready"] - 1 - epochs[key]["processed"]
        epochs[key]["processed"] += shift
        epochs[key]["completed"] = epochs[key]["processed"]
        batches[key]["completed"] -= 1  # "restarted on train batch end"
    if after_epoch_end:
        loop_state["_batches_that_stepped"] -= 1  # Lightning adds it back on that restart
    checkpoint["epoch"] = epoch["completed"]
    return True


# ----------------------------------------------------------------------------- Lightning strategies
def shard_data_parallel_over_all_devices(strategy: Any) -> None:
    """Make Lightning's ``ModelParallelStrategy`` build a device mesh that is data-parallel over
    every device of every node (FSDP2 alone, no tensor parallelism): trainer=fsdp.

    Lightning 2.4-2.6 read the mesh shape from the private ``_data_parallel_size`` and
    ``_tensor_parallel_size`` in ``setup_environment``; their public "auto" means data-parallel
    over nodes and tensor-parallel within each node, and integers must be given before the
    number of devices is known (``devices="auto"``). Call this just before
    ``ModelParallelStrategy.setup_environment``, when ``num_nodes`` and ``parallel_devices`` are
    set. Tests: tests/test_fsdp.py (the sharded run sees every batch once).
    """
    strategy._data_parallel_size = strategy.num_nodes * strategy.num_processes
    strategy._tensor_parallel_size = 1


# ----------------------------------------------------------------------------- Hydra's sweeps
class QuietJobReturn(JobReturn):
    """Hydra's ``JobReturn`` for a sweep job run in its own process, without Hydra's "Error
    executing job with overrides" line on top of the one ``error:`` line a failed job ends the
    sweep with (the line names the overrides).

    Hydra 1.3's ``JobReturn.return_value`` logs that line and re-raises the stored exception when
    the job failed; the sweeper reads it for every job. This raises the stored exception without
    logging it. Written against hydra-core 1.3.2 to 1.3.8; tests:
    tests/test_reliability.py::test_failed_sweep_job_is_one_line_and_its_output_is_kept.
    """

    @property
    def return_value(self) -> Any:
        if self.status == JobStatus.FAILED:
            raise self._return_value
        return super().return_value

    @return_value.setter
    def return_value(self, value: Any) -> None:
        self._return_value = value


# ----------------------------------------------------------------------------- Hydra's reporting
def _quote_hint(text: str) -> str | None:
    """Hydra 1.3's override grammar reads unquoted values of some characters only: a non-ASCII
    path (``data.path=/data/ünï/côde.txt``) fails with ``LexerNoViableAltException`` and the
    override, which the quoted value fixes. The message says so; None for any other."""
    if "LexerNoViableAltException:" not in text:
        return None
    override = text.split("LexerNoViableAltException:", 1)[1].strip().splitlines()[0].strip()
    key, sep, value = override.partition("=")
    if not sep or not value or value[0] in "'\"":
        return None
    return (
        f"Hydra cannot read the override {override} unquoted (its grammar takes only some "
        f"characters, not e.g. non-ASCII ones); quote the value: {key}='{value}' (in a shell: "
        f"\"{key}='{value}'\")."
    )


@contextlib.contextmanager
def one_line_hydra_errors() -> Iterator[None]:
    """Make Hydra report a bad override or config group (``model.pre_normm=1``, ``model=typo``), an
    output directory it cannot create (``hydra.run.dir=/proc/x``) and a :class:`UserError` from
    the sweep launcher as one ``error:`` line with exit status 2 (143 for a stopped sweep), like
    the package's own errors, instead of its multi-line report with exit status 1.
    ``HYDRA_FULL_ERROR=1`` or ``LLM_SCRATCH_TRACEBACK=1`` keep Hydra's full report. Any other
    exception is left to Hydra's own reporting.
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
            message = _quote_hint(text) or unknown_key_message(cause) or one_line(text)
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        except UserError as error:  # raised by the sweep launcher, outside train_or_exit
            sys.exit(report_user_error(error))
        except Exception as error:  # noqa: BLE001 - handed back to Hydra's report unchanged
            user_error = uncreatable_dir_error(error)
            full = os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")
            if user_error is not None and not full:
                sys.exit(report_user_error(user_error))
            caught = error

        def reraise():
            raise caught

        return original(reraise)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def unknown_key_message(cause: BaseException | None) -> str | None:
    """For an override of a key that does not exist (``model.pre_normm=true``): the closest known
    keys, instead of Hydra's advice to append the typo with ``+``; None for any other error.

    Hydra 1.3 raises ``Could not override 'model.pre_normm'`` from OmegaConf's
    ``ConfigAttributeError``, whose ``parent_node`` is the section the key was looked up in.
    """
    from omegaconf import DictConfig
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if not isinstance(cause, ConfigAttributeError | ConfigKeyError):
        return None
    parent, full_key = getattr(cause, "parent_node", None), getattr(cause, "full_key", None)
    if not isinstance(parent, DictConfig) or not full_key:
        return None
    section, _, name = str(full_key).rpartition(".")
    known = [str(k) for k in parent if not str(k).startswith("_") and k != "hydra"]
    if name in known:
        return None
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    prefix = f"{section}." if section else ""
    where = f"in {section}" if section else "at the top level"
    hint = f" Did you mean {' or '.join(prefix + c for c in close)}?" if close else ""
    return f"{full_key} is not a config key.{hint} The keys {where}: {', '.join(known)}."


# ----------------------------------------------------------------------------- Hydra's overrides
def apply_overrides(cfg: Any, overrides: list[str]) -> None:
    """Apply command-line ``overrides`` (``key=value``, ``+key=value``, ``~key``) to a composed
    config in place, as Hydra applies them when it composes: the same parser and the same
    merge, so a value arrives typed as it would from the command line. Raises Hydra's or
    OmegaConf's exception where Hydra would refuse the override. Config group overrides
    (``model=gpt2``) need a composition: use :func:`llm_scratch.train.compose.compose_config`.

    Hydra 1.3 applies them in the private ``ConfigLoaderImpl._apply_overrides_to_config``;
    used by tests/test_boundary.py to try thousands of values without composing each time.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides=overrides)
    ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
