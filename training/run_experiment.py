"""Train a GPT from scratch: ``python training/run_experiment.py [group=option] [key=value ...]``.

Examples:
    python training/run_experiment.py                            # the default: The Verdict, CPU-sized
    python training/run_experiment.py model.pre_norm=false       # one ablation switch
    python training/run_experiment.py -m model.pre_norm=true,false   # a sweep
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from llm_scratch.errors import one_line_hydra_errors
from llm_scratch.train.run import train_or_exit

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train_or_exit(cfg)
    # Returned for Hydra sweepers that optimise a value (e.g. Optuna).
    return metrics.get("val/loss")


if __name__ == "__main__":
    with one_line_hydra_errors():  # a bad override: one "error:" line, exit status 2
        main()
