"""``summary.json``: the figures of one finished run, written by training, read by reports and
the sweep launcher. Plain JSON and torch: reading it loads no Lightning."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from llm_scratch.errors import UserError
from llm_scratch.utils.io import atomic_write_text

SUMMARY_FILE = "summary.json"


def read_summary(run_dir: str | Path) -> dict[str, Any]:
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


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> None:
    """Write ``summary`` as the run's ``summary.json`` (atomically: a reader never sees half)."""
    atomic_write_text(Path(run_dir) / SUMMARY_FILE, json.dumps(summary, indent=2))


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory of this process: allocated on a CUDA device, else the peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # kilobytes on Linux, bytes on macOS
    return (rss / 2**20 if sys.platform == "darwin" else rss / 2**10), "cpu_peak_rss"
