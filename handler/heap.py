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
``release_free_memory`` is that call, after every batch.

With the trim alone the floor still grew ~11-14 MB per 1,000 requests, in the main arena, and only
in the worker: a request that raises (every bad upload, and PyAV's end-of-stream inside decoding)
leaves its traceback in reference cycles that hold the frames' locals (the upload, the container,
decoded frames) until a full collection, and with ~440,000 objects loaded (the model, torch,
OpenVINO) a full collection comes only after ~110,000 more survive, minutes apart, and stops a
request for ~220 ms when it comes. So the loaded objects are frozen once (``freeze_loaded_objects``:
collections no longer walk them) and every batch ends with a collection of what it left, then the
trim (bench/RESULTS.md: the soak before and after).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
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


def freeze_loaded_objects() -> None:
    """Move every object alive now (after loading: the model, the libraries) into gc's permanent
    generation, so that the collection after each batch walks only what requests created: ~220 ms
    for a classifier's worker before, microseconds after (measured in-process, bench/RESULTS.md)."""
    gc.collect()
    gc.freeze()


def release_free_memory() -> bool:
    """Collect the reference cycles this batch left (exception tracebacks holding decoded frames),
    then return the arenas' free pages to the system (glibc ``malloc_trim(0)``; milliseconds). False
    where the C library has no such call (the collection still runs)."""
    gc.collect()
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
