"""``summary.json``: the figures of one finished run that a sweep report tabulates."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from llm_scratch.errors import UserError
from llm_scratch.train.callbacks import ThroughputLogger
from llm_scratch.utils.io import atomic_write_text

SUMMARY_FILE = "summary.json"


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The ``summary.json`` of the run in ``run_dir``; empty when the run wrote none."""
    path = Path(run_dir) / SUMMARY_FILE
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"Cannot read the run summary {path}: {error}") from error
    if not isinstance(summary, dict):
        raise UserError(f"Cannot read the run summary {path}: not a JSON object")
    return summary


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory of this process: allocated on a CUDA device, else the peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # kilobytes on Linux, bytes on macOS
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "cpu_peak_rss"


def write_run_summary(
    output_dir: Path,
    trainer: L.Trainer,
    num_params: int,
    started: float,
    metrics: dict[str, float],
) -> dict[str, Any]:
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
    atomic_write_text(output_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
    return summary
