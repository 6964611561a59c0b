"""Score a checkpoint on multiple-choice tasks:
``python training/evaluate.py ckpt_path=<run dir or .ckpt> tasks=<file.jsonl>[,<file.jsonl>...]``.

Keys (configs/evaluate.yaml): ckpt_path, tasks (local JSON Lines files, HellaSwag's format or
{"context", "choices", "label"} lines), out (default <run dir>/eval.json), batch_size, limit (the
first N examples of each task), device. Prints each task's acc, acc_norm and acc_per_token with
standard errors and writes them as JSON.
"""

import sys

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from llm_scratch.compat import one_line_hydra_errors
from llm_scratch.errors import exit_on_user_error
from llm_scratch.eval.evaluate import EvaluateConfig, main, split_task_lists
from llm_scratch.train.compose import CONFIG_DIR

ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def evaluate(cfg: DictConfig) -> None:
    with exit_on_user_error():
        main(EvaluateConfig(**OmegaConf.to_container(cfg)))


if __name__ == "__main__":
    sys.argv = split_task_lists(sys.argv)
    with one_line_hydra_errors():  # a bad override: one "error:" line, exit status 2
        evaluate()
