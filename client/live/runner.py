"""Every hop, the newest window goes to the server, or is skipped: never a queue.

``concurrency`` windows may be in flight at once. At a hop with all of them busy, a live source's
window is skipped (counted) rather than queued, so the answer shown is never older than one
answer's time plus a hop; a file read without ``--realtime`` waits instead (every window answered).
Answers are reported in window order, whatever order they come back in.

One window's trouble is that window's alone: an exception while making, saving or sending its clip
makes its result a failure naming the step (``clip_failed``, ``save_failed``, ``send_failed``); one
while showing or writing it is handed to ``on_report_error`` (``report_failed``); either way the
run and the report go on. ``close()`` ends the report: windows still in flight are reported as
``abandoned``, in order, and nothing is emitted after it (``--out`` can then be closed).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

from client.live.buffer import WindowBuffer
from client.live.clip import Clip, FrameRecord, PacketRecord, StreamFormat, encode, remux
from client.live.source import Connected, Dropped, Reader
from client.transport import Answer, Failure, Outcome, Transport


@dataclass
class WindowResult:
    """One window's outcome: its clip (without the bytes) and the server's answer or failure."""

    index: int
    start: float
    end: float
    segment: int
    mode: str
    clip_bytes: int
    fields: Dict[str, str]
    outcome: Outcome
    latency_s: float  # from the window's last frame read to its answer
    partial: bool = False
    stream_offset: float = 0.0  # session time minus the source's own timestamps (seconds)


@dataclass
class LiveStats:
    sent: int = 0
    skipped: int = 0
    answered: int = 0
    failed: int = 0
    drops: int = 0
    latencies_s: List[float] = field(default_factory=list)
    in_flight_max: int = 0
    buffer_bytes_max: int = 0
    buffer_seconds_max: float = 0.0


class InOrder:
    """Hands results to ``emit`` in window order (an index is reported once all before it are).

    A result leaves the queue only once handed on: when ``emit`` raises, ``failed(result, error)``
    reports it instead, and the next window follows, so the report never stalls behind one
    window. After ``close`` nothing more is emitted.
    """

    def __init__(self, emit: Callable[[WindowResult], None],
                 failed: Optional[Callable[[WindowResult, Exception], None]] = None) -> None:
        self.emit, self.failed = emit, failed
        self.waiting: Dict[int, WindowResult] = {}
        self.next, self.lock, self.closed = 0, threading.Lock(), False

    def _hand_on(self, result: WindowResult) -> None:
        try:
            self.emit(result)
        except Exception as exc:  # noqa: BLE001 -- one window's report must not stop the others'
            if self.failed is None:
                raise
            self.failed(result, exc)

    def done(self, result: WindowResult) -> None:
        with self.lock:
            if self.closed:
                return
            self.waiting[result.index] = result
            while self.next in self.waiting:
                self._hand_on(self.waiting[self.next])
                del self.waiting[self.next]
                self.next += 1

    def close(self, upto: int, stand_in: Callable[[int], WindowResult]) -> int:
        """Emit every window before ``upto`` not emitted yet, ``stand_in(index)`` for those not
        back; then emit nothing more. Returns how many were stood in for."""
        with self.lock:
            if self.closed:
                return 0
            missing = 0
            for index in range(self.next, upto):
                if index not in self.waiting:
                    missing += 1
                self._hand_on(self.waiting.pop(index, None) or stand_in(index))
            self.next, self.closed = max(self.next, upto), True
            return missing


class LiveRunner:
    """Reads ``reader``'s events into a WindowBuffer and sends a window every ``hop`` seconds of
    stream time, at most ``concurrency`` at once; ``on_result`` gets each answer in order,
    ``note`` each connection change."""

    def __init__(self, reader: Reader, transport: Transport, fields: Mapping[str, str], window: float,
                 hop: float, concurrency: int, on_result: Callable[[WindowResult], None],
                 note: Callable[[str], None], max_buffer_seconds: float = 30.0,
                 save_clips: Optional[Path] = None, max_windows: Optional[int] = None,
                 on_report_error: Optional[Callable[[WindowResult, Exception], None]] = None,
                 window_fields: Callable[[Dict[str, str]], Dict[str, str]] = dict) -> None:
        self.reader, self.transport, self.fields = reader, transport, dict(fields)
        # The clip's window (start/end from its first frame) as its request says it: as they are
        # for the classifier, its keyframe for an action detector (--people).
        self.window_fields = window_fields
        self.window, self.hop, self.concurrency = window, hop, concurrency
        self.buffer = WindowBuffer(window, max(max_buffer_seconds, window + hop))
        self.order = InOrder(self._emit, self._report_failed)
        self.on_result, self.note = on_result, note
        self.on_report_error = on_report_error
        self.windows: Dict[int, tuple] = {}  # index -> (start, end, segment) of each window in flight
        self.save_clips, self.max_windows = save_clips, max_windows
        self.stats = LiveStats()
        self.slots = threading.Semaphore(concurrency)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.next_tick: Optional[float] = None
        self.segment = 0
        self.fmt: Optional[StreamFormat] = None
        self.threads: List[threading.Thread] = []
        if save_clips is not None:
            save_clips.mkdir(parents=True, exist_ok=True)

    # -- reading ---------------------------------------------------------------------------

    def run(self) -> LiveStats:
        """Until the source ends (a file), gives up, ``max_windows`` were sent, or stop()."""
        for event in self.reader.events():
            if isinstance(event, Connected):
                self.fmt, self.segment = event.format, event.segment
                self.buffer.reset(event.format)
                self.next_tick = None
                self.note(f"{'connected' if event.segment == 0 else 'reconnected'}: {event.note} (segment {event.segment})")
            elif isinstance(event, Dropped):
                self.buffer.reset()
                self.next_tick = None
                if event.retry_in is None:
                    self.note(f"source ended: {event.reason}")
                    break
                self.stats.drops += 1
                self.note(f"stream dropped ({event.reason}); reconnecting in {event.retry_in:.1f} s")
            else:
                self._add(event)
            if self.max_windows is not None and self.stats.sent >= self.max_windows:
                break
        self.reader.stopped = True
        return self.stats

    def stop(self) -> None:
        self.reader.stopped = True

    def wait(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s in all) for the windows in flight to be answered."""
        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def close(self, why: str = "no answer before the run ended") -> int:
        """End the report: each window still in flight is reported failed (``abandoned``, ``why``)
        in its place in the order; later answers are dropped. Returns how many were abandoned."""
        def abandoned(index: int) -> WindowResult:
            start, end, segment = self.windows.get(index, (0.0, 0.0, self.segment))
            return WindowResult(index, start, end, segment, "none", 0, {}, Failure("abandoned", why), 0.0)

        return self.order.close(self.stats.sent, abandoned)

    def _add(self, record) -> None:
        self.buffer.add(record)
        self.stats.buffer_bytes_max = max(self.stats.buffer_bytes_max, self.buffer.bytes)
        self.stats.buffer_seconds_max = max(self.stats.buffer_seconds_max, self.buffer.seconds())
        if not self.buffer.full():
            return
        end = self.buffer.newest_end
        if self.next_tick is None:
            self.next_tick = end
        if end < self.next_tick - 1e-6:
            return
        missed = 0
        while self.next_tick + self.hop <= end + 1e-6:  # the reader fell behind by whole hops
            self.next_tick += self.hop
            missed += 1
        self.next_tick += self.hop
        self.stats.skipped += missed
        self._dispatch(end)

    # -- sending ---------------------------------------------------------------------------

    def _dispatch(self, end: float) -> None:
        live = self.reader.spec.live
        if not self.slots.acquire(blocking=not live):
            self.stats.skipped += 1
            return
        records = self.buffer.snapshot()
        index = self.stats.sent
        self.stats.sent += 1
        with self.lock:
            self.windows[index] = (end - self.window, end, self.segment)
            self.in_flight += 1
            self.stats.in_flight_max = max(self.stats.in_flight_max, self.in_flight)
        thread = threading.Thread(target=self._send, args=(index, records, end - self.window, end, self.segment,
                                                           self.fmt), daemon=True)
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def _send(self, index: int, records, start: float, end: float, segment: int, fmt: StreamFormat) -> None:
        try:
            self.order.done(self._window(index, records, start, end, segment, fmt))
        finally:
            with self.lock:
                self.in_flight -= 1
                self.windows.pop(index, None)
            self.slots.release()

    def _window(self, index: int, records, start: float, end: float, segment: int,
                fmt: StreamFormat) -> WindowResult:
        """This window's result: the answer, or a failure naming the step that raised (never raises)."""
        clip: Optional[Clip] = None
        sent: Dict[str, str] = {}
        step = "clip_failed"
        try:
            clip = self._clip(records, start, end, fmt)
            sent = self.window_fields(clip.fields)
            if self.save_clips is not None:
                step = "save_failed"
                suffix = ".ts" if clip.container == "mpegts" else ".mkv"
                (self.save_clips / f"window_{index:06d}{suffix}").write_bytes(clip.data)
            step = "send_failed"
            outcome: Outcome = self.transport.send(clip.data, {**self.fields, **sent})
        except Exception as exc:  # noqa: BLE001 -- this window's failure, not the run's
            outcome = Failure(step, f"{exc.__class__.__name__}: {exc}")
        if clip is None:
            return WindowResult(index, start, end, segment, "none", 0, {}, outcome, 0.0)
        return WindowResult(index, clip.start, clip.end, segment, clip.mode, len(clip.data), sent,
                            outcome, time.monotonic() - clip.last_read_at, clip.partial, clip.stream_offset)

    @staticmethod
    def _clip(records, start: float, end: float, fmt: StreamFormat) -> Clip:
        if records and isinstance(records[0], FrameRecord):
            return encode(records, start, end)
        assert all(isinstance(r, PacketRecord) for r in records)
        return remux(records, fmt, start, end)

    def _emit(self, result: WindowResult) -> None:
        # Counted as reported (in order, under InOrder's lock), so the counts shown match the lines.
        if isinstance(result.outcome, Answer):
            self.stats.answered += 1
            self.stats.latencies_s.append(result.latency_s)
        else:
            self.stats.failed += 1
        self.on_result(result)

    def _report_failed(self, result: WindowResult, error: Exception) -> None:
        """Showing or writing ``result`` raised ``error``: the window counts as failed, and
        ``on_report_error`` (else ``note``) says so; nothing here may stop the report."""
        if isinstance(result.outcome, Answer):
            self.stats.answered -= 1
            self.stats.failed += 1
        try:
            if self.on_report_error is not None:
                self.on_report_error(result, error)
            else:
                self.note(f"window {result.index}: {error.__class__.__name__}: {error} while reporting it")
        except Exception:  # noqa: BLE001 -- even the error report failed (e.g. stderr gone): go on
            pass
