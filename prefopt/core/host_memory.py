"""Host memory given back to the system as soon as a large tensor is freed (glibc's malloc, Linux).

glibc serves a block of at least its mmap threshold with a mapping of its own, unmapped on free; smaller blocks
come from heaps that keep freed memory for reuse. The threshold starts at 128 KiB but rises to the size of each
mapped block freed (up to 32 MiB), so after the first steps most activation tensors come from the heaps, and a
run whose batches change shape (length buckets) keeps a high-water mark of freed, fragmented memory: measured
on the CPU, a DPO run's peak RSS fell from 9009 to 6728 MB with the threshold fixed at 4 MiB (to 5755 at 1 MiB),
at 1.25x (1.46x) the wall time, the price of mapping and zeroing fresh pages (docs/speed.md).

Setting the threshold is process-wide and stays for the life of the process.
"""

from __future__ import annotations

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h); setting it also stops the threshold's adjustment
RELEASE_THRESHOLD_BYTES = 4 * 2**20


def release_freed_memory(threshold: int = RELEASE_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes, so freed blocks that large go back to the system at
    once; False where the C library has no mallopt (not Linux, or musl) or refuses the value."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1


def use_release(option: bool | str, device) -> bool:
    """The run option ``release_host_memory`` resolved: as said, or under ``auto`` on for a run on the CPU, whose
    activations are host memory (on a GPU they are not, and the host's pages are the model loading's)."""
    if option != "auto":
        return bool(option)
    return str(device).split(":")[0] == "cpu"
