"""glibc malloc tuning for training on CPU.

Per-step buffers of a few MB to hundreds of MB (logits, activations) are served by mmap and unmapped on free, so
every step faults their pages in again: measured here, a third of a CPU run's time went to the kernel. Raising the
mmap and trim thresholds keeps freed blocks in the heap, where the next step reuses them.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    """glibc, or None off Linux / where it cannot be loaded."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def tune_malloc(mmap_threshold: int = 2**30, trim_threshold: int = 2**30) -> bool:
    """Apply the thresholds (C ints: < 2**31) through mallopt; False where the C library is not glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (malloc_trim), so RSS counts only live memory; False off glibc."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))
