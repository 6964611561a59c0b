"""Generation: tokens/s with and without the KV cache, batched prompts.

``GPT.generate`` greedy (temperature 0, so both paths must produce the same tokens, which is
checked) for ``--new-tokens`` tokens after a ``--prompt-len`` token prompt. Two regimes:

- *within context*: ``context_length >= prompt + new tokens``, so the cache is used throughout;
- *past context*: a context shorter than that. Positions are learned and absolute, so once the
  window slides every cached key is at the wrong position, and generate re-runs the whole
  cropped window each step (see ``LanguageModel._sample_loop`` in llm_scratch/model/base.py): past the context length the cache saves
  nothing, and this row shows it.

Cached and uncached runs are interleaved, ``repeats`` each, and the medians reported.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from llm_scratch.bench.common import machine_info, median, print_table, sync
from llm_scratch.model import GPT, GPTConfig


def run(
    model: str = "gpt-micro",
    vocab_size: int = 50257,
    new_tokens: int = 500,
    prompt_len: int = 16,
    batches: tuple[int, ...] = (1, 8),
    past_context: int | None = 128,
    repeats: int = 3,
    device: str | torch.device = "cpu",
    show: bool = True,
) -> dict[str, Any]:
    device = torch.device(device)
    within = prompt_len + new_tokens
    contexts = [("within context", within)]
    if past_context:
        contexts.append(("past context", past_context))
    rows = []
    for regime, context in contexts:
        torch.manual_seed(0)
        config = GPTConfig.from_name(
            model, vocab_size=vocab_size, context_length=context, dropout=0.0
        )
        net = GPT(config).to(device).eval()
        for batch in batches:
            g = torch.Generator().manual_seed(batch)
            prompt = torch.randint(0, vocab_size, (batch, prompt_len), generator=g).to(device)
            times: dict[bool, list[float]] = {True: [], False: []}
            outs = {}
            for r in range(repeats):
                for use_cache in (True, False) if r % 2 == 0 else (False, True):
                    sync(device)
                    start = time.perf_counter()
                    outs[use_cache] = net.generate(
                        prompt, new_tokens, temperature=0.0, use_cache=use_cache
                    )
                    sync(device)
                    times[use_cache].append(time.perf_counter() - start)
            produced = batch * new_tokens
            cached = produced / median(times[True])
            uncached = produced / median(times[False])
            rows.append(
                {
                    "regime": regime,
                    "context_length": context,
                    "batch": batch,
                    "new_tokens": new_tokens,
                    "prompt_len": prompt_len,
                    "cached_tokens_per_sec": cached,
                    "uncached_tokens_per_sec": uncached,
                    "speedup": cached / uncached,
                    "same_tokens": bool(torch.equal(outs[True], outs[False])),
                }
            )
    result = {
        "benchmark": "generation",
        "machine": machine_info(device),
        "model": model,
        "params": net.num_params(),
        "vocab_size": vocab_size,
        "repeats": repeats,
        "rows": rows,
    }
    if show:
        print_table(
            f"Generation, {model} ({result['params'] / 1e6:.1f}M params), greedy, "
            f"{new_tokens} new tokens after {prompt_len}",
            ["regime", "context", "batch", "cached tok/s", "uncached tok/s", "speed-up", "same"],
            [
                [
                    r["regime"],
                    r["context_length"],
                    r["batch"],
                    r["cached_tokens_per_sec"],
                    r["uncached_tokens_per_sec"],
                    f"{r['speedup']:.1f}x",
                    str(r["same_tokens"]),
                ]
                for r in rows
            ],
            note=f"tokens/s counts every sequence of the batch; load {machine_info()['load_avg_1min']}",
        )
    return result
