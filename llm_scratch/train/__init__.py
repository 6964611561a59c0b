"""Training with Lightning: the LightningModule, optimizer and schedules, callbacks, the job."""

from llm_scratch.train.module import GPTLightningModule
from llm_scratch.train.optim import OptimizerConfig, SchedulerConfig

__all__ = ["GPTLightningModule", "OptimizerConfig", "SchedulerConfig"]
