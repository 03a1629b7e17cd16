"""Keep freed large buffers in the process heap (glibc), for the bridge's processes.

Every message the bridge moves allocates ~1 MB buffers: the actor's per-camera batch arrays,
the learner's received frames. glibc serves blocks over its mmap threshold (128 kB, raised
only by what was last freed) with fresh ``mmap`` pages and returns them on ``free``, so each
message pays a page fault per 4 kB touched: ``np.stack`` of 17 rows of two 128x128 cameras
took 1.9 ms that way against 0.12 ms from memory already mapped, on this project's machine
(benchmarks/results/bridge.md). :func:`keep_freed_buffers` raises the mmap and trim thresholds so
such blocks come from, and go back to, the heap: the process keeps up to ``trim_bytes`` of
freed memory mapped instead of handing it back to the OS.

It changes the whole process's allocator, once; it does nothing off glibc, and nothing
where the user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or a
``glibc.malloc`` tunable in ``GLIBC_TUNABLES`` (theirs win).
"""

from __future__ import annotations

import os

from embodied import heap

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_done: bool | None = None


def keep_freed_buffers(mmap_bytes: int = 32 << 20, trim_bytes: int = 256 << 20) -> bool:
    """Serve blocks below ``mmap_bytes`` from the heap, keep ``trim_bytes`` of free heap;
    True when glibc took the settings (also on repeated calls)."""
    global _done
    if _done is not None:
        return _done
    for value, name in ((mmap_bytes, "mmap_bytes"), (trim_bytes, "trim_bytes")):
        if not 0 < int(value) < 2**31:  # mallopt takes a C int
            raise ValueError(f"keep_freed_buffers: {name} must be in (0, 2**31), got {value}")
    _done = False
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_") \
            or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return _done
    libc = heap.libc()
    if libc is None:  # not glibc (macOS, musl without mallopt)
        return _done
    mallopt = libc.mallopt
    # trim first: if glibc refuses it, the mmap threshold is left as it was
    _done = bool(mallopt(M_TRIM_THRESHOLD, int(trim_bytes))) and bool(mallopt(M_MMAP_THRESHOLD, int(mmap_bytes)))
    return _done
