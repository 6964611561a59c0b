"""Where a training step's time goes: torch.profiler over steady-state steps of the real path.

``python -m llm_scratch.bench profile [hydra overrides ...]`` trains exactly as the
``throughput`` benchmark does (the same composed config, module, callbacks and Trainer) and
records ``--steps`` optimizer steps after ``--warmup`` with ``torch.profiler``: each operator's
own time per step (``self`` time: without the operators it calls) and its share of all of it,
the most expensive ``--top`` first. The profiler slows every operator a little, so the step
times here are a little higher than ``throughput``'s; the shares are what it is for.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.profiler import ProfilerActivity

from llm_scratch.bench.common import machine_info, print_table
from llm_scratch.bench.throughput import compose, lightning_run


class StepProfiler(L.Callback):
    """torch.profiler from the start of optimizer step ``warmup`` to the end of the last one."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.profiler: torch.profiler.profile | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.profiler is None:
            activities = [ProfilerActivity.CPU]
            if trainer.strategy.root_device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.profiler is not None and trainer.global_step == self.warmup + self.steps:
            self.profiler.__exit__(None, None, None)


def operator_rows(profiler: torch.profiler.profile, steps: int, top: int) -> list[dict[str, Any]]:
    """The ``top`` operators by own (self) CPU time: ms per step, share, calls per step."""
    events = [e for e in profiler.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {
            "operator": e.key,
            "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / steps,
        }
        for e in events[:top]
    ]


def run(
    overrides: list[str], steps: int = 10, warmup: int = 5, top: int = 15, show: bool = True
) -> dict[str, Any]:
    """Profile ``steps`` steady-state training steps of the config ``overrides``."""
    profiler = StepProfiler(warmup, steps)
    with tempfile.TemporaryDirectory(prefix="llm_scratch_bench_") as tmp:
        cfg = compose(overrides, Path(tmp) / "run")
        timed = lightning_run(cfg, steps, warmup, extra_callbacks=[profiler])
    if profiler.profiler is None:
        raise ValueError(f"training stopped before step {warmup}: nothing was profiled")
    rows = operator_rows(profiler.profiler, steps, top)
    result = {
        "benchmark": "profile",
        "machine": machine_info(timed["device"]),
        "overrides": overrides,
        "steps": steps,
        "warmup": warmup,
        "precision": timed["precision"],
        "threads": torch.get_num_threads(),
        "rows": rows,
    }
    if show:
        print_table(
            "Where a training step's time goes (torch.profiler, own time per operator): "
            + (" ".join(overrides) or "(default config)"),
            ["operator", "ms per step", "share", "calls per step"],
            [
                [
                    r["operator"],
                    r["self_ms_per_step"],
                    f"{100 * r['share']:.1f}%",
                    r["calls_per_step"],
                ]
                for r in rows
            ],
            note=f"{steps} steps after {warmup}, {torch.get_num_threads()} threads, "
            f"{timed['precision']}; the shares are of all operators' own time",
        )
    return result
