"""The training step at nanoGPT's CPU config, ours against nanoGPT's, alternated in one process.

Timing the two trainers from the command line, one invocation after the other, gives ratios
that swing from round to round on a machine whose speed drifts by a third within minutes. This
times only what a step computes (forward, backward, gradient clipping at 1.0, the optimizer
step, zeroing the gradients) for both models, in short blocks that alternate (ours, theirs, theirs, ours, ...) in one process, on the same batches, so the
drift cancels in each pair's ratio. First it checks that the two compute the same thing: ours
loads nanoGPT's initial weights, and both train 3 steps on the same batches; the largest
difference between their losses is printed (rounding: nanoGPT's AdamW is the per-parameter
loop, ours the fused kernel). Each side is built as its trainer builds it:

- nanoGPT: its ``model.py`` (imported from ``--peer``, a clone of nanoGPT; nothing
  of it is part of this package), ``GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64,
  bias=False, dropout=0.0, vocab_size=65)``, and its own ``configure_optimizers`` (weight decay
  0.1, lr 1e-3, betas 0.9/0.99; on a CPU it does not use the fused AdamW).
- ours: ``experiment=nanogpt_cpu`` (the same model: no biases, exact GELU, tied head), ``GPT``
  and ``build_adamw`` as ``GPTLightningModule`` uses them. What Lightning adds per step is
  measured by ``python -m llm_scratch.bench overhead experiment=nanogpt_cpu``.

Both run in this process, so both get its allocator settings (``retain_freed_memory``, which
our trainer sets: the comparison leaves that advantage out). ``--compile`` compiles both
models' forward as both trainers do (``torch.compile(model)``).

    python benchmarks/vs_nanogpt_step.py --peer <nanoGPT clone> --threads 1

Prints each side's median ms per step and the median of the pairs' ratios with their range.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from llm_scratch.bench.common import machine_info
from llm_scratch.model import GPT
from llm_scratch.train.compose import compose_config
from llm_scratch.train.optim import OptimizerConfig, build_adamw
from llm_scratch.utils.allocator import retain_freed_memory

VOCAB, BATCH, BLOCK, CLIP = 65, 12, 64, 1.0


def nanogpt_side(peer: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    sys.path.insert(0, str(peer))
    from model import GPT as NanoGPT  # nanoGPT's model.py
    from model import GPTConfig as NanoConfig

    model = NanoGPT(
        NanoConfig(
            n_layer=4,
            n_head=4,
            n_embd=128,
            block_size=BLOCK,
            bias=False,
            dropout=0.0,
            vocab_size=VOCAB,
        )
    )
    return model, model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")


def our_side() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(["experiment=nanogpt_cpu"], tmp)
    model = GPT(instantiate(cfg.model, vocab_size=VOCAB))
    opt_cfg = OptimizerConfig(**OmegaConf.to_container(cfg.optimizer, resolve=True))
    groups = model.optimizer_param_groups(opt_cfg.weight_decay)
    return model, build_adamw(groups, opt_cfg, torch.device("cpu"))


def train_step(forward, model, optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One step as both trainers take it at this config; the loss before the update."""
    _, loss = forward(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def timed_steps(
    forward, model, optimizer, batches: list[tuple[torch.Tensor, ...]], steps: int
) -> float:
    """Seconds per step over ``steps`` training steps."""
    start = time.perf_counter()
    for i in range(steps):
        train_step(forward, model, optimizer, *batches[i % len(batches)])
    return (time.perf_counter() - start) / steps


def same_math(sides: dict, forwards: dict, batches: list, steps: int = 3) -> float:
    """The largest difference between the two sides' losses over ``steps`` training steps from
    the same weights (ours loads nanoGPT's: the parameter names are the same)."""
    sides["ours"][0].load_state_dict(sides["nanoGPT"][0].state_dict())
    worst = 0.0
    for x, y in batches[:steps]:
        losses = [train_step(forwards[n], *sides[n], x, y).item() for n in ("ours", "nanoGPT")]
        worst = max(worst, abs(losses[0] - losses[1]))
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer", type=Path, required=True, help="nanoGPT's files (its model.py)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--pairs", type=int, default=20, help="timed pairs of blocks")
    p.add_argument("--steps", type=int, default=10, help="steps per block")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps of each side first")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--out", type=Path, help="write the figures as JSON too")
    args = p.parse_args(argv)
    if not (args.peer / "model.py").is_file():
        print(
            f"error: no model.py in {args.peer}; pass nanoGPT's directory as --peer",
            file=sys.stderr,
        )
        return 2
    if min(args.pairs, args.steps) < 1 or args.warmup < 0 or (args.threads or 1) < 1:
        print(
            "error: --pairs, --steps and --threads must be at least 1, --warmup 0 or more",
            file=sys.stderr,
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()
    torch.manual_seed(1)
    sides = {"ours": our_side(), "nanoGPT": nanogpt_side(args.peer)}
    forwards = {n: torch.compile(m) if args.compile else m for n, (m, _) in sides.items()}
    # contiguous inputs and targets, as both trainers' loaders give them
    windows = [torch.randint(0, VOCAB, (BATCH, BLOCK + 1)) for _ in range(16)]
    batches = [(w[:, :-1].contiguous(), w[:, 1:].contiguous()) for w in windows]
    for model, _ in sides.values():
        model.train()
    loss_diff = same_math(sides, forwards, batches)
    for name, (model, optimizer) in sides.items():
        timed_steps(forwards[name], model, optimizer, batches, args.warmup)
    per_step: dict[str, list[float]] = {n: [] for n in sides}
    for pair in range(args.pairs):
        order = ("ours", "nanoGPT") if pair % 2 == 0 else ("nanoGPT", "ours")
        for name in order:
            model, optimizer = sides[name]
            per_step[name].append(
                timed_steps(forwards[name], model, optimizer, batches, args.steps)
            )
    ratios = [ng / ours for ng, ours in zip(per_step["nanoGPT"], per_step["ours"], strict=True)]
    result = {
        "benchmark": "vs_nanogpt_step",
        "machine": machine_info(),
        "threads": torch.get_num_threads(),
        "compile": args.compile,
        "same_weights_max_loss_diff": loss_diff,
        "pairs": args.pairs,
        "steps_per_block": args.steps,
        "ms_per_step": {n: [1e3 * s for s in v] for n, v in per_step.items()},
        "ratio_median": statistics.median(ratios),
        "ratio_runs": ratios,
    }
    ms = {n: 1e3 * statistics.median(v) for n, v in per_step.items()}
    print(
        f"median ms/step: nanoGPT {ms['nanoGPT']:.1f}, ours {ms['ours']:.1f} "
        f"({torch.get_num_threads()} threads, compile={args.compile}, {args.pairs} pairs of "
        f"{args.steps}-step blocks)"
    )
    print(f"from the same weights, 3 steps: the losses differ by at most {loss_diff:.1e}")
    print(
        f"ours runs at {result['ratio_median']:.3f}x nanoGPT's speed (median of the pairs; "
        f"range {min(ratios):.3f}x to {max(ratios):.3f}x)"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
