"""Data: time and memory to build the training datasets vs corpus size, at stride 1 and at
stride = context_length, through ``LMDataModule`` (read the text, tokenize, cache the token ids,
split, cut windows), and how fast the train loader then serves batches.

Corpora are Tiny Shakespeare repeated 1, 4, 16 ... times into a temporary ``.txt`` file
(``data=text``). Each case runs in a fresh process with an empty token cache, so "first build"
includes tokenizing; "cached build" is a second ``LMDataModule`` over the same cache. Memory is
the growth of the process's peak RSS over the first build (Linux: the peak is reset through
``/proc/self/clear_refs`` before it), which includes the text and tokenizer, not only the
datasets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llm_scratch.bench.common import machine_info, print_table


def _case(path: str, tokenizer: str, context: int, stride: int, batch: int, batches: int) -> None:
    from llm_scratch.bench.attention import _peak_rss, _reset_peak_rss
    from llm_scratch.data import LMDataModule

    def build() -> LMDataModule:
        dm = LMDataModule(
            corpus="text", path=path, tokenizer=tokenizer, context_length=context, stride=stride,
            batch_size=batch,
        )  # fmt: skip
        dm.prepare_data()
        dm.setup("fit")
        return dm

    before = _reset_peak_rss()
    start = time.perf_counter()
    dm = build()
    first = time.perf_counter() - start
    peak = _peak_rss() - before
    start = time.perf_counter()
    dm2 = build()
    cached = time.perf_counter() - start
    loader = iter(dm2.train_dataloader())
    start = time.perf_counter()
    next(loader)  # the epoch's shuffled order is drawn here: O(windows)
    first_batch = time.perf_counter() - start
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            next(loader)
        except StopIteration:
            break
        n += 1
    load = time.perf_counter() - start
    print(
        json.dumps(
            {
                "tokens": len(dm._tokens),
                "train_windows": len(dm.train_dataset),
                "first_build_s": first,
                "cached_build_s": cached,
                "peak_mib": peak / 2**20,
                "first_batch_s": first_batch,
                "batches_per_sec": n / load if load > 0 else None,
            }
        )
    )


def run(
    scales: tuple[int, ...] = (1, 4, 16),
    tokenizer: str = "gpt2",
    context: int = 256,
    batch: int = 8,
    batches: int = 200,
    show: bool = True,
) -> dict[str, Any]:
    from llm_scratch.data.corpora import load_corpus

    text = load_corpus("shakespeare", download=False)
    rows = []
    with tempfile.TemporaryDirectory(prefix="llm_scratch_bench_data_") as tmp:
        for scale in scales:
            path = Path(tmp) / f"corpus{scale}.txt"
            if isinstance(scale, float) and scale < 1:
                path.write_text(text[: int(len(text) * scale)])
            else:
                path.write_text(text * int(scale))
            for stride in (1, context):
                env = {
                    **os.environ,
                    "LLM_SCRATCH_CACHE_DIR": str(Path(tmp) / f"cache{scale}_{stride}"),
                }
                args = json.dumps([str(path), tokenizer, context, stride, batch, batches])
                code = "import sys, json; from llm_scratch.bench.data import _case; _case(*json.loads(sys.argv[1]))"
                out = subprocess.run(
                    [sys.executable, "-c", code, args],
                    capture_output=True, text=True, check=True, env=env,
                )  # fmt: skip
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update(scale=scale, chars=path.stat().st_size, stride=stride)
                rows.append(row)
    result = {
        "benchmark": "data",
        "machine": machine_info(),
        "tokenizer": tokenizer,
        "context_length": context,
        "batch_size": batch,
        "rows": rows,
    }
    if show:
        print_table(
            f"Building the datasets (Tiny Shakespeare x scale, {tokenizer}, context {context})",
            ["chars", "tokens", "stride", "windows", "first build s", "cached build s",
             "peak MiB", "1st batch s", "batches/s"],
            [
                [r["chars"], r["tokens"], r["stride"], r["train_windows"], r["first_build_s"],
                 r["cached_build_s"], r["peak_mib"], r["first_batch_s"], r["batches_per_sec"]]
                for r in rows
            ],
            note=f"batch {batch}; load {machine_info()['load_avg_1min']}",
        )  # fmt: skip
    return result
