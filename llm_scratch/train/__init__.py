"""Training with Lightning: the job, the LightningModule, callbacks, checkpointing, optimizers and
schedules, loggers, the run directory, typed configs (one file each; see the README's Layout)."""

from llm_scratch.train.optim import OptimizerConfig, SchedulerConfig


def __getattr__(name: str):
    # The LightningModule is imported on first use: importing Lightning takes seconds, and the
    # entry points' --help and config checks (compose, config_store) must not pay for it.
    if name == "GPTLightningModule":
        from llm_scratch.train.module import GPTLightningModule

        return GPTLightningModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GPTLightningModule", "OptimizerConfig", "SchedulerConfig"]
