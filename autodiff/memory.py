"""glibc malloc policies for the two kinds of long-running process: keep freed memory for reuse
(the trainer), or give it back (a server).

Keeping it: a training step allocates the same large arrays every time (patch matrices, activations,
gradients: ~15 MB for a LeNet-sized CNN at batch 64). glibc's malloc gives blocks that large
back to the kernel when they are freed, so the next step touches fresh pages: measured 3,600
page faults per LeNet step (~30% of its time) and 7,700 for a wider CNN. Raising glibc's mmap
and trim thresholds keeps the freed blocks in the heap, and the faults go to zero. PyTorch's
CPU allocator avoids the same cost its own way.

Giving it back: a server worker serves from many threads, and glibc gives each of them an
arena of its own (up to 8 per core) and raises its mmap threshold (up to 32 MiB) each time a
large block is freed, so that the next large blocks come from those arenas, which keep their
peak: idle workers that had decoded large photos kept gigabytes. Two arenas and a fixed
threshold bring them back to their start-up size (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: blocks up to this size come from the reusable heap (glibc caps the mmap threshold at 32 MiB)
MMAP_THRESHOLD = 32 * 1024 * 1024
#: free memory kept at the heap's top before any is returned to the kernel
TRIM_THRESHOLD = 512 * 1024 * 1024
#: a server's: blocks from this size up are mapped and unmapped on their own (setting it also
#: stops glibc from raising it), and all threads share this many arenas
SERVER_MMAP_THRESHOLD = 1024 * 1024
SERVER_ARENAS = 2


def _mallopt(*settings: tuple[int, int]) -> bool:
    """glibc's mallopt(parameter, value) for each setting; False where there is no mallopt."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all([bool(mallopt(parameter, value)) for parameter, value in settings])


def return_freed_memory() -> bool:
    """Tell glibc's malloc to give freed memory back to the system, however many threads
    allocated it; False where that is not possible.

    Process-wide, for a server's entry point (gunicorn.conf.py): an idle worker then returns
    to its size after start-up. Workers forked afterwards inherit it.
    """
    return _mallopt((_M_ARENA_MAX, SERVER_ARENAS), (_M_MMAP_THRESHOLD, SERVER_MMAP_THRESHOLD))


def reuse_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse; False where that is not possible.

    Process-wide and meant for the entry points of long-running programs (the trainer, a
    benchmark), not for library import time. Memory use then stays near the peak of one
    training step instead of shrinking between steps.
    """
    return _mallopt((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
