"""Training with Lightning: the job, the LightningModule, callbacks, checkpointing, optimizers and
schedules, loggers, the run directory, typed configs (one file each; see the README's Layout)."""

from importlib import import_module

# Imported on first use: Lightning (the module) and torch (the optimizer) take seconds, and the
# entry points' --help, config checks and the sweep launcher (which Hydra imports at every start)
# use only this package's light modules (compose, config_store, commands).
_LAZY = {
    "GPTLightningModule": "llm_scratch.train.module",
    "OptimizerConfig": "llm_scratch.train.optim",
    "SchedulerConfig": "llm_scratch.train.optim",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GPTLightningModule", "OptimizerConfig", "SchedulerConfig"]
