"""The process's memory, as a long run sees it."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
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


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS). find_library runs ldconfig: look it up once."""
    name = ctypes.util.find_library("c")
    if not name or "libc.so" not in name:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Free what the last stage left: Python garbage, and (glibc) freed heap pages the allocator
    would otherwise keep, so that resident memory reflects what is really held."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
