"""Training throughput (tokens/s, MFU) through the real Lightning path, steady state.

``python -m llm_scratch.bench throughput [hydra overrides ...]`` composes the training config
(``configs/train.yaml``) exactly as ``training/run_experiment.py`` does, builds the same
``LMDataModule``, ``GPTLightningModule``, callbacks, loggers and ``Trainer``, and trains
``--warmup + --steps`` optimizer steps. Only the last ``--steps`` are timed, from the end of the
last warm-up step to the end of the last step, so everything a step costs (data loading, hooks,
logging, the optimizer) is in the figure and start-up and compilation are not.

What the benchmark changes in the config (each can be overridden back): no validation, no
sanity check, no model summary, and ``data.sampling=random`` with enough windows that the timed
steps fall in one epoch (an epoch end writes a checkpoint, which is not a per-step cost).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from llm_scratch.bench.common import machine_info, median, peak_flops, print_table, sync
from llm_scratch.train.compose import compose_config

BENCH_OVERRIDES = [
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "data.sampling=random",
]


def compose(overrides: list[str], output_dir: str | Path) -> DictConfig:
    """The ``train`` config with the benchmark's defaults, then ``overrides`` (later wins)."""
    return compose_config([*BENCH_OVERRIDES, *overrides], output_dir)


class StepTimer(L.Callback):
    """Wall clock and this process's CPU time at the end of every training batch (after a
    device sync)."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(trainer.strategy.root_device)
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())


def steady_tokens_per_sec(ends: list[float], warmup: int, tokens_per_step: int) -> float:
    """Tokens per second from the end of step ``warmup`` to the end of the last step."""
    timed = len(ends) - warmup
    if timed < 1:
        raise ValueError(f"{len(ends)} steps timed, need more than warmup={warmup}")
    return timed * tokens_per_step / (ends[-1] - ends[warmup - 1] if warmup else ends[-1])


@contextlib.contextmanager
def quiet():
    """Keep Lightning's start-up messages and the progress lines out of the benchmark's table."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric")
    levels = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def _prepare(cfg: DictConfig, steps: int, warmup: int) -> None:
    with open_dict(cfg):
        cfg.trainer.max_steps = steps + warmup
        if cfg.data.sampling == "random" and cfg.data.samples_per_epoch is None:
            cfg.data.samples_per_epoch = cfg.data.batch_size * (steps + warmup + 1)


def lightning_run(
    cfg: DictConfig, steps: int, warmup: int, extra_callbacks: list[L.Callback] | None = None
) -> dict[str, Any]:
    """Train through GPTLightningModule + LMDataModule + Trainer; steady-state tokens/s.
    ``extra_callbacks`` join the config's own (the profile benchmark's profiler)."""
    from hydra.utils import instantiate

    from llm_scratch.train.callbacks import build_callbacks
    from llm_scratch.train.loggers import build_loggers
    from llm_scratch.train.module import GPTLightningModule

    _prepare(cfg, steps, warmup)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    model_config = instantiate(cfg.model, vocab_size=datamodule.vocab_size)
    module = GPTLightningModule(
        model=asdict(model_config),
        optimizer=OmegaConf.to_container(cfg.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(cfg.scheduler, resolve=True),
        tokenizer=datamodule.tokenizer.to_dict(),
        compile=cfg.get("compile", False),
    )
    timer = StepTimer()
    with quiet():
        trainer = instantiate(
            cfg.trainer,
            callbacks=[*build_callbacks(cfg), timer, *(extra_callbacks or [])],
            logger=build_loggers(cfg),
        )
        trainer.fit(module, datamodule=datamodule)
    tokens_per_step = cfg.data.batch_size * cfg.data.context_length
    tokens_per_step *= cfg.trainer.get("accumulate_grad_batches", 1)
    return {
        "tokens_per_sec": steady_tokens_per_sec(timer.ends, warmup, tokens_per_step),
        # per second of the process's CPU time: on a CPU shared with other work, steadier than
        # the wall clock (what the process computed, not what it waited for)
        "cpu_tokens_per_sec": steady_tokens_per_sec(timer.cpu_ends, warmup, tokens_per_step),
        "step_times": [
            timer.ends[i] - timer.ends[i - 1] for i in range(max(warmup, 1), len(timer.ends))
        ],
        "flops_per_token": module.model.flops_per_token(),
        "params": module.model.num_params(),
        "device": str(trainer.strategy.root_device),
        "precision": str(trainer.precision),
    }


def run(
    overrides: list[str],
    variants: list[str] | None = None,
    steps: int = 20,
    warmup: int = 3,
    repeats: int = 1,
    show: bool = True,
) -> dict[str, Any]:
    """Steady-state tokens/s and MFU of the config ``overrides``, and of each variant (extra
    overrides, space-separated; ``""`` is the config itself), runs interleaved ``repeats`` times
    (variant order rotating), medians reported with the speed-up over the first variant."""
    variants = list(variants) if variants else [""]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    cfgs: dict[str, DictConfig] = {}
    with tempfile.TemporaryDirectory(prefix="llm_scratch_bench_") as tmp:
        for r in range(repeats):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for i, variant in enumerate(order):
                cfg = compose([*overrides, *variant.split()], Path(tmp) / f"run{r}_{i}")
                cfgs[variant] = cfg
                runs[variant].append(lightning_run(cfg, steps, warmup))
    rows = []
    peaks: dict[tuple[str, str], tuple[float, str]] = {}
    for variant in variants:
        first, cfg = runs[variant][0], cfgs[variant]
        device = torch.device(first["device"])
        key = (str(device), "bf16" if "bf16" in first["precision"] else "32")
        if key not in peaks:  # measured after the runs, not between them
            peaks[key] = peak_flops(device, first["precision"])
        peak, peak_source = peaks[key]
        tps = median([x["tokens_per_sec"] for x in runs[variant]])
        rows.append(
            {
                "variant": variant or "(config)",
                "overrides": [*overrides, *variant.split()],
                "model": OmegaConf.to_container(cfg.model, resolve=True),
                "batch_size": cfg.data.batch_size,
                "context_length": cfg.data.context_length,
                "precision": first["precision"],
                "compile": bool(cfg.get("compile", False)),
                "device": first["device"],
                "params": first["params"],
                "tokens_per_sec": tps,
                "tokens_per_sec_runs": [x["tokens_per_sec"] for x in runs[variant]],
                "step_ms_median": 1e3 * median([t for x in runs[variant] for t in x["step_times"]])
                if warmup
                else None,
                "flops_per_token": first["flops_per_token"],
                "peak_flops": peak,
                "peak_source": peak_source,
                "mfu": first["flops_per_token"] * tps / peak,
            }
        )
    first = [x["tokens_per_sec"] for x in runs[variants[0]]]
    for row, variant in zip(rows, variants, strict=True):
        row["speedup"] = row["tokens_per_sec"] / rows[0]["tokens_per_sec"]
        # each repeat's ratio to the first variant's run beside it (the same load), and their
        # median: steadier than the ratio of medians on a loaded machine
        ratios = [x["tokens_per_sec"] / f for x, f in zip(runs[variant], first, strict=True)]
        row["pair_ratios"] = ratios
        row["pair_ratio_median"] = median(ratios)
        cpu = [
            x["cpu_tokens_per_sec"] / f["cpu_tokens_per_sec"]
            for x, f in zip(runs[variant], runs[variants[0]], strict=True)
        ]
        row["cpu_tokens_per_sec"] = median([x["cpu_tokens_per_sec"] for x in runs[variant]])
        row["cpu_pair_ratios"] = cpu
        row["cpu_pair_ratio_median"] = median(cpu)
    result = {
        "benchmark": "throughput",
        "machine": machine_info(rows[0]["device"]),
        "overrides": overrides,
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "rows": rows,
    }
    if show:
        print_table(
            "Training throughput through Lightning, steady state: "
            + (" ".join(overrides) or "(default config)"),
            [
                "variant",
                "params",
                "precision",
                "tokens/s",
                "step ms",
                "MFU",
                "vs first",
                "paired",
                "paired, CPU time",
            ],
            [
                [
                    row["variant"],
                    f"{row['params'] / 1e6:.1f}M",
                    row["precision"],
                    row["tokens_per_sec"],
                    row["step_ms_median"],
                    f"{100 * row['mfu']:.1f}%",
                    f"{row['speedup']:.2f}x",
                    f"{row['pair_ratio_median']:.3f}x",
                    f"{row['cpu_pair_ratio_median']:.3f}x",
                ]
                for row in rows
            ],
            note="MFU peak: "
            + ", ".join(f"{p / 1e9:,.0f} GFLOP/s ({s})" for p, s in peaks.values())
            + f"; {repeats} interleaved runs of {steps} timed steps (paired: the median of "
            "each repeat's ratio to the first variant's run, by the wall clock and by the "
            "process's CPU time); load " + str(machine_info()["load_avg_1min"]),
        )
    return result
