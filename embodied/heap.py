"""Hand freed heap memory back to the OS during long runs (glibc).

A training loop that alternates acting (a few small tensors) with gradient updates (~0.25 MB
activation blocks at batch 256, aligned by torch's CPU allocator) leaves glibc's heap holding
freed blocks it does not reuse: a SAC run on ``push`` grew by ~170 kB per update, to 12 GB at
72k steps, and two such runs on a 24 GB machine ended with the OOM killer. None of it was live:
``malloc_trim(0)`` gave it all back (1,660 -> 697 MB after 2,400 updates), and trimming every
1,000 updates kept the process flat at no measurable cost to the update rate (90.1 vs 91.4
updates/s). A fixed mmap threshold also stops the growth but halves the update rate (every
activation block becomes fresh pages). :func:`trim` is what the loops call; it does nothing off
glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

EVERY = 1000  # updates (or env steps) between trims in the training loops


@lru_cache(maxsize=1)
def libc() -> ctypes.CDLL | None:
    """glibc, or None where there is none (macOS, musl)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.malloc_trim.argtypes, lib.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        lib.mallopt.argtypes, lib.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


def trim() -> bool:
    """Return the heap's free memory to the OS; True when glibc released some."""
    lib = libc()
    return bool(lib.malloc_trim(0)) if lib is not None else False
