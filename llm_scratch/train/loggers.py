"""Loggers: Lightning's messages through Hydra's handlers, the configured loggers (W&B offline
when no API key is found), and closing them at the end of a job."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def route_lightning_logs() -> None:
    """Send Lightning's messages through the root logger (Hydra's console and file handlers).

    Lightning adds its own stderr handler when it is imported before logging is configured;
    under Hydra that prints each message twice, or keeps it out of the run's log file.
    """
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


# Lightning's lines that say nothing about the run (checked by the start of the message): its
# advertisement for LitLogger, which accelerators exist (the config says which one is used), that
# it reads the training data early to count the schedule's steps, and that it leaves out its
# Rich model summary when the plain one is given (train/callbacks.py, build_callbacks, for
# output that is not a terminal).
_NOISE_PREFIXES = (
    "💡 Tip:",
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Loading `train_dataloader` to estimate number of stepping batches",
    "Trainer already configured with model summary callbacks",
)
# Lightning's warnings that are known noise here, by message and module (never all warnings):
_NOISE_WARNINGS = (
    # lightning 2.6 on torch 2.13: Lightning's own tree flattening, nothing the user can change
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        r"lightning\.pytorch\.utilities\._pytree",
    ),
    # a continued run writes into a directory of its own (as the README says): the earlier
    # run's best-k bookkeeping is meant to stay behind
    (r"The dirpath has changed from", r"lightning\.pytorch\.callbacks\.model_checkpoint"),
    # on any machine with SLURM installed (a login node): a hint for multi-node jobs, which the
    # SLURM launcher starts with srun itself (by message only: rank_zero_warn names its caller)
    (r"The `srun` command is available on your system but is not used", ""),
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_NOISE_PREFIXES)


def quiet_known_noise() -> None:
    """Silence the messages of Lightning that are known noise, precisely: by logger and message
    start, and warnings by message and module; every other message and warning stays."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    for message, module in _NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def build_loggers(cfg: DictConfig) -> list:
    """The loggers of ``cfg.logger``; W&B logs offline when it has no credentials."""
    nodes = [node for node in (cfg.get("logger") or {}).values() if node]
    uses_wandb = any("WandbLogger" in str(node.get("_target_", "")) for node in nodes)
    offline = uses_wandb and "WANDB_MODE" not in os.environ and not _wandb_has_credentials()
    if offline:
        # wandb would otherwise stop at an interactive login prompt
        log.info("No W&B API key found: logging offline (upload later with `wandb sync`).")
    # mode="offline" goes to wandb.init; not offline=True, with which Lightning's WandbLogger
    # sets os.environ["WANDB_MODE"], and that would outlive this run (later runs in the process)
    return [
        instantiate(node, mode="offline")
        if offline and "WandbLogger" in str(node.get("_target_", ""))
        else instantiate(node)
        for node in nodes
    ]


def finish_loggers(loggers: list) -> None:
    """Close what needs closing at the end of a job."""
    # In a multirun every job must close its W&B run, or the next job logs into it.
    for logger in loggers:
        if isinstance(logger, L.pytorch.loggers.WandbLogger):
            import wandb

            wandb.finish()
