"""Lightning's CSV logger with an atomic ``metrics.csv`` rewrite (configs/logger/csv.yaml).

Lightning 2.6's writer appends rows, but when a metric appears that the file has no column for
(``val/loss`` at the first validation, ``train/mfu`` ...) it rewrites ``metrics.csv`` in place:
opened with ``"w"`` (the file is empty from then on) and written again. A kill or a full disk at
that moment lost every row. Here the rewrite goes to a temporary file renamed over the old one,
so ``metrics.csv`` is always either the old rows or the old rows under the new header.
"""

from __future__ import annotations

import csv
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from llm_scratch.utils.io import atomic_open


class AtomicExperimentWriter(ExperimentWriter):
    def log_metrics(self, metrics_dict: dict[str, Any], step: int | None = None) -> None:
        # the module logs ``epoch`` as a metric, a float (train/module.py: _log_step): written
        # as the integer Lightning writes when it adds the epoch itself
        epoch = metrics_dict.get("epoch")
        if isinstance(epoch, float) and epoch.is_integer():
            metrics_dict = {**metrics_dict, "epoch": int(epoch)}
        super().log_metrics(metrics_dict, step)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        if "://" in str(self.metrics_file_path):  # remote storage: Lightning's own rewrite
            return super()._rewrite_with_new_header(fieldnames)
        with open(self.metrics_file_path, newline="") as file:
            rows = list(csv.DictReader(file))
        with atomic_open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


class CSVLogger(_CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger``, rewriting ``metrics.csv`` atomically."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AtomicExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = AtomicExperimentWriter(log_dir=self.log_dir)
        return self._experiment
