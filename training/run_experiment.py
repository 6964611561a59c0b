"""Train a GPT from scratch: ``python training/run_experiment.py [group=option] [key=value ...]``.

Examples:
    python training/run_experiment.py                            # the default: The Verdict, CPU-sized
    python training/run_experiment.py model.pre_norm=false       # one ablation switch
    python training/run_experiment.py -m model.pre_norm=true,false   # a sweep
"""

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from llm_scratch.compat import one_line_hydra_errors
from llm_scratch.sweep_env import SWEEP_ID_ENV
from llm_scratch.train.compose import CONFIG_DIR, expand_argv
from llm_scratch.train.config_store import register_configs

register_configs()  # the typed schemas and generated options, before Hydra composes

log = logging.getLogger(__name__)


def warn_if_sweep_without_multirun() -> None:
    """An experiment or ablation that defines a sweep, started without ``-m``, trains one job
    with the base values: say so, and how to run the sweep."""
    hydra_cfg = HydraConfig.get()
    params = hydra_cfg.sweeper.get("params") or {}
    # the sweep launcher's jobs are single runs too; it sets SWEEP_ID_ENV for them
    if hydra_cfg.mode != RunMode.RUN or not params or os.environ.get(SWEEP_ID_ENV):
        return
    given = " ".join(hydra_cfg.overrides.task)
    log.warning(
        "This config defines a sweep over %s, but without -m only one run with the base values "
        "trains; to run the sweep: python training/run_experiment.py -m %s",
        ", ".join(params),
        given,
    )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    # imported here, not at the top: --help and Hydra's own errors need no Lightning (seconds)
    from llm_scratch.train.job import train_or_exit

    if cfg.get("ckpt_path") is None:  # a sweep's job continued on its own is one run
        warn_if_sweep_without_multirun()
    metrics = train_or_exit(cfg)
    # Returned for Hydra sweepers that optimise a value (e.g. Optuna).
    return metrics.get("val/loss")


if __name__ == "__main__":
    # ckpt_path=<run>: that run's own overrides first, the ones given now on top
    sys.argv = expand_argv(sys.argv)
    with one_line_hydra_errors():  # a bad override: one "error:" line, exit status 2
        main()
