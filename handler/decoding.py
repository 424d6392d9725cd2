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
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar

import av
import numpy as np
import torch

from handler.body_reader import BodyReader
from handler.errors import RequestError
from handler.sampling import frame_times, instants_between
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
STILL_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "apng")
DEFAULT_FPS = 30.0
# An index claiming this much more video than the data holds marks a truncated file.
TRUNCATION_SLACK_SECONDS = 1.0


@dataclass(frozen=True)
class DecodeLimits:
    """``max_frame_pixels``: width x height, declared or decoded. ``max_decode_seconds``: wall time
    to decode one request (the default deadline). ``max_aspect_ratio``: long/short side of the
    working frame; beyond it the central region of that aspect is used."""

    max_frame_pixels: int
    max_decode_seconds: float
    threads: int = 0
    max_aspect_ratio: float = 4.0


T = TypeVar("T")


class DecodeBudget:
    """Wall time a request may spend *inside* its decoders, shared by all its videos.

    Only time spent opening, probing and sampling counts: decoding is lazy (each window is
    decoded when the model needs it), so a plain deadline would also count the forwards of the
    batch in between and refuse requests for the model's slowness. ``per_window``: the budget
    starts again after each window handed out (a streamed timeline, whose every line the client
    receives as it is computed).
    """

    def __init__(self, seconds: float, per_window: bool = False) -> None:
        self.seconds = float(seconds)
        self.per_window = per_window
        self.spent = 0.0
        self._since: Optional[float] = None

    @contextmanager
    def running(self) -> Iterator[None]:
        """Count the time of the ``with`` body (re-entrant: only the outermost one counts)."""
        if self._since is not None:
            yield
            return
        self._since = time.monotonic()
        try:
            yield
        finally:
            self.spent += time.monotonic() - self._since
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
        running = time.monotonic() - self._since if self._since is not None else 0.0
        if self.spent + running > self.seconds:
            what = "one window of this streamed timeline" if self.per_window else "this request"
            raise RequestError(
                422, "decode_timeout", f"decoding {what} took longer than the limit of {self.seconds:g} s",
            )


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about the video stream (times in seconds from its first frame)."""

    container: str
    codec: str
    width: int
    height: int
    duration: float
    frame_interval: float
    rotation: int


@dataclass
class SampledWindow:
    """Frames sampled for one window: ``frames`` is (T, H, W, 3) uint8, already upright.

    ``frames_decoded`` / ``decode_errors`` count the work done since the previous window was
    handed out; ``warnings`` are sentences for the answer (e.g. the frame was cropped)."""

    frames: torch.Tensor
    window: Tuple[float, float]
    frames_decoded: int
    decode_errors: int
    warnings: List[str] = field(default_factory=list)


@dataclass
class DecodeStats:
    """Work counters of one decoder, for metrics, tests and benchmarks.

    ``decoded_times``: absolute timestamp (s) of every frame decoded, in output order (a frame
    decoded twice appears twice). ``restarts``: decodes from the first byte after seeks failed.
    """

    frames_decoded: int = 0
    errors: int = 0
    frames_sampled: int = 0
    frames_converted: int = 0
    seeks: int = 0
    restarts: int = 0
    passes: int = 0
    decoded_times: List[float] = field(default_factory=list)


@dataclass
class _Plan:
    """One window being sampled: its target instants (absolute s) and the frames chosen so far."""

    window: Tuple[float, float]
    start: float  # absolute
    targets: List[float]
    needed: Optional[Set[int]]  # pts of the frames sampled, when known exactly
    slots: List[np.ndarray] = field(default_factory=list)
    geometry: Optional[WorkingGeometry] = None

    @property
    def done(self) -> bool:
        return len(self.slots) == len(self.targets)


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
    """

    def __init__(
        self, data: bytes, limits: DecodeLimits, short_side: int, budget: Optional[DecodeBudget] = None
    ) -> None:
        self._budget = budget or DecodeBudget(limits.max_decode_seconds)
        with self._budget.running():
            self._setup(data, limits, short_side)

    def _setup(self, data: bytes, limits: DecodeLimits, short_side: int) -> None:
        self._data = data
        self._limits = limits
        self._short_side = short_side
        self.stats = DecodeStats()
        self.notes: List[str] = []
        self._converter = FrameConverter()
        self._converted: Optional[Tuple[av.VideoFrame, WorkingGeometry, np.ndarray]] = None
        # First frame time seen by a decode from byte 0: frames before it cannot be decoded at all.
        self._first_decodable: Optional[float] = None
        self._mark = (0, 0)
        self._container = self._open(data)
        try:
            self._stream = self._video_stream()
            self.info = self._probe()
        except BaseException:
            self._container.close()
            raise

    # -- opening and probing -------------------------------------------------------------

    def _open(self, data: bytes) -> av.container.InputContainer:
        try:
            container = av.open(
                BodyReader(data),  # io.BytesIO would copy a bytearray body whole
                mode="r",
                metadata_errors="ignore",
                # Bound the probe itself; declared frame sizes are checked before any decoding.
                options={"probesize": str(8 * 1024 * 1024), "analyzeduration": str(5_000_000)},
            )
        except av.error.FFmpegError as exc:
            raise RequestError(
                422, "not_a_video", f"the body is not a decodable video ({_ffmpeg_reason(exc)}); "
                f"{len(data)} bytes starting {data[:8].hex(' ')}"
            ) from None
        except (MemoryError, OverflowError, ValueError) as exc:
            raise RequestError(422, "not_a_video", f"the body could not be opened as a video: {exc}") from None
        if container.format.name in STILL_IMAGE_FORMATS:
            container.close()
            raise RequestError(
                415, "still_image",
                f"the body is a still image ({container.format.name}), not a video; send a video file",
            )
        return container

    def _video_stream(self) -> av.video.stream.VideoStream:
        video = list(self._container.streams.video)
        candidates = [s for s in video if not (s.disposition & av.stream.Disposition.attached_pic)]
        if not candidates:
            kinds = sorted({s.type for s in self._container.streams if s not in video}) or ["none"]
            name = self._container.format.name
            if video:
                raise RequestError(
                    422, "no_video_stream",
                    f"the file ({name}) has no video to classify: its only video stream is an attached "
                    f"picture (cover art), beside {', '.join(kinds)} streams; audio files with cover art "
                    "cannot be classified",
                )
            raise RequestError(
                422, "no_video_stream",
                f"the file ({name}) has no video stream (streams: {', '.join(kinds)}); "
                "audio-only files cannot be classified",
            )
        stream = candidates[0]
        ctx = stream.codec_context
        self._check_pixels(ctx.width, ctx.height, "declared")
        try:
            # Frames larger than declared (a size change mid-stream) are refused by FFmpeg itself.
            ctx.options = {"max_pixels": str(self._limits.max_frame_pixels)}
        except (AttributeError, av.error.FFmpegError):
            pass
        stream.thread_type = "AUTO"  # frame threads: ~1.5x faster than FFmpeg's default slice threads
        if self._limits.threads:
            stream.thread_count = self._limits.threads
        return stream

    def _restart(self) -> None:
        """Reopen the file at its first byte: the one position no broken index can get wrong."""
        self._container.close()
        self._container = self._open(self._data)
        self._stream = self._video_stream()
        self.stats.restarts += 1

    def _check_pixels(self, width: int, height: int, what: str) -> None:
        if width and height and width * height > self._limits.max_frame_pixels:
            raise RequestError(
                413, "frame_too_large",
                f"{what} frame size {width}x{height} exceeds the limit of {self._limits.max_frame_pixels} pixels",
            )

    def _probe(self) -> VideoInfo:
        stream = self._stream
        time_base = float(stream.time_base) if stream.time_base else 1e-6
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate and 0 < float(rate) < 1000 else DEFAULT_FPS
        self._time_base = time_base
        self._start = (stream.start_time or 0) * time_base if stream.start_time is not None else None
        declared = stream.duration * time_base if stream.duration and stream.duration > 0 else None
        # The end is measured from the last packets that are really there: container durations
        # may be absolute end times (WebM, TS) and an index may list packets a truncated file lacks.
        end = self._end_time_from_tail(1.0 / fps)
        duration = None
        if end is not None and self._start is not None:
            duration = end - self._start
        if duration is None or duration <= 0 or self._start is None:
            scanned_start, scanned_end = self._scan_packet_times()
            self._start = scanned_start if self._start is None else self._start
            duration = scanned_end - self._start
        if declared is not None and not declared - duration > max(TRUNCATION_SLACK_SECONDS, 5.0 / fps):
            duration = declared
        elif declared is not None:
            self.notes.append(
                f"the file's index lists {declared:.2f} s of video but its data ends at {duration:.2f} s "
                f"(a truncated file?); the {duration:.2f} s present were used"
            )
        if not duration or duration <= 0 or not math.isfinite(duration):
            duration = 1.0 / fps  # a single frame (or a stream that will tell us more when decoded)
        return VideoInfo(
            container=self._container.format.name,
            codec=stream.codec_context.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            duration=float(duration),
            frame_interval=1.0 / fps,
            rotation=0,
        )

    def _end_time_from_tail(self, frame_interval: float) -> Optional[float]:
        """End of the last packet, found by seeking to the last keyframe and demuxing (no decoding).

        A packet without a duration is taken to last one frame interval. None when the seek
        finds no packet (an index pointing past the data, or no seeking at all)."""
        far = ((self._start or 0.0) + 1e7) / self._time_base
        try:
            self._container.seek(int(far), stream=self._stream, backward=True)
        except av.error.FFmpegError:
            return None
        end = None
        for packet in self._container.demux(self._stream):
            self._check_deadline()
            if packet.pts is not None and packet.size:
                length = packet.duration * self._time_base if packet.duration else frame_interval
                t = packet.pts * self._time_base + length
                end = t if end is None else max(end, t)
        return end

    def _scan_packet_times(self) -> Tuple[float, float]:
        """First and last timestamps by demuxing the whole stream from byte 0 (no decoding)."""
        self._restart()
        first, last = None, None
        for packet in self._container.demux(self._stream):
            self._check_deadline()
            if packet.pts is None or not packet.size:
                continue
            t = packet.pts * self._time_base
            end = t + (packet.duration or 0) * self._time_base
            first = t if first is None else min(first, t)
            last = end if last is None else max(last, end)
        if first is None:
            raise RequestError(422, "no_frames", "the video stream has no timestamped packets to decode")
        return first, last

    # -- seeking and decoding ---------------------------------------------------------------

    @property
    def _tolerance(self) -> float:
        return max(1e-4, TIME_TOLERANCE_FRAMES * self.info.frame_interval)

    def _check_deadline(self) -> None:
        self._budget.check()

    def _seek(self, seconds: float) -> None:
        """Seek to the keyframe at or before ``seconds`` (absolute stream time), as the index says."""
        self.stats.seeks += 1
        try:
            self._container.seek(int(math.floor(seconds / self._time_base)), stream=self._stream, backward=True)
        except av.error.FFmpegError:
            self._container.seek(0)
        self._stream.codec_context.flush_buffers()

    def _seek_points(self, target: float) -> Iterator[Optional[float]]:
        """Where to start decoding for ``target``: there, further back, then None (byte 0)."""
        origin = self._start or 0.0
        yield target
        for back in BACKOFF_SECONDS:
            if target - back <= origin:
                break
            yield target - back
        yield None

    def _timestamps(self, start: float, end: float) -> Optional[List[int]]:
        """pts of the packets whose time lies in [start, end) (absolute s), by demuxing alone.

        None when the container gives packets without timestamps. A seek is trusted only when
        it lands on a keyframe at or before ``start``, or well before ``start`` (no packet
        before the landing point can then show after ``start``); otherwise the demux starts
        further back, finally at byte 0.
        """
        tolerance = self._tolerance
        found: List[int] = []
        for point in self._seek_points(start):
            if point is None:
                self._restart()
            else:
                self._seek(point)
            found = []
            first = True
            trusted = point is None
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

    def _frames_from(self, needed: Set[int], spans: List[Tuple[float, float]]) -> Iterator[Tuple[float, av.VideoFrame]]:
        """Decoded frames with their absolute times, in timestamp order, from the current position.

        Packets whose pts is in ``needed`` or whose time is inside one of ``spans`` (sorted,
        disjoint, absolute s) are decoded in full; elsewhere only reference frames are.
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
                self.stats.errors += 1
                if self.stats.errors <= 3:
                    log.info("decode error (continuing): %s", exc)
                continue
            for frame in frames:
                self.stats.frames_decoded += 1
                self._check_pixels(frame.width, frame.height, "decoded")
                if frame.pts is not None:
                    t = frame.pts * self._time_base
                else:
                    t = last_time + self.info.frame_interval
                last_time = max(last_time, t)
                self.stats.decoded_times.append(t)
                heapq.heappush(heap, (t, next(order), frame))
                if len(heap) > REORDER_DEPTH:
                    t_out, _, f_out = heapq.heappop(heap)
                    yield t_out, f_out
        while heap:
            t_out, _, f_out = heapq.heappop(heap)
            yield t_out, f_out

    def _frames_covering(
        self, target: float, needed: Set[int], spans: List[Tuple[float, float]], where: List[str]
    ) -> Iterator[Tuple[float, av.VideoFrame]]:
        """Frames from a start point whose first decoded frame is at or before ``target``.

        A decode whose first frame comes after ``target`` started too late (the seek landed
        after it, or on a frame that cannot be decoded without earlier ones): try further back,
        and finally from byte 0, whose first frame is accepted whatever it is. ``where`` gets a
        description of the start point used, for messages.
        """
        tolerance = self._tolerance
        for point in self._seek_points(target):
            if point is None:
                self._restart()
            else:
                self._seek(point)
            frames = self._frames_from(needed, spans)
            first = next(frames, None)
            if first is None and point is not None:
                continue
            if point is None:
                where[:] = ["the whole stream from its first byte"]
                if first is not None and self._first_decodable is None:
                    self._first_decodable = first[0]
            else:
                where[:] = [f"from {point - (self._start or 0.0):.2f} s to the end of the stream"]
                late = first[0] > target + tolerance  # type: ignore[index]
                if late and not (self._first_decodable is not None and first[0] <= self._first_decodable + tolerance):  # type: ignore[index]
                    log.info("decoding from %.3f s starts at %.3f s, after %.3f s: backing off", point, first[0], target)  # type: ignore[index]
                    frames.close()
                    continue
            if first is None:
                return
            self.stats.passes += 1
            yield first
            yield from frames
            return

    # -- sampling ------------------------------------------------------------------------

    def sample(self, window: Tuple[float, float], num_frames: int) -> SampledWindow:
        """``num_frames`` frames evenly spread over ``window`` (seconds from the video start), upright.

        Returns (T, H, W, 3) uint8 frames scaled so the short side is the working size. Each
        sampled instant gets the frame on screen then (the last one at or before it); instants
        are spread from the first to the last frame in the window (``instants_between``). A
        window with fewer frames than ``num_frames`` repeats frames, as uniform subsampling does.
        """
        return next(iter(self.sample_windows([window], num_frames)))

    def sample_windows(self, windows: Sequence[Tuple[float, float]], num_frames: int) -> Iterator[SampledWindow]:
        """``sample`` for each of ``windows`` (in time order), each handed out as soon as it is complete.

        Windows that touch, overlap or are less than ``REJOIN_GAP_SECONDS`` apart are decoded in
        one forward pass (no frame decoded twice); others each get their own seek. Each result
        is identical to ``sample(window)`` alone. Memory: the windows in flight, not the video.
        """
        if num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        windows = [(float(a), float(b)) for a, b in windows]
        if any(b < a for a, b in windows) or any(b[0] < a[0] for a, b in zip(windows, windows[1:])):
            raise ValueError(f"windows must be (start, end) pairs in time order, got {windows[:4]}...")
        runs: List[List[Tuple[float, float]]] = []
        for window in windows:
            if runs and window[0] - max(b for _, b in runs[-1]) < REJOIN_GAP_SECONDS:
                runs[-1].append(window)
            else:
                runs.append([window])
        self._mark = (self.stats.frames_decoded, self.stats.errors)
        return self._budget.timed(window for run in runs for window in self._decode_run(self._plans(run, num_frames)))

    def _plans(self, run: List[Tuple[float, float]], num_frames: int) -> List[_Plan]:
        """Target instants of each window of a run, from one demux pass over the run's packets."""
        origin = self._start or 0.0
        tolerance = self._tolerance
        stamps = self._timestamps(origin + run[0][0], origin + max(b for _, b in run))
        exact = self.info.codec in ONE_FRAME_PER_PACKET
        plans = []
        for window in run:
            start, end = origin + window[0], origin + window[1]
            inside = sorted(p for p in stamps or () if start - tolerance <= p * self._time_base < end - tolerance)
            needed: Optional[Set[int]] = None
            if inside:
                seconds = [p * self._time_base for p in inside]
                targets = instants_between(seconds, num_frames)
                chosen = {inside[max(0, bisect.bisect_right(seconds, t + tolerance) - 1)] for t in targets}
                needed = chosen if exact else None
            else:
                targets = [origin + t for t in frame_times(window, num_frames, self.info.frame_interval)]
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
        where: List[str] = [""]
        found = [0, math.inf, -math.inf]  # frames, first and last time seen in this pass
        for t, frame in self._frames_covering(plans[0].targets[0], needed, spans, where):
            found = [found[0] + 1, min(found[1], t), max(found[2], t)]
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
                raise self._no_frames(plan, where[0], found)
            while not plan.done:
                self._fill(plan, previous)
            yield self._finish(plan)

    def _fill(self, plan: _Plan, shown: Tuple[float, av.VideoFrame]) -> None:
        """Put the frame ``shown`` at the plan's next instant, converted once to its working size."""
        frame = shown[1]
        if plan.geometry is None:
            plan.geometry = working_geometry(
                frame.width, frame.height, _rotation_of(frame), self._short_side, self._limits.max_aspect_ratio
            )
        cached = self._converted
        if cached is None or cached[0] is not frame or cached[1] != plan.geometry:
            cached = (frame, plan.geometry, self._converter.convert(frame, plan.geometry))
            self._converted = cached
            self.stats.frames_converted += 1
        plan.slots.append(cached[2])
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
            if note not in self.notes:
                self.notes.append(note)
        decoded, errors = self.stats.frames_decoded - self._mark[0], self.stats.errors - self._mark[1]
        self._mark = (self.stats.frames_decoded, self.stats.errors)
        plan.slots = []  # the tensor owns the frames now
        return SampledWindow(frames, plan.window, decoded, errors, warnings)

    def _no_frames(self, plan: _Plan, where: str, found: List[float]) -> RequestError:
        origin = self._start or 0.0
        errors = self.stats.errors - self._mark[1]
        if found[0]:
            detail = f"; decoding {where} found {found[0]} frames at {found[1] - origin:.2f}-{found[2] - origin:.2f} s"
        else:
            detail = f"; decoding {where or 'the stream'} found no decodable frame"
        if errors:
            detail += f" ({errors} packets failed to decode)"
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


def _ffmpeg_reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":")[0].strip() or type(exc).__name__
