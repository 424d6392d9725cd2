"""The worker gives its allocator's free pages back (handler/heap.py): blocks freed in the middle of
glibc's arenas stay in RSS until ``malloc_trim``; the handler calls it after every batch, failed
batches included. Depends on glibc (skipped elsewhere)."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

from handler import heap

glibc = pytest.mark.skipif(not hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "malloc_trim"),
                           reason="needs glibc's malloc_trim")

# In a fresh process: ~100 MB of 512-byte blocks from the C heap, all freed but one in 64 (the
# arenas' pages stay pinned as fragments do after decoding), RSS before and after the release.
FRAGMENTED = """
import ctypes, sys
from handler.heap import release_free_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
blocks = [libc.malloc(512) for _ in range(200_000)]
for b in blocks:
    ctypes.memset(b, 1, 512)
for i, b in enumerate(blocks):
    if i % 64:
        libc.free(b)
before = rss()
released = release_free_memory()
print(before, rss(), released)
"""


@glibc
def test_free_pages_in_the_middle_of_the_heap_go_back_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENTED], capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1])).stdout
    before, after, released = out.split()
    assert released == "True"
    # ~98 MB of the ~100 MB were freed; free() returned none of it, the release most of it.
    assert int(before) - int(after) > 60, out


def test_the_handler_releases_after_every_batch_even_a_failed_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from handler import slowfast_handler

    calls = []
    monkeypatch.setattr(slowfast_handler, "release_free_memory", lambda: calls.append(1) or True)
    handler = slowfast_handler.SlowFastHandler.__new__(slowfast_handler.SlowFastHandler)
    monkeypatch.setattr(handler, "_handle", lambda data, context: ["answer"] * len(data))
    assert handler.handle([{}, {}], None) == ["answer", "answer"] and calls == [1]

    def fails(data, context):
        raise RuntimeError("a bug")

    monkeypatch.setattr(handler, "_handle", fails)
    with pytest.raises(RuntimeError):
        handler.handle([{}], None)
    assert calls == [1, 1]


def test_release_is_a_no_op_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_libc", lambda: None)
    assert heap.release_free_memory() is False
