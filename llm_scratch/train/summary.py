"""The run's ``summary.json`` from a finished Trainer (the file's format: llm_scratch/summary.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L

from llm_scratch.summary import peak_memory_mb, write_summary
from llm_scratch.train.callbacks import ThroughputLogger


def write_run_summary(
    output_dir: Path,
    trainer: L.Trainer,
    num_params: int,
    started: float,
    metrics: dict[str, float],
    continued_from: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write and return the run's summary.json; ``continued_from`` (a run continued in a new
    directory): the checkpoint it started from and that checkpoint's global_step."""
    throughput = next((c for c in trainer.callbacks if isinstance(c, ThroughputLogger)), None)
    memory, memory_kind = peak_memory_mb(trainer.strategy.root_device)
    summary = {
        "metrics": metrics,
        "num_params": num_params,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "tokens_per_sec": throughput.average_tokens_per_sec if throughput else None,
        "peak_memory_mb": memory,
        "peak_memory_kind": memory_kind,
        "wall_time_s": time.time() - started,
        "started": started,
        "finished": time.time(),
        "world_size": trainer.world_size,
        "precision": str(trainer.precision),
    }
    if continued_from is not None:
        summary["continued_from"] = continued_from
    # a prepared dataset (data=shards): its folder and the fingerprint of its index
    dataset = getattr(trainer.datamodule, "dataset_info", None)
    if dataset is not None:
        summary["dataset"] = dataset
    write_summary(output_dir, summary)
    return summary
