"""``python -m llm_scratch.bench <name> [options] [hydra overrides]``: run one benchmark (or all)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from llm_scratch.bench import BENCHMARKS
from llm_scratch.bench.common import RESULTS_DIR, resolve_device, write_json
from llm_scratch.errors import UserError, report_user_error
from llm_scratch.utils.allocator import retain_freed_memory

# the probes as the ablations switch them on (every 10 optimizer steps)
PROBES_ON = "+probes@callbacks.training_probes=training"


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llm_scratch.bench",
        description="Benchmarks of llm_scratch: a table on stdout, the figures as JSON.",
    )
    sub = p.add_subparsers(dest="name", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        s = sub.add_parser(name, help=help)
        s.add_argument("--out", help=f"JSON file (default {RESULTS_DIR}/{name}.json)")
        s.add_argument("--no-save", action="store_true", help="print only, write no JSON")
        s.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
        return s

    for name in ("throughput", "overhead"):
        s = add(
            name,
            "training tokens/s and MFU through Lightning"
            if name == "throughput"
            else "bare PyTorch loop vs LightningModule + Trainer, same model and batches",
        )
        s.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=gpt-mini")
        s.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
        s.add_argument("--warmup", type=int, default=3, help="untimed steps first")
        s.add_argument("--repeats", type=int, default=1 if name == "throughput" else 3)
        if name == "throughput":
            s.add_argument(
                "--probes",
                action="store_true",
                help="the training-health probes' cost: the config without them and with "
                f"them ({PROBES_ON}) as the two variants, interleaved",
            )
            s.add_argument(
                "--variants",
                nargs="+",
                metavar="OVERRIDES",
                help='extra overrides per variant, compared interleaved: "" "compile=true" '
                '"trainer.precision=bf16-mixed"',
            )

    s = add("profile", "where a training step's time goes: torch.profiler, per operator")
    s.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=nanogpt_cpu")
    s.add_argument("--steps", type=int, default=10, help="profiled optimizer steps")
    s.add_argument("--warmup", type=int, default=5, help="unprofiled steps first")
    s.add_argument("--top", type=int, default=15, help="how many operators to list")

    s = add("attention", "loop vs fused attention: forward + backward time, peak memory")
    s.add_argument("--contexts", type=_ints, default=(64, 128, 256, 512, 1024))
    s.add_argument("--heads", type=_ints, default=(2, 4, 8))
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--n-embd", type=int, default=256)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--no-memory", action="store_true", help="skip the peak-memory cases")
    s.add_argument("--device", default="auto")

    s = add("generation", "tokens/s with and without the KV cache")
    s.add_argument("--model", default="gpt-micro", help="a GPTConfig preset")
    s.add_argument("--vocab-size", type=int, default=50257)
    s.add_argument("--new-tokens", type=int, default=500)
    s.add_argument("--prompt-len", type=int, default=16)
    s.add_argument("--batches", type=_ints, default=(1, 8))
    s.add_argument("--past-context", type=int, default=128, help="0: skip that regime")
    s.add_argument(
        "--context", type=int, help="the within-context model's context (default: prompt + new)"
    )
    s.add_argument(
        "--hf", action="store_true", help="also Hugging Face's generate with the same weights"
    )
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--device", default="auto")

    s = add("data", "time and memory to build the datasets vs corpus size and stride")
    s.add_argument("--scales", type=_ints, default=(1, 4, 16), help="Tiny Shakespeare copies")
    s.add_argument("--tokenizer", default="gpt2")
    s.add_argument("--context", type=int, default=256)
    s.add_argument("--batch", type=int, default=8)
    s.add_argument("--batches", type=int, default=200, help="batches timed from the loader")

    s = add("prepare", "preparing a JSONL corpus vs nanoGPT's; training start-up from shards")
    s.add_argument("--jsonl", required=True, help="a JSON Lines file with a text field")
    s.add_argument("--big-jsonl", help="a larger one (ours alone: throughput and peak RSS)")
    s.add_argument("--workers", type=int, default=2, help="processes, for both")
    s.add_argument("--repeats", type=int, default=1, help="alternated runs of each, best kept")
    s.add_argument("--workdir", help="where the shards go meanwhile (default: the temp folder)")
    s.add_argument("--no-training", action="store_true", help="skip the training start-up")
    s.add_argument("--model", default="gpt-nano", help="the model of the start-up runs")

    s = add("sweep", "time to a verdict: where each job of real sweeps spends its wall time")
    s.add_argument("overrides", nargs="*", help="Hydra overrides added to every job")
    s.add_argument("--jobs", type=int, default=4, help="gpt-nano jobs (0: none)")
    s.add_argument("--steps", type=int, default=20, help="steps of each gpt-nano job")
    s.add_argument("--verdict-cpu", type=int, default=0, help="experiment=verdict_cpu jobs")
    s.add_argument("--book", action="store_true", help="one 124M experiment=verdict_book job")
    s.add_argument("--workdir", help="where the sweeps run (default: the temp folder)")
    s.add_argument(
        "--save-model",
        metavar="PRESET",
        help="also time saving this model's checkpoint against writing its bytes (e.g. gpt2)",
    )
    s.add_argument(
        "--before",
        metavar="DIR",
        help="a checkout of earlier code (git worktree add): run each sweep there too, and time "
        "start-up in both",
    )
    s.add_argument("--startup-rounds", type=int, default=3, help="alternated start-up rounds")

    s = add("all", "every benchmark with its defaults (several minutes on a CPU)")
    s.add_argument("overrides", nargs="*", help="Hydra overrides for throughput and overhead")
    return p


def run_one(name: str, args: argparse.Namespace) -> dict:
    if name == "throughput":
        from llm_scratch.bench import throughput

        variants = getattr(args, "variants", None)
        if getattr(args, "probes", False):
            if variants:
                raise UserError("--probes sets the variants itself: give --probes or --variants")
            variants = ["", PROBES_ON]
        return throughput.run(args.overrides, variants, args.steps, args.warmup, args.repeats)
    if name == "overhead":
        from llm_scratch.bench import overhead

        return overhead.run(args.overrides, args.steps, args.warmup, args.repeats)
    if name == "profile":
        from llm_scratch.bench import profile

        return profile.run(args.overrides, args.steps, args.warmup, args.top)
    if name == "attention":
        from llm_scratch.bench import attention

        return attention.run(
            args.contexts,
            args.heads,
            args.batch,
            args.n_embd,
            args.repeats,
            resolve_device(args.device),
            memory=not args.no_memory,
        )
    if name == "generation":
        from llm_scratch.bench import generation

        return generation.run(
            args.model,
            args.vocab_size,
            args.new_tokens,
            args.prompt_len,
            args.batches,
            args.past_context,
            args.repeats,
            resolve_device(args.device),
            context=args.context,
            hf=args.hf,
        )
    if name == "data":
        from llm_scratch.bench import data

        return data.run(args.scales, args.tokenizer, args.context, args.batch, args.batches)
    if name == "prepare":
        from llm_scratch.bench import prepare

        return prepare.run(
            args.jsonl,
            args.big_jsonl,
            args.workers,
            args.repeats,
            args.workdir,
            training=not args.no_training,
            model=args.model,
        )
    if name == "sweep":
        from llm_scratch.bench import sweep

        return sweep.run(
            args.jobs,
            args.steps,
            args.verdict_cpu,
            args.book,
            args.overrides,
            args.workdir,
            save_model=args.save_model,
            before=args.before,
            startup_rounds=args.startup_rounds,
        )
    raise ValueError(name)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    retain_freed_memory()  # as training does, for both sides of every comparison
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))  # for subprocess cases
    names = BENCHMARKS if args.name == "all" else (args.name,)
    for name in names:
        if args.name == "all":  # each with its own defaults
            sub_args = parser().parse_args([name, *_passthrough(name, args)])
        else:
            sub_args = args
        try:
            result = run_one(name, sub_args)
        except (UserError, ValueError) as error:  # a bad option: one line, no traceback
            return report_user_error(error if isinstance(error, UserError) else UserError(error))
        if not args.no_save:
            out = args.out if args.name != "all" else None
            if args.name == "all" and args.out:
                out = Path(args.out) / f"{name}.json"
            print(f"wrote {write_json(result, out, name)}", file=sys.stderr)
    return 0


def _passthrough(name: str, args: argparse.Namespace) -> list[str]:
    return list(args.overrides) if name in ("throughput", "overhead", "profile") else []


if __name__ == "__main__":
    sys.exit(main())
