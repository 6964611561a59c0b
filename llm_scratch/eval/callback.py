"""Task accuracy during training: ``callbacks=eval`` scores multiple-choice tasks every N
validations, on a fixed subset of their examples, and logs it like the loss."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L

from llm_scratch.errors import UserError
from llm_scratch.eval.scorer import DEFAULT_BATCH_SIZE, encode_task, evaluate_task
from llm_scratch.eval.tasks import read_tasks

log = logging.getLogger(__name__)


class TaskEvaluator(L.Callback):
    """After every ``every_n_validations``-th validation, the accuracy on the first ``limit``
    examples of each task file (the same examples each time), logged as
    ``eval/<task>/acc``, ``eval/<task>/acc_norm`` and ``eval/<task>/acc_per_token``: in
    metrics.csv, the loggers, the progress lines and summary.json (the last values).

    The task files are read when the callback is built, so a bad file stops the run before it
    trains (and so does giving none). Every process scores the subset (a sharded model needs them all), and they log the
    same values.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        every_n_validations: int = 1,
        limit: int | None = 200,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if every_n_validations < 1:
            raise UserError(
                f"callbacks.task_eval.every_n_validations={every_n_validations}: use 1 (every "
                "validation) or more."
            )
        if batch_size < 1:
            raise UserError(f"callbacks.task_eval.batch_size={batch_size}: use 1 or more.")
        # read now, so a bad file stops the run before its data is prepared; none at all is
        # refused when training starts (setup), so the config instantiates as it stands
        self.tasks = read_tasks(list(tasks), limit) if tasks else []
        self.every_n_validations = every_n_validations
        self.batch_size = batch_size
        self.validations = 0  # validations seen (sanity checks not counted), kept on resume
        self._encoded: list | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.tasks:
            raise UserError(
                "callbacks=eval scores task files during training: name them with "
                "'callbacks.task_eval.tasks=[<file.jsonl>,...]'."
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        if self.validations % self.every_n_validations:
            return
        tokenizer = trainer.datamodule.tokenizer
        if self._encoded is None:  # the data module's tokenizer exists once the data is set up
            window = pl_module.model.config.context_length
            self._encoded = [encode_task(task, tokenizer, window) for task in self.tasks]
        metrics = {}
        for task, pairs in zip(self.tasks, self._encoded, strict=True):
            result = evaluate_task(pl_module.model, tokenizer, task, self.batch_size, pairs)
            for key in ("acc", "acc_norm", "acc_per_token"):
                metrics[f"eval/{task.name}/{key}"] = getattr(result, key)
            log.info("tasks at step %d: %s", trainer.global_step, _shown(task.name, result))
        pl_module.log_dict(metrics, on_step=False, on_epoch=True)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = state_dict.get("validations", 0)


def _shown(name: str, result: Any) -> str:
    return f"{name} acc {result.acc:.4f} acc_norm {result.acc_norm:.4f} (n={result.n})"
