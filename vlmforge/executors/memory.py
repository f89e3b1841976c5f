"""Allocator settings for build processes: keep freed heap memory for reuse.

Builds allocate and free the same large buffers over and over: every image read is a new 100 KB -
1 MB `bytes`, alive for one batch. glibc serves blocks of that size from fresh `mmap`s (or trims the
heap as soon as a batch is freed), so each image's pages are faulted in and zeroed again: measured
here, reading a 190 KB JPEG cost 136 us that way and 46 us with the memory reused, and a copy
build's per-sample worker time (read, check, hash) fell from 497 to 339 us, and a 2-worker copy
build of 10,000 JPEGs from 5.6-6.2 s to 4.8-4.9 s.

`tune_allocator()` raises glibc's mmap threshold to 32 MiB (its own ceiling for the dynamic
threshold) and keeps up to 256 MiB of free heap before trimming. It only changes where memory
comes from, never what a build writes. A no-op off glibc, or when MALLOC_MMAP_THRESHOLD_ /
MALLOC_TRIM_THRESHOLD_ are set (the user's choice wins) or VLMFORGE_MALLOC=default.
"""

from __future__ import annotations

import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
_done = False


def tune_allocator() -> bool:
    """Apply the settings once per process; True when they are in force."""
    global _done
    if _done:
        return True
    if os.environ.get("VLMFORGE_MALLOC") == "default" or any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
