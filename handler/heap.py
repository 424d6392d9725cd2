"""Keep a long-running worker's heap from growing with the length of the videos it decodes.

glibc raises its mmap threshold every time a large block is freed (up to 32 MiB), after which
the per-window buffers of a timeline (the stacked frames, ~11 MB; the normalized crops, ~25 MB)
come from the heap arenas instead of their own mappings. Freed there, they fragment the arenas
and are not returned: a streamed timeline of a 600 s 720p video grew the worker by ~17 MB a
window (1.8x a single default request's peak), and the memory stayed taken after the request. A fixed
threshold keeps blocks of 1 MiB and more in their own mappings, returned to the system at free.

Smaller blocks (PyAV's packets and frames, FFmpeg's per-thread arenas) still leave free pages in
the middle of the arenas, which ``free`` never returns: a 30-minute soak grew the main worker's RSS
floor by ~26 MB per 1,000 requests; ``malloc_trim(0)`` gives those pages back, and
``release_free_memory`` is that call, after every batch. With it the floor still grows ~11-14 MB per
1,000 requests, in the main arena (bench/RESULTS.md): not yet explained.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


@functools.lru_cache(maxsize=None)
def _libc() -> "ctypes.CDLL | None":
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def release_free_memory() -> bool:
    """Return the arenas' free pages to the system (glibc ``malloc_trim(0)``; milliseconds). False
    where the C library has no such call."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold to ``threshold`` bytes (fixed: no dynamic raise). False where the
    C library is not glibc (musl, macOS): nothing to fix there, or nothing we can set."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        log.info("not glibc: the allocator's mmap threshold is left as it is")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
