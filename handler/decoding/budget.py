"""How much a request may decode: the limits of the service and the wall-time budget of a request."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, TypeVar

from handler.errors import RequestError

T = TypeVar("T")

# What a per-window budget is spent on, in its 422's words (a caller with another unit names its own).
STREAMED_WINDOW = "one window of this streamed timeline"


@dataclass(frozen=True)
class DecodeLimits:
    """``max_frame_pixels``: width x height, declared or decoded. ``max_decode_seconds``: wall time
    to decode one request (the default deadline). ``max_aspect_ratio``: long/short side of the
    working frame; beyond it the central region of that aspect is used."""

    max_frame_pixels: int
    max_decode_seconds: float
    threads: int = 0
    max_aspect_ratio: float = 4.0


class DecodeBudget:
    """Wall time a request may spend *inside* its decoders, shared by all its videos.

    Only time spent opening, probing and sampling counts: decoding is lazy (each window is
    decoded when the model needs it), so a plain deadline would also count the forwards of the
    batch in between and refuse requests for the model's slowness. ``per_window``: the budget
    starts again after each window handed out (a streamed timeline, whose every line the client
    receives as it is computed); ``unit`` names what one such budget covers in the 422 (a window of
    a streamed timeline; an action detector's stream says a keyframe). ``clock``: seconds from any
    origin (tests pass their own).
    """

    def __init__(self, seconds: float, per_window: bool = False, clock: Callable[[], float] = time.monotonic,
                 unit: str = STREAMED_WINDOW) -> None:
        self.seconds = float(seconds)
        self.per_window = per_window
        self.unit = unit
        self.clock = clock
        self.spent = 0.0
        self._since: Optional[float] = None

    @contextmanager
    def running(self) -> Iterator[None]:
        """Count the time of the ``with`` body (re-entrant: only the outermost one counts)."""
        if self._since is not None:
            yield
            return
        self._since = self.clock()
        try:
            yield
        finally:
            self.spent += self.clock() - self._since
            self._since = None

    def timed(self, items: Iterable[T]) -> Iterator[T]:
        """``items`` with the time spent producing each counted (and reset per window if asked)."""
        iterator = iter(items)
        while True:
            with self.running():
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item
            if self.per_window:
                self.spent = 0.0

    def check(self) -> None:
        """422 ``decode_timeout`` once the time counted exceeds the budget."""
        running = self.clock() - self._since if self._since is not None else 0.0
        if self.spent + running > self.seconds:
            what = self.unit if self.per_window else "this request"
            raise RequestError(
                422, "decode_timeout", f"decoding {what} took longer than the limit of {self.seconds:g} s",
            )
