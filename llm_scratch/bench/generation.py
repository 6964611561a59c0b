"""Generation: tokens/s with and without the KV cache, batched prompts.

``GPT.generate`` greedy (temperature 0, so both paths must produce the same tokens, which is
checked) for ``--new-tokens`` tokens after a ``--prompt-len`` token prompt. Two regimes:

- *within context*: ``context_length >= prompt + new tokens``, so the cache is used throughout;
- *past context*: a context shorter than that. Positions are learned and absolute, so once the
  window slides every cached key is at the wrong position, and generate re-runs the whole
  cropped window each step (see ``LanguageModel._sample_loop`` in llm_scratch/model/base.py):
  past the context length the cache saves nothing, and this row shows it.

``context`` sets the within-context model's context length (default: prompt + new tokens).
With ``hf=True`` the same weights also run as Hugging Face's ``GPT2LMHeadModel``
(``llm_scratch.model.hf.to_hf``; needs ``transformers``), its ``generate`` greedy with its own KV
cache, in the within-context regime: the peer a user would otherwise pick.

The runs are interleaved, ``repeats`` each, and the medians reported.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
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
    context: int | None = None,
    hf: bool = False,
) -> dict[str, Any]:
    device = torch.device(device)
    within = prompt_len + new_tokens
    if context is not None and context < within:
        raise ValueError(
            f"context={context} is shorter than prompt + new tokens = {within}: the "
            "within-context regime needs at least that (the past-context one is --past-context)"
        )
    contexts = [("within context", context or within)]
    if past_context:
        contexts.append(("past context", past_context))
    rows = []
    for regime, context_length in contexts:
        torch.manual_seed(0)
        config = GPTConfig.from_name(
            model, vocab_size=vocab_size, context_length=context_length, dropout=0.0
        )
        net = GPT(config).to(device).eval()
        peer = _hf_peer(net) if hf and regime == "within context" else None
        for batch in batches:
            g = torch.Generator().manual_seed(batch)
            prompt = torch.randint(0, vocab_size, (batch, prompt_len), generator=g).to(device)
            generate = functools.partial(net.generate, prompt, new_tokens, temperature=0.0)
            runs = {"cached": generate, "uncached": functools.partial(generate, use_cache=False)}
            if peer is not None:
                runs["hf"] = functools.partial(_hf_generate, peer, prompt, new_tokens)
            times, outs = _time_interleaved(runs, repeats, device)
            produced = batch * new_tokens
            speed = {name: produced / median(t) for name, t in times.items()}
            row = {
                "regime": regime,
                "context_length": context_length,
                "batch": batch,
                "new_tokens": new_tokens,
                "prompt_len": prompt_len,
                "cached_tokens_per_sec": speed["cached"],
                "uncached_tokens_per_sec": speed["uncached"],
                "speedup": speed["cached"] / speed["uncached"],
                "same_tokens": bool(torch.equal(outs["cached"], outs["uncached"])),
            }
            if "hf" in speed:
                row["hf_tokens_per_sec"] = speed["hf"]
                row["speedup_vs_hf"] = speed["cached"] / speed["hf"]
                # float32 rounding differs between the two implementations, so a near-tie
                # between two tokens could in principle go either way; report, don't assume
                row["same_tokens_as_hf"] = bool(torch.equal(outs["cached"], outs["hf"]))
            rows.append(row)
    with_hf = any("hf_tokens_per_sec" in r for r in rows)
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
            ["regime", "context", "batch", "cached tok/s", "uncached tok/s", "speed-up", "same"]
            + (["HF tok/s", "vs HF", "same as HF"] if with_hf else []),
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
                + (
                    [
                        r["hf_tokens_per_sec"],
                        f"{r['speedup_vs_hf']:.2f}x",
                        str(r["same_tokens_as_hf"]),
                    ]
                    if "hf_tokens_per_sec" in r
                    else ([None, None, None] if with_hf else [])
                )
                for r in rows
            ],
            note=f"tokens/s counts every sequence of the batch; load {machine_info()['load_avg_1min']}",
        )
    return result


def _time_interleaved(
    runs: dict[str, Callable[[], torch.Tensor]], repeats: int, device: torch.device
) -> tuple[dict[str, list[float]], dict[str, torch.Tensor]]:
    """Each run ``repeats`` times, the order rotating each round; the times and last outputs."""
    names = list(runs)
    times: dict[str, list[float]] = {name: [] for name in names}
    outs: dict[str, torch.Tensor] = {}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            outs[name] = runs[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times, outs


def _hf_peer(net: GPT):
    """``net``'s weights as a ``transformers.GPT2LMHeadModel`` on the same device."""
    from llm_scratch.model.hf import to_hf

    return to_hf(net).to(next(net.parameters()).device)


@torch.no_grad()
def _hf_generate(peer, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Hugging Face's greedy ``generate`` with its KV cache, exactly ``new_tokens`` tokens."""
    return peer.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )
