"""Where a decode starts, and proof that it started in the right place.

``StreamReader`` holds one opened video stream and decodes it forward from start points it
verifies: the keyframe before a target (as the index says), further back by each of
``BACKOFF_SECONDS``, finally the first byte, the one position no broken index can get wrong. A
start is wrong when its first frame comes after the target (the seek landed late, or on a frame
that needs earlier ones), or when a packet fails or a frame is flagged corrupt before the target
(the decoder's state at the seek point was not the one a decode from the stream start would have:
parameter sets changed mid-stream and not repeated, a keyframe that is no clean random access
point). Each codec context is primed with the stream start before its first seek (``source.prime``).

Frames come out in timestamp order with their absolute times (s); non-reference frames nobody
needs are skipped inside FFmpeg (``skip_frame``). Every decoded frame counts against the
request's budget (``check``) and its size against the limits.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Set, Tuple

import av

from handler.decoding.budget import DecodeLimits
from handler.decoding.probe import Opened, VideoInfo, probe
from handler.decoding.source import check_pixels, open_container, packets, prime, video_stream

log = logging.getLogger(__name__)

# Frames are emitted in timestamp order through a small heap: codecs with packed B-frames
# (DivX/Xvid in AVI) hand frames out with non-monotonic timestamps.
REORDER_DEPTH = 4
# Around windows whose exact frames are unknown, non-reference frames are decoded this far out;
# a demux for timestamps also reads this far past a window's end (packets come in decode order).
SKIP_MARGIN_SECONDS = 0.5
# Timestamps in millisecond containers are rounded: a frame within this fraction of a frame
# interval after an instant still counts as shown at it. Must stay below 1/31 of a frame so that
# sampling keeps picking what uniform subsampling picks (see sampling.frame_times).
TIME_TOLERANCE_FRAMES = 0.02
# The time tolerance never goes below this (s), whatever the frame rate.
MIN_TIME_TOLERANCE_SECONDS = 1e-4
# When a seek lands after its target, seek this much further back before decoding from byte 0.
BACKOFF_SECONDS = (5.0, 30.0, 120.0)
# Decode errors of one pass written to the log; the rest are only counted.
LOGGED_ERRORS = 3

# A decoded frame and its absolute time (s).
Shown = Tuple[float, av.VideoFrame]


@dataclass
class DecodeStats:
    """Work counters of one decoder, for metrics, tests and benchmarks.

    ``restarts``: reopenings at the first byte (after seeks failed, or to prime again).
    ``errors``: decode errors in the decodes whose frames were used; ``discarded_errors``: those
    of decodes abandoned because errors followed their seek (``redecodes`` of them).
    ``frames_sampled`` / ``frames_corrupt_sampled``: frames handed out, and those flagged corrupt.
    """

    frames_decoded: int = 0
    errors: int = 0
    discarded_errors: int = 0
    redecodes: int = 0
    frames_corrupt_sampled: int = 0
    frames_sampled: int = 0
    restarts: int = 0


@dataclass
class DecodePass:
    """One forward decode from a start point: where it started and what it found (for messages)."""

    where: str = ""
    seeked: bool = False
    errors: int = 0  # packets refused and frames flagged corrupt
    frames: int = 0
    first: float = math.inf
    last: float = -math.inf

    def saw(self, t: float) -> None:
        self.frames += 1
        self.first, self.last = min(self.first, t), max(self.last, t)


class StreamReader:
    """One video stream of ``data``, opened, primed and probed; decoded forward from verified starts.

    ``check`` raises when the request's decoding budget is spent (called per packet). ``seek=False``
    starts every decode at the first byte. ``info``, ``start`` (first frame time, absolute s or
    None), ``time_base`` and ``probe_note`` (a sentence for the answer, or "") come from the probe.
    """

    def __init__(self, data: bytes, limits: DecodeLimits, *, check: Callable[[], None], seek: bool = True) -> None:
        self._data = data
        self._limits = limits
        self._check = check
        self._seeking = seek
        self.stats = DecodeStats()
        self._primed = False
        self.current: Optional[DecodePass] = None  # the decode whose frames are being used
        self.last_pass: Optional[DecodePass] = None
        # First frame time seen by a decode from byte 0: frames before it cannot be decoded at all.
        self._first_decodable: Optional[float] = None
        self._container = open_container(data)
        try:
            self._stream = video_stream(self._container, limits)
            prime(self._container, self._stream, check)
            self._primed = True
            probed = probe((self._container, self._stream), check=check, reopen=self._reopen)
        except BaseException:
            self._container.close()
            raise
        self.info: VideoInfo = probed.info
        self.start: Optional[float] = probed.start
        self.time_base = probed.time_base
        self.probe_note: str = probed.note or ""

    @property
    def origin(self) -> float:
        """Absolute time (s) of the video's start: times in windows are relative to it."""
        return self.start or 0.0

    @property
    def tolerance(self) -> float:
        """Seconds after an instant within which a frame still counts as shown at it."""
        # Rounding reaches half a tick of the time base at most: an exact time base (1/15360,
        # 1/90000) needs no more than the floor, so a 64-of-128 sampling's instants 1/63 of a frame
        # before the next frame still get the frame shown then, as uniform subsampling does.
        rounding = float(self.time_base) / 2 if self.time_base else math.inf
        return max(MIN_TIME_TOLERANCE_SECONDS, min(TIME_TOLERANCE_FRAMES * self.info.frame_interval, rounding))

    def errors_used(self) -> int:
        """Decode errors so far in the decodes whose frames were used (the current one included)."""
        return self.stats.errors + (self.current.errors if self.current is not None else 0)

    # -- start points ------------------------------------------------------------------------

    def _restart(self) -> None:
        """Reopen the file at its first byte. The new codec context is unprimed: a decode from
        here primes it, and a seek first does."""
        self._container.close()
        self._container = open_container(self._data)
        self._stream = video_stream(self._container, self._limits)
        self._primed = False
        self.stats.restarts += 1

    def _reopen(self) -> Opened:
        self._restart()
        return self._container, self._stream

    def _seek(self, seconds: float) -> None:
        """Seek to the keyframe at or before ``seconds`` (absolute stream time), as the index says."""
        if not self._primed:  # reopened since: learn the stream start again before leaving it
            self._restart()
            prime(self._container, self._stream, self._check)
            self._primed = True
        try:
            self._container.seek(int(math.floor(seconds / self.time_base)), stream=self._stream, backward=True)
        except av.error.FFmpegError:
            try:
                self._container.seek(0)
            except av.error.FFmpegError:  # a demuxer that cannot seek at all (a damaged index): byte 0
                self._restart()
                return
        self._stream.codec_context.flush_buffers()

    def _starts(self, target: float) -> Iterator[DecodePass]:
        """Position the demuxer, in turn, where a decode reaching ``target`` (absolute s) may start:
        the keyframe before it, further back by each of ``BACKOFF_SECONDS``, finally byte 0.

        The caller takes the next one while the last one proved wrong; the byte-0 one is final.
        With ``seek=False`` it is the only one.
        """
        points: List[float] = []
        if self._seeking:
            points = [target] + [target - back for back in BACKOFF_SECONDS if target - back > self.origin]
        for point in points:
            self._seek(point)
            yield DecodePass(where=f"from {point - self.origin:.2f} s to the end of the stream", seeked=True)
        self._restart()
        yield DecodePass(where="the whole stream from its first byte")

    # -- demuxing and decoding -----------------------------------------------------------------

    def timestamps(self, start: float, end: float) -> Optional[List[int]]:
        """pts of the packets whose time lies in [start, end) (absolute s), by demuxing alone.

        None when the container gives packets without timestamps. A seek is trusted only when
        it lands on a keyframe at or before ``start``, or well before ``start`` (no packet
        before the landing point can then show after ``start``); otherwise the demux starts
        further back, finally at byte 0.
        """
        tolerance = self.tolerance
        found: List[int] = []
        for pass_ in self._starts(start):
            found = []
            first = True
            trusted = not pass_.seeked
            for packet in packets(self._container, self._stream):
                self._check()
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    return None
                t = packet.pts * self.time_base
                if first:
                    first = False
                    decode_time = packet.dts * self.time_base if packet.dts is not None else t
                    trusted = trusted or (packet.is_keyframe and t <= start + tolerance) or (
                        decode_time <= start - SKIP_MARGIN_SECONDS
                    )
                    if not trusted:
                        break
                if start - tolerance <= t < end - tolerance:
                    found.append(packet.pts)
                # Packets come in decode order: past the end plus a reorder margin, nothing is left.
                if packet.dts is not None and packet.dts * self.time_base > end + SKIP_MARGIN_SECONDS:
                    break
            if trusted and not first:
                return found
            log.info("seek to %.3f s for timestamps is not trusted; demuxing from further back", start)
        return found

    def _frames_from(self, needed: Set[int], spans: List[Tuple[float, float]], pass_: DecodePass) -> Iterator[Shown]:
        """Decoded frames with their absolute times, in timestamp order, from the current position.

        Packets whose pts is in ``needed`` or whose time is inside one of ``spans`` (sorted,
        disjoint, absolute s) are decoded in full; elsewhere only reference frames are. Packets
        refused and frames flagged corrupt are counted in ``pass_.errors``.
        """
        ctx = self._stream.codec_context
        lows = [lo for lo, _ in spans]
        mode = None
        heap: List[Tuple[float, int, av.VideoFrame]] = []
        order = itertools.count()
        last_time = -math.inf
        for packet in packets(self._container, self._stream):
            self._check()
            skip = False
            if packet.pts is not None and packet.pts not in needed:
                t = packet.pts * self.time_base
                i = bisect.bisect_right(lows, t) - 1
                skip = not (i >= 0 and t <= spans[i][1])
            wanted = "NONREF" if skip else "DEFAULT"
            if wanted != mode:
                ctx.skip_frame = mode = wanted
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                pass_.errors += 1
                if pass_.errors <= LOGGED_ERRORS:
                    log.info("decode error (continuing): %s", exc)
                continue
            for frame in frames:
                self.stats.frames_decoded += 1
                check_pixels(frame.width, frame.height, "decoded", self._limits)
                pass_.errors += frame.is_corrupt
                t = frame.pts * self.time_base if frame.pts is not None else last_time + self.info.frame_interval
                last_time = max(last_time, t)
                heapq.heappush(heap, (t, next(order), frame))
                if len(heap) > REORDER_DEPTH:
                    t_out, _, f_out = heapq.heappop(heap)
                    yield t_out, f_out
        while heap:
            t_out, _, f_out = heapq.heappop(heap)
            yield t_out, f_out

    def frames_covering(
        self, target: float, *, needed: Set[int], spans: List[Tuple[float, float]]
    ) -> Iterator[Shown]:
        """Frames, from the last one at or before ``target`` on, of a decode that reaches ``target``
        in the state a decode from the stream start would have.

        A decode that starts after a seek is abandoned, and the next starts further back (finally
        at byte 0, whose frames are accepted whatever they are), when its first frame comes after
        ``target``, or when a packet fails or a frame is flagged corrupt before ``target`` (its
        lead-in). Lead-in frames before the last one are dropped here (counted in the pass).
        ``needed``/``spans``: what to decode in full (``_frames_from``). ``current`` is the pass
        whose frames are being handed out, ``last_pass`` the last one tried (for messages).
        """
        self.last_pass = None
        for pass_ in self._starts(target):
            self.last_pass = pass_
            frames = self._frames_from(needed, spans, pass_)
            try:
                verdict = yield from self._accepted(frames, pass_, target)
            finally:
                frames.close()
                if self.current is pass_:
                    self.stats.errors += pass_.errors
                    self.current = None
            if verdict:
                return
            self.stats.discarded_errors += pass_.errors
            if pass_.frames:
                self.stats.redecodes += 1

    def _accepted(self, frames: Iterator[Shown], pass_: DecodePass, target: float) -> Iterator[Shown]:
        """The frames of one pass, unless its start proves wrong (then returns False, yielding none)."""
        tolerance = self.tolerance
        held: Optional[Shown] = None  # the last lead-in frame
        for t, frame in frames:
            first = pass_.frames == 0
            pass_.saw(t)
            if first and not pass_.seeked:
                self._primed = True
                if self._first_decodable is None:
                    self._first_decodable = t
            if pass_.seeked and first and t > target + tolerance and not (
                self._first_decodable is not None and t <= self._first_decodable + tolerance
            ):
                log.info("decoding %s starts at %.3f s, after %.3f s: backing off", pass_.where, t, target)
                return False
            if t <= target + tolerance:
                if pass_.seeked and pass_.errors:
                    log.info("%d decode error(s) decoding %s before %.3f s: decoding again from further back",
                             pass_.errors, pass_.where, target)
                    return False
                held = (t, frame)
                continue
            if self.current is not pass_:
                self.current = pass_
                if held is not None:
                    yield held
            yield t, frame
        if pass_.seeked and pass_.frames == 0:
            return False  # nothing decodable from there: further back
        if pass_.seeked and pass_.errors and self.current is not pass_:
            return False  # the pass ended inside its lead-in, with errors
        if self.current is not pass_:
            self.current = pass_
            if held is not None:
                yield held
        return True

    def close(self) -> None:
        self._container.close()
