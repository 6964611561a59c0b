"""Training with Lightning: the job, the LightningModule, callbacks, checkpointing, optimizers and
schedules, loggers, the run directory, typed configs (one file each; see the README's Layout)."""

from llm_scratch.train.module import GPTLightningModule
from llm_scratch.train.optim import OptimizerConfig, SchedulerConfig

__all__ = ["GPTLightningModule", "OptimizerConfig", "SchedulerConfig"]
