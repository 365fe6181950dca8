"""Keep freed memory in the process for reuse: training steps then stop paying page faults.

A training step allocates the same large arrays every time (patch matrices, activations,
gradients: ~15 MB for a LeNet-sized CNN at batch 64). glibc's malloc gives blocks that large
back to the kernel when they are freed, so the next step touches fresh pages: measured 3,600
page faults per LeNet step (~30% of its time) and 7,700 for a wider CNN. Raising glibc's mmap
and trim thresholds keeps the freed blocks in the heap, and the faults go to zero. PyTorch's
CPU allocator avoids the same cost its own way.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: blocks up to this size come from the reusable heap (glibc caps the mmap threshold at 32 MiB)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: free memory kept at the heap's top before any is returned to the kernel
TRIM_THRESHOLD = 512 * 1024 * 1024


def reuse_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse; False where that is not possible.

    Process-wide and meant for the entry points of long-running programs (the trainer, a
    benchmark, a server worker), not for library import time. Memory use then stays near the
    peak of one training step instead of shrinking between steps.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
