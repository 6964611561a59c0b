"""The code behind ``training/evaluate.py``: a checkpoint's accuracy on multiple-choice tasks,
printed and written as JSON (``{"tasks": {<name>: {"acc", "acc_norm", ..., "n"}}}``)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_scratch.checkpoint import load_model, resolve_checkpoint
from llm_scratch.errors import UserError
from llm_scratch.eval.scorer import DEFAULT_BATCH_SIZE, TaskResult, encode_task, evaluate_task
from llm_scratch.eval.tasks import read_tasks
from llm_scratch.sample import resolve_device
from llm_scratch.utils.io import atomic_write_text


@dataclass
class EvaluateConfig:
    """configs/evaluate.yaml's keys and types (Hydra checks overrides against them)."""

    ckpt_path: str = "???"
    # task files (JSON Lines): tasks=a.jsonl,b.jsonl or tasks=[a.jsonl,b.jsonl]
    tasks: list[str] = field(default_factory=list)
    # where the JSON goes; null: <run dir>/eval.json
    out: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    # the first N examples of each task; null: all
    limit: int | None = None
    device: str = "auto"


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint file belongs to (``<run>/checkpoints/x.ckpt``), or the
    file's folder for a checkpoint kept elsewhere."""
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def evaluate(cfg: EvaluateConfig) -> tuple[dict[str, Any], Path]:
    """Score ``cfg.tasks`` with ``cfg.ckpt_path``'s model; return the results and where to write
    them. Every task file is read and checked before the model is loaded."""
    if cfg.ckpt_path in ("???", "", None):
        raise UserError("ckpt_path is required: ckpt_path=<run dir or .ckpt file>.")
    if cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size}: score at least 1 sequence at a time.")
    tasks = read_tasks(list(cfg.tasks), cfg.limit)
    device = resolve_device(cfg.device)
    log_dir = os.environ.get("LLM_SCRATCH_LOG_DIR", "outputs")
    path = resolve_checkpoint(cfg.ckpt_path, "sample", log_dir)
    out = Path(cfg.out) if cfg.out else run_dir_of(path) / "eval.json"
    if out.is_dir():
        raise UserError(f"out={out} is a directory: name the JSON file to write, e.g. {out}/x.json")
    try:  # before the work: a place that cannot be written to fails now
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"Cannot create {out.parent} for out= ({error.strerror}).") from error
    model, tokenizer, checkpoint = load_model(path, device=device)
    # every task tokenized before any is scored: a character the tokenizer lacks, or a choice
    # longer than the model's context, fails now
    encoded = [encode_task(task, tokenizer, model.config.context_length) for task in tasks]
    results: list[TaskResult] = []
    for task, pairs in zip(tasks, encoded, strict=True):
        results.append(evaluate_task(model, tokenizer, task, cfg.batch_size, pairs))
        print(format_result(results[-1]), flush=True)
    record = {
        "checkpoint": str(path),
        "global_step": checkpoint.get("global_step"),
        "tasks": {r.name: r.to_dict() for r in results},
    }
    return record, out


def _pm(value: float, stderr: float | None) -> str:
    return f"{value:.4f} ± {stderr:.4f}" if stderr is not None else f"{value:.4f}"


def format_result(result: TaskResult) -> str:
    """One line per task: its accuracies with their standard errors."""
    cut = f", {result.truncated} truncated" if result.truncated else ""
    return (
        f"{result.name}: n={result.n}{cut}  acc {_pm(result.acc, result.acc_stderr)}  "
        f"acc_norm {_pm(result.acc_norm, result.acc_norm_stderr)}  "
        f"acc_per_token {_pm(result.acc_per_token, result.acc_per_token_stderr)}"
    )


def write_results(record: dict[str, Any], out: Path) -> None:
    """Write the JSON whole or not at all (an earlier file is replaced only by a complete one)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    except OSError as error:
        raise UserError(
            f"Cannot write out={out} ({error.strerror}): choose a writable path."
        ) from error


def main(cfg: EvaluateConfig) -> None:
    record, out = evaluate(cfg)
    write_results(record, out)
    print(f"wrote {out}", file=sys.stderr)


def split_task_lists(argv: list[str]) -> list[str]:
    """``tasks=a.jsonl,b.jsonl`` as the list ``tasks=['a.jsonl','b.jsonl']``: Hydra reads an
    unbracketed comma as a sweep (and refuses it outside ``-m``). Quoted, so any path goes."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key == "tasks" and sep and value and not value.startswith(("[", "'", '"')):
            quoted = ",".join(
                "'" + p.replace("\\", "\\\\").replace("'", "\\'") + "'" for p in value.split(",")
            )
            arg = f"tasks=[{quoted}]"
        out.append(arg)
    return out
