"""Attention: the per-head loop vs the fused (scaled_dot_product_attention) module, forward +
backward time and peak memory, over context lengths and head counts.

Both are the real modules of ``llm_scratch.model.attention``, loaded with the same weights, so
their outputs are compared too. Times are medians of ``repeats`` interleaved calls (loop, fused,
loop, ...). Peak memory is the extra memory one forward + backward needs beyond its inputs and
weights: on a GPU ``torch.cuda.max_memory_allocated`` after a reset; on a CPU, where torch keeps
no allocator statistics, the growth of the process's peak resident set size over one forward +
backward (Linux: the peak is reset through ``/proc/self/clear_refs`` just before, and read from
``VmHWM`` after), in a fresh process per case, so memory freed by earlier cases cannot hide it. CPU figures are
therefore whole-process (allocator slack included) and coarse below about a megabyte.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import torch

from llm_scratch.bench.common import machine_info, median, print_table, sync
from llm_scratch.model import GPTConfig
from llm_scratch.model.attention import FusedCausalSelfAttention, LoopCausalSelfAttention

IMPLS = {"loop": LoopCausalSelfAttention, "fused": FusedCausalSelfAttention}


def build(impl: str, n_embd: int, n_head: int, context: int, device, seed: int = 0):
    config = GPTConfig(
        vocab_size=8, context_length=context, n_layer=1, n_head=n_head, n_embd=n_embd, dropout=0.0
    )
    torch.manual_seed(seed)  # same weights for both implementations
    return IMPLS[impl](config).to(device)


def make_input(batch: int, context: int, n_embd: int, device, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, context, n_embd, generator=g).to(device).requires_grad_(True)


def fwd_bwd(module, x: torch.Tensor) -> torch.Tensor:
    y = module(x)
    y.backward(torch.ones_like(y))
    return y


def projections_fwd_bwd(module, x: torch.Tensor) -> torch.Tensor:
    """Only the qkv and output projections, at the module's full width: work both
    implementations do (the loop as per-head slices), so it bounds their speed-up."""
    C = x.size(-1)
    y = module.c_proj(module.c_attn(x)[..., :C])
    y.backward(torch.ones_like(y))
    return y


def peak_memory_cpu(impl: str, batch: int, context: int, n_embd: int, n_head: int) -> int:
    """Peak RSS growth (bytes) of one forward + backward, measured in a fresh process."""
    args = json.dumps([impl, batch, context, n_embd, n_head])
    code = "import sys, json; from llm_scratch.bench.attention import _memory_case; _memory_case(*json.loads(sys.argv[1]))"
    out = subprocess.run(
        [sys.executable, "-c", code, args], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def _memory_case(impl: str, batch: int, context: int, n_embd: int, n_head: int) -> None:
    module = build(impl, n_embd, n_head, context, "cpu")
    x = make_input(batch, context, n_embd, "cpu")
    # Touch the weights' gradients once at a tiny size, so their allocation is in the baseline.
    fwd_bwd(module, make_input(1, 1, n_embd, "cpu"))
    x.grad = torch.zeros_like(x)
    before = _reset_peak_rss()
    fwd_bwd(module, x)
    print(_peak_rss() - before)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> int:
    """Reset the peak RSS to the current RSS (Linux: /proc/self/clear_refs); return it in bytes.

    Where that is not possible, the process's peak so far (``ru_maxrss``) is the baseline, which
    can only under-state the growth.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return 1024 * _status_kib("VmRSS")
    except OSError:
        import resource

        return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss() -> int:
    try:
        return 1024 * _status_kib("VmHWM")
    except OSError:
        import resource

        return 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory_cuda(module, x: torch.Tensor) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fwd_bwd(module, x)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def run_case(
    batch: int, context: int, n_embd: int, n_head: int, repeats: int, device, memory: bool
) -> dict[str, Any]:
    modules = {name: build(name, n_embd, n_head, context, device) for name in IMPLS}
    x = make_input(batch, context, n_embd, device)
    outs, grads = {}, {}
    for name, module in modules.items():  # correctness, and a warm-up
        xi = x.detach().clone().requires_grad_(True)
        outs[name] = fwd_bwd(module, xi).detach()
        grads[name] = xi.grad
    calls = {name: (fwd_bwd, module) for name, module in modules.items()}
    calls["projections"] = (projections_fwd_bwd, modules["fused"])
    projections_fwd_bwd(modules["fused"], x)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, (call, module) in calls.items():
            module.zero_grad(set_to_none=True)
            sync(device)
            start = _now()
            call(module, x)
            sync(device)
            times[name].append(_now() - start)
            x.grad = None
    row: dict[str, Any] = {
        "batch": batch,
        "context": context,
        "n_embd": n_embd,
        "n_head": n_head,
        "max_abs_diff": float((outs["loop"] - outs["fused"]).abs().max()),
        "grad_max_abs_diff": float((grads["loop"] - grads["fused"]).abs().max()),
    }
    for name in calls:
        row[f"{name}_ms"] = 1e3 * median(times[name])
    row["speedup"] = row["loop_ms"] / row["fused_ms"]
    # The speed-up of what the two modules do differently: the time beyond the projections.
    beyond = {name: row[f"{name}_ms"] - row["projections_ms"] for name in IMPLS}
    row["speedup_beyond_projections"] = (
        beyond["loop"] / beyond["fused"] if beyond["fused"] > 0 else float("nan")
    )
    if memory:
        for name, module in modules.items():
            if torch.device(device).type == "cuda":
                row[f"{name}_peak_mib"] = peak_memory_cuda(module, x) / 2**20
            else:
                row[f"{name}_peak_mib"] = (
                    peak_memory_cpu(name, batch, context, n_embd, n_head) / 2**20
                )
    return row


def _now() -> float:
    import time

    return time.perf_counter()


def run(
    contexts: tuple[int, ...] = (64, 128, 256, 512, 1024),
    heads: tuple[int, ...] = (2, 4, 8),
    batch: int = 4,
    n_embd: int = 256,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    memory: bool = True,
    show: bool = True,
) -> dict[str, Any]:
    device = torch.device(device)
    rows = [run_case(batch, t, n_embd, h, repeats, device, memory) for h in heads for t in contexts]
    result = {
        "benchmark": "attention",
        "machine": machine_info(device),
        "batch": batch,
        "n_embd": n_embd,
        "repeats": repeats,
        "memory_method": "cuda max_memory_allocated"
        if device.type == "cuda"
        else "peak RSS growth, fresh process per case",
        "rows": rows,
    }
    if show:
        columns = ["heads", "context", "loop ms", "fused ms", "speed-up", "proj ms", "beyond proj"]
        if memory:
            columns += ["loop MiB", "fused MiB"]
        columns += ["max |diff|"]
        table = []
        for r in rows:
            line = [
                r["n_head"],
                r["context"],
                r["loop_ms"],
                r["fused_ms"],
                f"{r['speedup']:.2f}x",
                r["projections_ms"],
                f"{r['speedup_beyond_projections']:.2f}x",
            ]
            if memory:
                line += [r["loop_peak_mib"], r["fused_peak_mib"]]
            table.append([*line, f"{r['max_abs_diff']:.1e}"])
        print_table(
            f"Attention forward + backward (batch {batch}, n_embd {n_embd}, {device})",
            columns,
            table,
            note=f"proj: the shared qkv + output projections alone; beyond proj: speed-up of the "
            f"rest. peak memory: {result['memory_method']}; load {machine_info()['load_avg_1min']}",
        )
    return result
