"""The process's memory, as a long run sees it."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os


def resident_mb() -> float | None:
    """Resident memory now (not the peak), in MB; None where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def release_memory() -> None:
    """Free what the last stage left: Python garbage, and (glibc) freed heap pages the allocator
    would otherwise keep, so that resident memory reflects what is really held."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name and "libc.so" in name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
            pass
