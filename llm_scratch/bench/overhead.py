"""Lightning's overhead: the same model, batches and optimizer in a bare PyTorch loop and through
``GPTLightningModule`` + ``Trainer``, interleaved, and the ratio of their tokens/s.

The bare loop is what the Lightning path computes per step, written out: the same
``LMDataModule`` train loader, the same ``GPT`` (same seed), AdamW from ``build_adamw`` over
``optimizer_param_groups``, the LR schedule stepped each step, gradient clipping at
``trainer.gradient_clip_val``, autocast for ``bf16-mixed`` and ``torch.compile`` for
``compile=true``. The Lightning side runs the real config: its callbacks (checkpointing, the
throughput logger, the progress bar), the CSV logger and every metric the module logs.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from llm_scratch.bench.common import machine_info, median, print_table, sync
from llm_scratch.bench.throughput import _prepare, compose, lightning_run, steady_tokens_per_sec


def bare_run(cfg: DictConfig, steps: int, warmup: int) -> dict[str, Any]:
    """The training step of GPTLightningModule, in a plain loop; steady-state tokens/s."""
    from hydra.utils import instantiate
    from torch.optim.lr_scheduler import LambdaLR

    from llm_scratch.model import GPT
    from llm_scratch.train.optim import (
        OptimizerConfig,
        SchedulerConfig,
        build_adamw,
        lr_multiplier,
    )

    _prepare(cfg, steps, warmup)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    accelerator = cfg.trainer.get("accelerator", "auto")
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = GPT(instantiate(cfg.model, vocab_size=datamodule.vocab_size)).to(device)
    model.train()
    opt_cfg = OptimizerConfig(**OmegaConf.to_container(cfg.optimizer, resolve=True))
    sched_cfg = SchedulerConfig(**OmegaConf.to_container(cfg.scheduler, resolve=True))
    clip = cfg.trainer.get("gradient_clip_val")
    bf16 = "bf16" in str(cfg.trainer.precision)
    # as GPTLightningModule.configure_optimizers: Lightning refuses fused AdamW when it clips
    # gradients under mixed precision, so the bare loop must not use it there either
    clips_mixed = "mixed" in str(cfg.trainer.precision) and bool(clip)
    groups = model.optimizer_param_groups(opt_cfg.weight_decay)
    optimizer = build_adamw(groups, opt_cfg, device, clips_mixed)
    total = sched_cfg.total_steps or steps + warmup
    scheduler = LambdaLR(optimizer, lambda step: lr_multiplier(step, sched_cfg, total, opt_cfg.lr))
    forward = torch.compile(model) if cfg.get("compile", False) else model
    ends: list[float] = []
    loader = datamodule.train_dataloader()
    datamodule.train_sampler.set_epoch(0)
    for step, (x, y) in enumerate(loader):
        if step == steps + warmup:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, loss = forward(x, y)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        sync(device)
        ends.append(time.perf_counter())
    if len(ends) < steps + warmup:
        raise RuntimeError(f"the loader gave only {len(ends)} batches")
    tokens_per_step = cfg.data.batch_size * cfg.data.context_length
    return {
        "tokens_per_sec": steady_tokens_per_sec(ends, warmup, tokens_per_step),
        "final_loss": loss.item(),
    }


def run(
    overrides: list[str],
    steps: int = 20,
    warmup: int = 3,
    repeats: int = 3,
    show: bool = True,
) -> dict[str, Any]:
    """``repeats`` pairs of runs, the order alternating (A B, B A, ...); medians and ratio."""
    lightning, bare, pair_ratios = [], [], []
    with tempfile.TemporaryDirectory(prefix="llm_scratch_bench_") as tmp:
        for r in range(repeats):
            order = ("lightning", "bare") if r % 2 == 0 else ("bare", "lightning")
            pair = {}
            for which in order:
                cfg = compose(overrides, Path(tmp) / f"{which}{r}")
                if cfg.trainer.get("accumulate_grad_batches", 1) != 1:
                    raise ValueError("the overhead benchmark compares one batch per step")
                fn = lightning_run if which == "lightning" else bare_run
                pair[which] = fn(cfg, steps, warmup)["tokens_per_sec"]
            lightning.append(pair["lightning"])
            bare.append(pair["bare"])
            pair_ratios.append(pair["lightning"] / pair["bare"])
    result = {
        "benchmark": "overhead",
        "machine": machine_info(),
        "overrides": overrides,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "batch_size": cfg.data.batch_size,
        "context_length": cfg.data.context_length,
        "bare_tokens_per_sec": median(bare),
        "lightning_tokens_per_sec": median(lightning),
        "bare_runs": bare,
        "lightning_runs": lightning,
        "ratio": median(pair_ratios),
        "ratio_runs": pair_ratios,
        "step_overhead_ms": 1e3
        * cfg.data.batch_size
        * cfg.data.context_length
        * (1 / median(lightning) - 1 / median(bare)),
    }
    assert all(math.isfinite(v) and v > 0 for v in bare + lightning)
    if show:
        print_table(
            "Lightning overhead (same model, batches, optimizer; medians of interleaved runs)",
            ["config", "bare tokens/s", "Lightning tokens/s", "ratio", "overhead ms/step"],
            [
                [
                    " ".join(overrides) or "(defaults)",
                    result["bare_tokens_per_sec"],
                    result["lightning_tokens_per_sec"],
                    f"{result['ratio']:.3f}x",
                    f"{result['step_overhead_ms']:.1f}",
                ]
            ],
            note=f"{repeats} pairs of {steps} timed steps; load {machine_info()['load_avg_1min']}",
        )
    return result
