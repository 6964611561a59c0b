"""Keep the memory a training step frees for the next step instead of handing it back to the OS.

A CPU training step frees and reallocates the same activation buffers every step. glibc's
malloc hands the top of its heap back to the OS whenever more than its trim threshold lies free
there, and serves blocks above its (self-adjusting) mmap threshold with fresh mappings, so the
next step page-faults the same memory in again: about 580 minor faults a step at nanoGPT's CPU
config. Raising both thresholds keeps that memory mapped; the math is untouched. The cost: the
process keeps its peak heap until it exits, which a training run reaches in its first steps
anyway. Elsewhere (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import sys

# mallopt's parameter numbers, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at 32 MiB on 64-bit; larger blocks still get their own mapping
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds for this process (once); True where applied."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
