"""Keep a long-running worker's heap from growing with the length of the videos it decodes.

glibc raises its mmap threshold every time a large block is freed (up to 32 MiB), after which
the per-window buffers of a timeline (the stacked frames, ~11 MB; the normalized crops, ~25 MB)
come from the heap arenas instead of their own mappings. Freed there, they fragment the arenas
and are not returned: a streamed timeline of a 600 s 720p video grew the worker by ~17 MB a
window (1.8x a single default request's peak), and the memory stayed taken after the request. A fixed
threshold keeps blocks of 1 MiB and more in their own mappings, returned to the system at free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold to ``threshold`` bytes (fixed: no dynamic raise). False where the
    C library is not glibc (musl, macOS): nothing to fix there, or nothing we can set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("not glibc: the allocator's mmap threshold is left as it is")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1
