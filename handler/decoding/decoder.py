"""Video bytes -> sampled RGB frames, decoding only what the sampled windows need.

Windows are taken in time order. Windows that touch, overlap or lie close together form a run,
decoded in ONE forward pass: seek once to the keyframe before the run, decode forward, hand out
each window as soon as its last sampled frame is seen, stop after the run. Non-reference frames
that no window samples are skipped by FFmpeg (``skip_frame``); only sampled frames are converted
to RGB, scaled (and, for extreme aspect ratios, cropped) to the working size inside FFmpeg.

Seeks are verified, not trusted: when a seek lands after the point asked for (MPEG-TS, open GOPs,
streams without keyframe flags, broken indexes) the decoder backs off further and finally decodes
from the first byte of the file, within the request's decoding budget. Audio is never decoded. Every
problem with the input becomes a ``RequestError`` with a 4xx status.

A window reached by a seek is decoded as it would be from the start of the stream:

- Decoder state that lives at the start of a stream (the encoder's SEI, from which FFmpeg's H.264
  decoder learns an old x264's build and applies its bug workarounds; MPEG-4 encoder user data)
  is learnt once: each codec context decodes the stream's first packets up to its first keyframe
  before it is used after a seek (``_prime``).
- Decode errors are seen, not only logged: a packet FFmpeg refuses, or a frame it hands out
  flagged corrupt (concealed damage), counts as an error. Errors in the frames a seeked decode
  passes before reaching the window (its lead-in) mean the decoder's state at the seek point was
  wrong (parameter sets changed mid-stream and not repeated, a keyframe that is no clean random
  access point): the window is decoded again from further back, finally from the first byte.
  Errors left after that are the file's own; the window reports how many sampled frames they hit.

FFmpeg's log is not used for this: PyAV routes it through Python with the GIL from FFmpeg's
frame-threading workers, which deadlocks (PyAV issues #751, #909), and its per-thread capture does
not see those workers' messages; the per-frame flags are exact and need neither.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, List, Optional, Sequence, Set, Tuple

import av
import numpy as np
import torch

from handler.decoding.budget import DecodeBudget, DecodeLimits
from handler.decoding.probe import Opened, VideoInfo, probe
from handler.decoding.source import check_pixels, open_container, prime, video_stream
from handler.errors import RequestError
from handler.sampling import Window, uniform_instants
from handler.transforms import rotate_frames
from handler.working_frame import FrameConverter, WorkingGeometry, working_geometry

log = logging.getLogger(__name__)

# Frames are emitted in timestamp order through a small heap: codecs with packed B-frames
# (DivX/Xvid in AVI) hand frames out with non-monotonic timestamps.
REORDER_DEPTH = 4
# Around windows whose exact frames are unknown, non-reference frames are decoded this far out.
SKIP_MARGIN_SECONDS = 0.5
# Timestamps in millisecond containers are rounded: a frame within this fraction of a frame
# interval after an instant still counts as shown at it. Must stay below 1/31 of a frame so that
# sampling keeps picking what uniform subsampling picks (see sampling.frame_times).
TIME_TOLERANCE_FRAMES = 0.02
# Windows closer than this are decoded in one forward pass: decoding the reference frames of a
# short gap costs less than a seek, which re-decodes from a keyframe (often 2-10 s back).
REJOIN_GAP_SECONDS = 2.0
# When a seek lands after its target, seek this much further back before decoding from byte 0.
BACKOFF_SECONDS = (5.0, 30.0, 120.0)
# Codecs whose packets each carry exactly one frame with that packet's timestamp: for these the
# frames no window samples are known from packet timestamps and their non-reference ones skipped
# even inside windows. Others (MPEG-4 ASP with packed B-frames...) only skip outside windows.
ONE_FRAME_PER_PACKET = {"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "libaom-av1"}
# The time tolerance never goes below this (s), whatever the frame rate.
MIN_TIME_TOLERANCE_SECONDS = 1e-4


# Chooses the instants (s from the video start) to show in a window, from the timestamps of the
# frames in it (None when the container has none): the caller's sampling policy.
InstantChooser = Callable[[Window, Optional[List[float]]], List[float]]


@dataclass
class SampledWindow:
    """Frames sampled for one window: ``frames`` is (T, H, W, 3) uint8, already upright.

    ``frames_decoded`` / ``decode_errors`` count the work done since the previous window was
    handed out (errors: packets FFmpeg refused and frames it flagged corrupt, in the decodes whose
    frames were used); ``corrupt_frames``: how many of the T sampled frames were flagged corrupt;
    ``warnings`` are sentences for the answer (e.g. the frame was cropped)."""

    frames: torch.Tensor
    window: Tuple[float, float]
    frames_decoded: int
    decode_errors: int
    warnings: List[str] = field(default_factory=list)
    corrupt_frames: int = 0


@dataclass
class DecodeStats:
    """Work counters of one decoder, for metrics, tests and benchmarks.

    ``restarts``: reopenings at the first byte (after seeks failed, or to prime again).
    ``errors``: decode errors in the decodes whose frames were used; ``discarded_errors``: those
    of decodes abandoned because errors followed their seek (``redecodes`` of them).
    """

    frames_decoded: int = 0
    errors: int = 0
    discarded_errors: int = 0
    redecodes: int = 0
    frames_corrupt_sampled: int = 0
    frames_sampled: int = 0
    restarts: int = 0


@dataclass
class _Plan:
    """One window being sampled: its target instants (absolute s) and the frames chosen so far."""

    window: Tuple[float, float]
    start: float  # absolute
    targets: List[float]
    needed: Optional[Set[int]]  # pts of the frames sampled, when known exactly
    slots: List[np.ndarray] = field(default_factory=list)
    geometry: Optional[WorkingGeometry] = None
    corrupt: int = 0  # slots filled with a frame flagged corrupt

    @property
    def done(self) -> bool:
        return len(self.slots) == len(self.targets)


@dataclass
class _Pass:
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


def _rotation_of(frame: av.VideoFrame) -> int:
    """Display-matrix rotation of a decoded frame, counter-clockwise degrees (0 if none)."""
    try:
        return int(round(frame.rotation or 0))
    except (AttributeError, TypeError, ValueError):
        return 0


class VideoDecoder:
    """An opened video held in memory; sample windows of frames from it.

    ``budget``: the decoding time allowed, shared by every video of one request (default: its
    own ``limits.max_decode_seconds``); only time inside this decoder counts against it.
    Use as a context manager. ``info`` is available after construction; ``notes`` collects
    sentences for the answer's warnings (truncated file, cropped frames); ``stats`` counts work.
    ``seek=False`` decodes every run from the first byte: the one-pass decode that every seeked
    window must equal (tests compare the two).
    """

    def __init__(
        self, data: bytes, limits: DecodeLimits, short_side: int, *,
        budget: Optional[DecodeBudget] = None, seek: bool = True,
    ) -> None:
        self._budget = budget or DecodeBudget(limits.max_decode_seconds)
        self._seeking = seek
        with self._budget.running():
            self._setup(data, limits, short_side)

    def _setup(self, data: bytes, limits: DecodeLimits, short_side: int) -> None:
        self._data = data
        self._limits = limits
        self._short_side = short_side
        self.stats = DecodeStats()
        self._notes: List[str] = []
        self._primed = False
        self._current: Optional[_Pass] = None  # the decode whose frames are being used
        self._last_pass: Optional[_Pass] = None
        self._converter = FrameConverter()
        self._converted: Optional[Tuple[av.VideoFrame, WorkingGeometry, np.ndarray]] = None
        # First frame time seen by a decode from byte 0: frames before it cannot be decoded at all.
        self._first_decodable: Optional[float] = None
        self._mark = (0, 0)
        self._container = open_container(data)
        try:
            self._stream = video_stream(self._container, limits)
            prime(self._container, self._stream, self._check_deadline)
            self._primed = True
            probed = probe((self._container, self._stream), check=self._check_deadline, reopen=self._reopen)
        except BaseException:
            self._container.close()
            raise
        self.info, self._start, self._time_base = probed.info, probed.start, probed.time_base
        if probed.note:
            self._notes.append(probed.note)

    # -- opening, seeking and decoding ------------------------------------------------------

    def _restart(self) -> None:
        """Reopen the file at its first byte: the one position no broken index can get wrong.

        The new codec context is unprimed: a decode from here primes it, and a seek first does."""
        self._container.close()
        self._container = open_container(self._data)
        self._stream = video_stream(self._container, self._limits)
        self._primed = False
        self.stats.restarts += 1

    def _reopen(self) -> Opened:
        self._restart()
        return self._container, self._stream

    @property
    def _tolerance(self) -> float:
        # Rounding reaches half a tick of the time base at most: an exact time base (1/15360,
        # 1/90000) needs no more than the floor, so a 64-of-128 sampling's instants 1/63 of a frame
        # before the next frame still get the frame shown then, as uniform subsampling does.
        rounding = float(self._time_base) / 2 if self._time_base else math.inf
        return max(MIN_TIME_TOLERANCE_SECONDS, min(TIME_TOLERANCE_FRAMES * self.info.frame_interval, rounding))

    def _check_deadline(self) -> None:
        self._budget.check()

    def _seek(self, seconds: float) -> None:
        """Seek to the keyframe at or before ``seconds`` (absolute stream time), as the index says."""
        if not self._primed:  # reopened since: learn the stream start again before leaving it
            self._restart()
            prime(self._container, self._stream, self._check_deadline)
            self._primed = True
        try:
            self._container.seek(int(math.floor(seconds / self._time_base)), stream=self._stream, backward=True)
        except av.error.FFmpegError:
            self._container.seek(0)
        self._stream.codec_context.flush_buffers()

    def _starts(self, target: float) -> Iterator[_Pass]:
        """Position the demuxer, in turn, where a decode reaching ``target`` (absolute s) may start:
        the keyframe before it, further back by each of ``BACKOFF_SECONDS``, finally byte 0.

        The caller takes the next one while the last one proved wrong; the byte-0 one is final.
        With ``seek=False`` it is the only one.
        """
        origin = self._start or 0.0
        points: List[float] = []
        if self._seeking:
            points = [target] + [target - back for back in BACKOFF_SECONDS if target - back > origin]
        for point in points:
            self._seek(point)
            yield _Pass(where=f"from {point - origin:.2f} s to the end of the stream", seeked=True)
        self._restart()
        yield _Pass(where="the whole stream from its first byte")

    def _timestamps(self, start: float, end: float) -> Optional[List[int]]:
        """pts of the packets whose time lies in [start, end) (absolute s), by demuxing alone.

        None when the container gives packets without timestamps. A seek is trusted only when
        it lands on a keyframe at or before ``start``, or well before ``start`` (no packet
        before the landing point can then show after ``start``); otherwise the demux starts
        further back, finally at byte 0.
        """
        tolerance = self._tolerance
        found: List[int] = []
        for pass_ in self._starts(start):
            found = []
            first = True
            trusted = not pass_.seeked
            for packet in self._container.demux(self._stream):
                self._check_deadline()
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    return None
                t = packet.pts * self._time_base
                if first:
                    first = False
                    decode_time = packet.dts * self._time_base if packet.dts is not None else t
                    trusted = trusted or (packet.is_keyframe and t <= start + tolerance) or (
                        decode_time <= start - SKIP_MARGIN_SECONDS
                    )
                    if not trusted:
                        break
                if start - tolerance <= t < end - tolerance:
                    found.append(packet.pts)
                # Packets come in decode order: past the end plus a reorder margin, nothing is left.
                if packet.dts is not None and packet.dts * self._time_base > end + SKIP_MARGIN_SECONDS:
                    break
            if trusted and not first:
                return found
            log.info("seek to %.3f s for timestamps is not trusted; demuxing from further back", start)
        return found

    def _frames_from(
        self, needed: Set[int], spans: List[Tuple[float, float]], pass_: _Pass
    ) -> Iterator[Tuple[float, av.VideoFrame]]:
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
        for packet in self._container.demux(self._stream):
            self._check_deadline()
            skip = False
            if packet.pts is not None and packet.pts not in needed:
                t = packet.pts * self._time_base
                i = bisect.bisect_right(lows, t) - 1
                skip = not (i >= 0 and t <= spans[i][1])
            wanted = "NONREF" if skip else "DEFAULT"
            if wanted != mode:
                ctx.skip_frame = mode = wanted
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                pass_.errors += 1
                if pass_.errors <= 3:
                    log.info("decode error (continuing): %s", exc)
                continue
            for frame in frames:
                self.stats.frames_decoded += 1
                check_pixels(frame.width, frame.height, "decoded", self._limits)
                pass_.errors += frame.is_corrupt
                if frame.pts is not None:
                    t = frame.pts * self._time_base
                else:
                    t = last_time + self.info.frame_interval
                last_time = max(last_time, t)
                heapq.heappush(heap, (t, next(order), frame))
                if len(heap) > REORDER_DEPTH:
                    t_out, _, f_out = heapq.heappop(heap)
                    yield t_out, f_out
        while heap:
            t_out, _, f_out = heapq.heappop(heap)
            yield t_out, f_out

    def _frames_covering(
        self, target: float, needed: Set[int], spans: List[Tuple[float, float]]
    ) -> Iterator[Tuple[_Pass, float, av.VideoFrame]]:
        """Frames, from the last one at or before ``target`` on, of a decode that reaches ``target``
        in the state a decode from the stream start would have.

        A decode that starts after a seek is abandoned, and the next starts further back (finally
        at byte 0, whose frames are accepted whatever they are), when its first frame comes after
        ``target`` (the seek landed late, or on a frame that needs earlier ones), or when a packet
        fails or a frame is flagged corrupt before ``target`` (its lead-in): the decoder's state at
        the seek point was not the one-pass state. Lead-in frames before the last one are dropped
        here (counted in the pass). Each item carries its pass: where it started, what it found.
        """
        for pass_ in self._starts(target):
            self._last_pass = pass_
            frames = self._frames_from(needed, spans, pass_)
            try:
                verdict = yield from self._accepted(frames, pass_, target)
            finally:
                frames.close()
                if self._current is pass_:
                    self.stats.errors += pass_.errors
                    self._current = None
            if verdict:
                return
            self.stats.discarded_errors += pass_.errors
            if pass_.frames:
                self.stats.redecodes += 1

    def _accepted(
        self, frames: Iterator[Tuple[float, av.VideoFrame]], pass_: _Pass, target: float
    ) -> Iterator[Tuple[_Pass, float, av.VideoFrame]]:
        """The items of one pass, unless its start proves wrong (then returns False, yielding none)."""
        tolerance = self._tolerance
        held: Optional[Tuple[float, av.VideoFrame]] = None  # the last lead-in frame
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
            if self._current is not pass_:
                self._current = pass_
                if held is not None:
                    yield pass_, held[0], held[1]
            yield pass_, t, frame
        if pass_.seeked and pass_.frames == 0:
            return False  # nothing decodable from there: further back
        if pass_.seeked and pass_.errors and self._current is not pass_:
            return False  # the pass ended inside its lead-in, with errors
        if self._current is not pass_:
            self._current = pass_
            if held is not None:
                yield pass_, held[0], held[1]
        return True

    # -- sampling ------------------------------------------------------------------------

    def sample(self, window: Window, num_frames: int) -> SampledWindow:
        """``num_frames`` frames evenly spread over ``window`` (seconds from the video start), upright.

        Returns (T, H, W, 3) uint8 frames scaled so the short side is the working size. Each
        sampled instant gets the frame on screen then (the last one at or before it); instants
        are spread from the first to the last frame in the window (``instants_between``). A
        window with fewer frames than ``num_frames`` repeats frames, as uniform subsampling does.
        """
        return next(iter(self.sample_windows([window], num_frames)))

    def sample_windows(self, windows: Sequence[Window], num_frames: int) -> Iterator[SampledWindow]:
        """``sample`` for each of ``windows``: ``frames_at`` with the uniform policy of ``sampling``."""
        if num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        interval = self.info.frame_interval

        def choose(window: Window, times: Optional[List[float]]) -> List[float]:
            return uniform_instants(window, times, num_frames=num_frames, frame_interval=interval)

        return self.frames_at(windows, choose)

    def frames_at(self, windows: Sequence[Window], choose: InstantChooser) -> Iterator[SampledWindow]:
        """For each of ``windows`` (in time order), the frames shown at the instants ``choose`` picks.

        ``choose(window, frame_times)`` gets the timestamps (s from the video start) of the frames
        in ``[start, end)`` of the window, as demuxed (None when the container has none), and
        returns the instants to show, in order; each gets the frame on screen then (the last one
        at or before it). Each window is handed out as soon as it is complete. Windows that touch,
        overlap or are less than ``REJOIN_GAP_SECONDS`` apart are decoded in one forward pass (no
        frame decoded twice); others each get their own seek. Each result is identical to asking
        for its window alone. Memory: the windows in flight, not the video.
        """
        windows = [(float(a), float(b)) for a, b in windows]
        if any(b < a for a, b in windows) or any(b[0] < a[0] for a, b in zip(windows, windows[1:])):
            raise ValueError(f"windows must be (start, end) pairs in time order, got {windows[:4]}...")
        runs: List[List[Window]] = []
        for window in windows:
            if runs and window[0] - max(b for _, b in runs[-1]) < REJOIN_GAP_SECONDS:
                runs[-1].append(window)
            else:
                runs.append([window])
        self._mark = (self.stats.frames_decoded, self._errors_used())
        return self._budget.timed(window for run in runs for window in self._decode_run(self._plans(run, choose)))

    def _plans(self, run: List[Window], choose: InstantChooser) -> List[_Plan]:
        """Instants of each window of a run, from one demux pass over the run's packets."""
        origin = self._start or 0.0
        tolerance = self._tolerance
        stamps = self._timestamps(origin + run[0][0], origin + max(b for _, b in run))
        exact = self.info.codec in ONE_FRAME_PER_PACKET
        plans = []
        for window in run:
            start, end = origin + window[0], origin + window[1]
            inside = sorted(p for p in stamps or () if start - tolerance <= p * self._time_base < end - tolerance)
            seconds = [p * self._time_base for p in inside]
            instants = choose(window, None if stamps is None else [t - origin for t in seconds])
            if not instants:
                raise ValueError(f"no instants chosen for the window {window}")
            targets = [origin + t for t in instants]
            needed: Optional[Set[int]] = None
            if inside and exact:  # the frames shown at the instants are known: skip all others
                needed = {inside[max(0, bisect.bisect_right(seconds, t + tolerance) - 1)] for t in targets}
            plans.append(_Plan(window=window, start=start, targets=targets, needed=needed))
        return plans

    def _decode_run(self, plans: List[_Plan]) -> Iterator[SampledWindow]:
        tolerance = self._tolerance
        needed: Set[int] = set()
        spans: List[Tuple[float, float]] = []
        for plan in plans:
            if plan.needed is not None:
                needed |= plan.needed
            else:
                spans.append((plan.targets[0] - SKIP_MARGIN_SECONDS, plan.targets[-1] + SKIP_MARGIN_SECONDS))
        spans = _merged(spans)
        pending = list(plans)
        previous: Optional[Tuple[float, av.VideoFrame]] = None
        self._last_pass = None
        for _, t, frame in self._frames_covering(plans[0].targets[0], needed, spans):
            for plan in pending:
                while not plan.done and t > plan.targets[len(plan.slots)] + tolerance:
                    self._fill(plan, previous or (t, frame))
            previous = (t, frame)
            while pending and pending[0].done:
                yield self._finish(pending.pop(0))
            if not pending:
                return
        for plan in pending:
            if previous is None or previous[0] + self.info.frame_interval < plan.start - tolerance:
                raise self._no_frames(plan, self._last_pass)
            while not plan.done:
                self._fill(plan, previous)
            yield self._finish(plan)

    def _fill(self, plan: _Plan, shown: Tuple[float, av.VideoFrame]) -> None:
        """Put the frame ``shown`` at the plan's next instant, converted once to its working size."""
        frame = shown[1]
        if plan.geometry is None:
            plan.geometry = working_geometry(
                frame.width, frame.height, rotation=_rotation_of(frame), short_side=self._short_side,
                max_aspect_ratio=self._limits.max_aspect_ratio,
            )
        cached = self._converted
        if cached is None or cached[0] is not frame or cached[1] != plan.geometry:
            cached = (frame, plan.geometry, self._converter.convert(frame, plan.geometry))
            self._converted = cached
        plan.slots.append(cached[2])
        plan.corrupt += frame.is_corrupt
        self.stats.frames_sampled += 1

    def _finish(self, plan: _Plan) -> SampledWindow:
        geometry = plan.geometry
        if geometry is None:  # cannot happen: a finished plan has been filled at least once
            raise RuntimeError("window finished without frames")
        frames = rotate_frames(torch.from_numpy(np.stack(plan.slots)), geometry.rotation)
        self.info = replace(self.info, rotation=geometry.rotation)
        warnings = []
        note = geometry.note()
        if note:
            warnings.append(note)
            if note not in self._notes:
                self._notes.append(note)
        used = self._errors_used()
        decoded, errors = self.stats.frames_decoded - self._mark[0], used - self._mark[1]
        self._mark = (self.stats.frames_decoded, used)
        self.stats.frames_corrupt_sampled += plan.corrupt
        plan.slots = []  # the tensor owns the frames now
        return SampledWindow(frames, plan.window, decoded, errors, warnings, corrupt_frames=plan.corrupt)

    def _errors_used(self) -> int:
        """Decode errors so far in the decodes whose frames were used (the current one included)."""
        return self.stats.errors + (self._current.errors if self._current is not None else 0)

    @property
    def notes(self) -> List[str]:
        """Sentences for the answer's warnings: truncated file, cropped frames, corrupt frames used."""
        notes = list(self._notes)
        if self.stats.frames_corrupt_sampled:
            notes.append(
                f"{self.stats.frames_corrupt_sampled} of the {self.stats.frames_sampled} frames sampled from this "
                "video failed to decode cleanly, even decoding from the start of the stream (damaged data that "
                "FFmpeg concealed); the answer is computed from them"
            )
        return notes

    def _no_frames(self, plan: _Plan, pass_: Optional[_Pass]) -> RequestError:
        origin = self._start or 0.0
        errors = self._errors_used() - self._mark[1]
        if pass_ is not None and pass_.frames:
            detail = (f"; decoding {pass_.where} found {pass_.frames} frames at "
                      f"{pass_.first - origin:.2f}-{pass_.last - origin:.2f} s")
        else:
            detail = f"; decoding {pass_.where if pass_ else 'the stream'} found no decodable frame"
        if errors:
            detail += f" ({errors} decode errors)"
        if not (self.info.width and self.info.height):
            detail += "; the stream declares no valid frame size"
        return RequestError(
            422, "no_frames", f"no decodable frame in the window {plan.window[0]:.2f}-{plan.window[1]:.2f} s{detail}",
        )

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _merged(spans: List[Tuple[float, float]]) -> List[Tuple[float, float]]:
    out: List[Tuple[float, float]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out
