"""glibc allocator settings for PyTorch on the CPU: keep large freed blocks for reuse instead of unmapping them.

PyTorch takes CPU tensors from malloc, and glibc serves each large block with a fresh mmap and unmaps it on
free, so every large activation is paid for again in page faults. On this project's 2-core machine that cost
up to 5x the convolutions themselves while caching training activations (docs/benchmarks.md). With mmap off
and trimming raised, freed blocks go back to the heap and are reused; the resident size then stays at its
high-water mark, which suits a training run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def reuse_large_blocks() -> bool:
    """Apply the settings where the C library is glibc; returns whether they were applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
