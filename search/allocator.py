"""Keep the memory PyTorch frees inside the process (glibc's malloc), so big tensors do not page-fault anew.

A CPU tensor of a 256-image batch is megabytes to a hundred megabytes (mbv2's first stages: 256 × 96 ×
32 × 32 floats = 100 MB). glibc serves such blocks with ``mmap`` and returns them to the kernel on
``free``, so every pass of a masked evaluation (thousands per Shapley round) maps them again and the
kernel zero-fills every page on first touch: on these 2-core machines the process spent about as long
in the kernel as in PyTorch's kernels. With mmap off and the heap never trimmed below 2 GB of free top,
freed blocks are reused. Nothing is computed differently (the same operations on the same values: results
bit-identical); the process keeps its peak heap instead of giving it back.

Applied once when :mod:`search` is imported (``SMPQ_ALLOCATOR=default`` leaves glibc's behaviour, for
comparisons: ``python bench/shapley_speed.py --allocators default,keep``); a no-op without glibc.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

ENV = "SMPQ_ALLOCATOR"
CHOICES = ("keep", "default")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc's mallopt parameter numbers (malloc.h)
_TRIM_THRESHOLD = 2**31 - 1               # bytes of free heap top kept before trimming (mallopt takes an int)


def allocator_choice() -> str:
    """The allocator setting ``SMPQ_ALLOCATOR`` asks for (``keep`` unless it says ``default``)."""
    choice = os.environ.get(ENV, "keep").strip().lower() or "keep"
    if choice not in CHOICES:
        raise SystemExit(f"error: {ENV}={choice!r} is not an allocator setting: use one of {', '.join(CHOICES)}")
    return choice


def keep_freed_memory() -> bool:
    """Switch glibc's malloc to keep freed blocks (see the module docstring); True if it now does."""
    if allocator_choice() == "default" or sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


KEEPING_FREED_MEMORY = keep_freed_memory()
