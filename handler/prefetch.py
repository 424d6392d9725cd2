"""Pull an iterator a bounded number of items ahead of its consumer, in a thread of its own.

The handler's windows are decoded by a generator (``SlowFastHandler._jobs``) that the run pulls
one window at a time; pulled in a thread, the next window decodes while the current one's forward
runs. Both spend their time in C code that releases the GIL (FFmpeg's decode, OpenVINO's or
torch's forward: bench/overlap.py measures it), so on a CPU with idle cycles during either the two
overlap.

Bounds and guarantees:
- the producer is never more than ``ahead`` items ahead: it takes a slot before each ``next()``
  and the consumer gives one back as it takes an item, so items made but not yet taken (and the
  memory they hold: decoded frames) are at most ``ahead``;
- items come out in the order the iterator made them; an exception the iterator raises comes out
  in its place, in the consumer's thread, and ends the iteration;
- ``close`` (the ``with`` block's end, on any exit) stops the producer after the item it is making,
  joins the thread and closes the iterator, so whatever the caller frees next (decoders) is no
  longer used.
"""

from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from typing import Any, Generic, Iterable, Iterator, Optional, Tuple, TypeVar

T = TypeVar("T")

# Marks the end of the iteration in the queue (with the exception that ended it, or None).
_END = object()


class Prefetcher(Generic[T]):
    """An iterator over ``items``, made in a daemon thread at most ``ahead`` (>= 1) items early."""

    def __init__(self, items: Iterable[T], ahead: int, name: str = "prefetch") -> None:
        if ahead < 1:
            raise ValueError("ahead must be >= 1")
        self._items = iter(items)
        self._slots = threading.Semaphore(ahead)
        self._made: "queue.SimpleQueue[Tuple[Any, Optional[BaseException]]]" = queue.SimpleQueue()
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while True:
                self._slots.acquire()
                if self._stop.is_set():
                    return
                try:
                    item = next(self._items)
                except StopIteration:
                    self._made.put((_END, None))
                    return
                self._made.put((item, None))
        except BaseException as error:  # noqa: BLE001 (handed to the consumer, raised there)
            self._made.put((_END, error))

    def __iter__(self) -> "Prefetcher[T]":
        return self

    def __next__(self) -> T:
        if self._ended:
            raise StopIteration
        item, error = self._made.get()
        if item is _END:
            self._ended = True
            self._thread.join()
            if error is not None:
                raise error
            raise StopIteration
        self._slots.release()
        return item

    def close(self) -> None:
        """Stop making items (the one being made is finished first), join the thread, close the iterator."""
        self._stop.set()
        self._slots.release()  # a producer waiting for a slot wakes up and sees the stop
        self._thread.join()
        self._ended = True
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


@contextmanager
def prefetched(items: Iterable[T], ahead: int) -> Iterator[Iterator[T]]:
    """``items`` made up to ``ahead`` items ahead of use in a thread (``Prefetcher``), stopped and
    joined when the block ends however it ends; ``ahead`` 0: ``items`` as they are, pulled on use."""
    if ahead < 0:
        raise ValueError("ahead must be >= 0")
    if ahead == 0:
        yield iter(items)
        return
    prefetcher = Prefetcher(items, ahead)
    try:
        yield prefetcher
    finally:
        prefetcher.close()
