"""Shared pieces of the benchmarks: timing, the machine, a measured matmul peak, tables, JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llm_scratch.utils.flops import known_peak_flops, precision_dtype

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "benchmarks" / "results"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_it(fn: Callable[[], Any], repeats: int, warmup: int = 1, device="cpu") -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def load_average() -> float | None:
    """The 1-minute load average (other processes competing for the cores), where the OS has it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "load_avg_1min": load_average(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def measure_matmul_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    n: int | None = None,
    repeats: int = 5,
) -> float:
    """Measured GEMM FLOP/s: the best of ``repeats`` timed ``n x n @ n x n`` products.

    The "peak" the MFU figures divide by, where no vendor figure is known (CPUs): what this
    device really reaches on a large dense matmul in ``dtype`` now, not a data-sheet number.
    Measured afresh on every call (a busy machine measures a lower peak, which keeps MFU honest).
    """
    device = torch.device(device)
    if n is None:
        n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = time_it(lambda: torch.matmul(a, b), repeats=repeats, warmup=1, device=device)
    return 2.0 * n**3 / min(times)


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """Peak FLOP/s for MFU and where it comes from: the data sheet of a known GPU (the same figure
    training's ThroughputLogger uses), else a matmul measured now (CPUs, unlisted GPUs)."""
    flops = known_peak_flops(device, precision)
    if flops:
        return flops, "data sheet"
    dtype = precision_dtype(precision)
    return measure_matmul_peak(device, dtype), f"measured {str(dtype).removeprefix('torch.')} GEMM"


def print_table(title: str, columns: list[str], rows: list[list[Any]], note: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, caption=note or None)
    for col in columns:
        table.add_column(col, justify="right" if col != columns[0] else "left")
    for row in rows:
        table.add_row(*[_fmt(v) for v in row])
    Console(width=max(100, len(columns) * 14)).print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return f"{value:.3g}"
    return "" if value is None else str(value)


def write_json(result: dict[str, Any], out: str | Path | None, name: str) -> Path:
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path
