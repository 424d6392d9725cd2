"""The rolling buffer: the newest window's packets (or frames), and never much more.

Remux: packets from the last keyframe at or before the newest window's start, since a window's
clip must begin at a keyframe; if keyframes are further apart than ``max_seconds``, older packets
go anyway (the window's clip then starts at the oldest keyframe kept: a shorter, ``partial``
window). Encode: the frames of the newest window. Memory is thus bounded by ``max_seconds`` of
stream, whatever the server does: nothing waits here for an answer.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, List, Optional, Union

from client.live.clip import FrameRecord, PacketRecord, StreamFormat

Record = Union[PacketRecord, FrameRecord]


class WindowBuffer:
    def __init__(self, window: float, max_seconds: float) -> None:
        if max_seconds < window:
            raise ValueError(f"the buffer ({max_seconds:g} s) must hold a window ({window:g} s)")
        self.window, self.max_seconds = window, max_seconds
        self.records: Deque[Record] = deque()
        self.fmt: Optional[StreamFormat] = None
        self.frame_s = 0.04
        self.newest_end: Optional[float] = None
        self.first_t: Optional[float] = None
        self.bytes = 0

    def reset(self, fmt: Optional[StreamFormat] = None) -> None:
        """A new segment: nothing before it can share a clip with it."""
        self.records.clear()
        self.fmt = fmt or self.fmt
        self.newest_end = self.first_t = None
        self.bytes = 0

    def add(self, record: Record) -> None:
        if isinstance(record, PacketRecord):
            if self.fmt is not None and record.duration:
                self.frame_s = float(record.duration * self.fmt.time_base)
            self.bytes += len(record.data)
        elif self.records:
            step = record.t - self.records[-1].t
            if 0 < step < 1.0:
                self.frame_s = step
        self.records.append(record)
        end = record.t + self.frame_s
        self.newest_end = end if self.newest_end is None else max(self.newest_end, end)
        if self.first_t is None:
            self.first_t = record.t
        self._trim()

    def _drop_first(self) -> None:
        gone = self.records.popleft()
        if isinstance(gone, PacketRecord):
            self.bytes -= len(gone.data)

    def _trim(self) -> None:
        start = self.newest_end - self.window
        if self.records and isinstance(self.records[0], FrameRecord):
            while self.records and self.records[0].t < start - 1e-9:
                self._drop_first()
            return
        # Keep from the last keyframe at or before the window's start.
        keep_from = 0
        for index, record in enumerate(self.records):
            if record.t > start + 1e-9:
                break
            if record.keyframe:
                keep_from = index
        for _ in range(keep_from):
            self._drop_first()
        # Bounded whatever the keyframe interval: drop up to the next keyframe.
        while self.records and self.newest_end - self.records[0].t > self.max_seconds:
            self._drop_first()
            while self.records and not self.records[0].keyframe:
                self._drop_first()

    def full(self) -> bool:
        """A whole window has been read since the segment began."""
        return self.newest_end is not None and self.first_t is not None and self.newest_end - self.first_t >= self.window - 1e-6

    def snapshot(self) -> List[Record]:
        """The records of the newest window (remux: from its keyframe), oldest first."""
        start = self.newest_end - self.window
        if self.records and isinstance(self.records[0], FrameRecord):
            return [r for r in self.records if r.t >= start - 1e-9]
        return list(self.records)

    def seconds(self) -> float:
        return 0.0 if not self.records else self.newest_end - self.records[0].t
