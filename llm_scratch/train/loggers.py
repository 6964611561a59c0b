"""Loggers: Lightning's messages through Hydra's handlers, the configured loggers (W&B offline
when no API key is found), and closing them at the end of a job."""

from __future__ import annotations

import logging
import os
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
