"""nanoGPT's corpus preparation, the reference ``python -m llm_scratch.bench prepare`` compares with.

nanoGPT's ``data/openwebtext/prepare.py`` (karpathy/nanoGPT, master) as it is, on a local JSON
Lines file instead of the hub's OpenWebText: Hugging Face ``datasets`` loads the file, splits off
0.05% for validation, ``map(num_proc=...)`` tokenizes each document with tiktoken's GPT-2
``encode_ordinary`` plus the end-of-text token, and each split is written into one uint16
``np.memmap`` in 1024 contiguous batches. Two changes, both needed on a small file: the
``datasets`` cache goes to a fresh temporary folder (no earlier run's cache is reused), and a
split with fewer than 1024 documents is written in as many batches as it has documents (1024
empty shards would fail in ``np.concatenate``).

    python benchmarks/nanogpt_prepare.py <file.jsonl> <out dir> [--num-proc 2]

Prints one JSON line: seconds, bytes read, tokens written, peak RSS of the process and of its
largest worker, CPU seconds of the process and its workers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

import numpy as np
import tiktoken
from datasets import disable_progress_bars, load_dataset


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM): ru_maxrss would carry over the parent's."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jsonl")
    p.add_argument("out")
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--text-field", default="text")
    args = p.parse_args()
    disable_progress_bars()
    start = time.perf_counter()
    num_proc = args.num_proc
    num_proc_load_dataset = num_proc
    enc = tiktoken.get_encoding("gpt2")
    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nanogpt_hf_cache_") as cache:
        dataset = load_dataset(
            "json", data_files=args.jsonl, num_proc=num_proc_load_dataset, cache_dir=cache
        )
        split_dataset = dataset["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
        split_dataset["val"] = split_dataset.pop("test")  # rename the test split to val

        def process(example):
            ids = enc.encode_ordinary(example[args.text_field])  # ignores any special token
            ids.append(enc.eot_token)  # add the end of text token, e.g. 50256 for gpt2 bpe
            out = {"ids": ids, "len": len(ids)}
            return out

        tokenized = split_dataset.map(
            process,
            remove_columns=dataset["train"].column_names,
            desc="tokenizing the splits",
            num_proc=num_proc,
        )
        tokens = 0
        for split, dset in tokenized.items():
            arr_len = np.sum(dset["len"], dtype=np.uint64)
            filename = os.path.join(args.out, f"{split}.bin")
            dtype = np.uint16  # (can do since enc.max_token_value == 50256 is < 2**16)
            arr = np.memmap(filename, dtype=dtype, mode="w+", shape=(arr_len,))
            total_batches = min(1024, len(dset))
            idx = 0
            for batch_idx in range(total_batches):
                # Batch together samples for faster write
                batch = dset.shard(
                    num_shards=total_batches, index=batch_idx, contiguous=True
                ).with_format("numpy")
                arr_batch = np.concatenate(batch["ids"])
                # Write into mmap
                arr[idx : idx + len(arr_batch)] = arr_batch
                idx += len(arr_batch)
            arr.flush()
            tokens += int(arr_len)
    seconds = time.perf_counter() - start
    kib = 1024 / 1e6
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    print(
        json.dumps(
            {
                "seconds": seconds,
                "bytes": os.path.getsize(args.jsonl),
                "tokens": tokens,
                "peak_rss_mb": peak_rss_mb(),
                "peak_rss_worker_mb": kids.ru_maxrss * kib,
                "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
            }
        )
    )


if __name__ == "__main__":
    main()
