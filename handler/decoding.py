"""Video bytes -> sampled RGB frames, decoding only what the sampled windows need.

For each window: seek to the keyframe at or before it, decode forward (non-reference frames
before the window are skipped by FFmpeg), convert to RGB only the frames that are sampled,
scaled to the working size inside FFmpeg, and stop at the window's end. Audio is never decoded.
Every problem with the input becomes a ``RequestError`` with a 4xx status.
"""

from __future__ import annotations

import heapq
import io
import itertools
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import av
import numpy as np
import torch

from handler.errors import RequestError
from handler.sampling import frame_times, instants_between
from handler.transforms import rotate_frames, scaled_size

log = logging.getLogger(__name__)

# Frames are emitted in timestamp order through a small heap: codecs with packed B-frames
# (DivX/Xvid in AVI) hand frames out with non-monotonic timestamps.
REORDER_DEPTH = 4
# Before a window, FFmpeg skips non-reference frames; full decoding resumes this far ahead of it.
SKIP_MARGIN_SECONDS = 0.5
# Timestamps in millisecond containers are rounded: a frame within this fraction of a frame
# interval after an instant still counts as shown at it. Must stay below 1/31 of a frame so that
# sampling keeps picking what uniform subsampling picks (see sampling.frame_times).
TIME_TOLERANCE_FRAMES = 0.02
STILL_IMAGE_FORMATS = ("image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "apng")
DEFAULT_FPS = 30.0


@dataclass(frozen=True)
class DecodeLimits:
    max_frame_pixels: int
    max_decode_seconds: float
    threads: int = 0


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
    """Frames sampled for one window: ``frames`` is (T, H, W, 3) uint8, already upright."""

    frames: torch.Tensor
    window: Tuple[float, float]
    frames_decoded: int
    decode_errors: int


@dataclass
class _DecodeStats:
    frames_decoded: int = 0
    errors: int = 0


def _rotation_of(frame: av.VideoFrame) -> int:
    """Display-matrix rotation of a decoded frame, counter-clockwise degrees (0 if none)."""
    try:
        return int(round(frame.rotation or 0))
    except (AttributeError, TypeError, ValueError):
        return 0


class VideoDecoder:
    """An opened video held in memory; sample windows of frames from it.

    Use as a context manager. ``info`` is available after construction.
    """

    def __init__(self, data: bytes, limits: DecodeLimits, short_side: int) -> None:
        self._limits = limits
        self._short_side = short_side
        self._deadline = time.monotonic() + limits.max_decode_seconds
        self.stats = _DecodeStats()
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
                io.BytesIO(data),
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
        candidates = [
            s for s in self._container.streams.video
            if not (s.disposition & av.stream.Disposition.attached_pic)
        ]
        if not candidates:
            kinds = sorted({s.type for s in self._container.streams}) or ["none"]
            raise RequestError(
                422, "no_video_stream",
                f"the file ({self._container.format.name}) has no video stream (streams: {', '.join(kinds)}); "
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
        duration = None
        if stream.duration and stream.duration > 0:
            duration = stream.duration * time_base
        else:
            # No stream duration (WebM/Matroska, TS): container durations there may be absolute
            # end times, so measure the end from the last packets instead.
            end = self._end_time_from_tail(1.0 / fps)
            if end is not None and self._start is not None:
                duration = end - self._start
        if duration is None or duration <= 0 or self._start is None:
            scanned_start, scanned_end = self._scan_packet_times()
            self._start = scanned_start if self._start is None else self._start
            duration = scanned_end - self._start
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

        A packet without a duration is taken to last one frame interval."""
        far = ((self._start or 0.0) + 1e7) / self._time_base
        try:
            self._container.seek(int(far), stream=self._stream, backward=True)
        except av.error.FFmpegError:
            return None
        end = None
        for packet in self._container.demux(self._stream):
            self._check_deadline()
            if packet.pts is not None:
                length = packet.duration * self._time_base if packet.duration else frame_interval
                t = packet.pts * self._time_base + length
                end = t if end is None else max(end, t)
        self._seek(None)
        return end

    def _scan_packet_times(self) -> Tuple[float, float]:
        """First and last timestamps by demuxing (no decoding): for containers without a duration."""
        first, last = None, None
        for packet in self._container.demux(self._stream):
            self._check_deadline()
            if packet.pts is None:
                continue
            t = packet.pts * self._time_base
            end = t + (packet.duration or 0) * self._time_base
            first = t if first is None else min(first, t)
            last = end if last is None else max(last, end)
        self._seek(None)
        if first is None:
            raise RequestError(422, "no_frames", "the video stream has no timestamped packets to decode")
        return first, last

    # -- decoding ------------------------------------------------------------------------

    def _check_deadline(self) -> None:
        if time.monotonic() > self._deadline:
            raise RequestError(
                422, "decode_timeout",
                f"decoding took longer than the limit of {self._limits.max_decode_seconds:g} s for one request",
            )

    def _seek(self, seconds: Optional[float]) -> None:
        """Seek to the keyframe at or before ``seconds`` (absolute stream time); None = the start."""
        target = (self._start or 0.0) if seconds is None else seconds
        try:
            self._container.seek(int(math.floor(target / self._time_base)), stream=self._stream, backward=True)
        except av.error.FFmpegError:
            self._container.seek(0)
        self._stream.codec_context.flush_buffers()

    def _frames_from(self, skip_until: float) -> Iterator[Tuple[float, av.VideoFrame]]:
        """Decoded frames with their absolute times, in timestamp order, from the current position."""
        ctx = self._stream.codec_context
        skipping = skip_until > 0
        ctx.skip_frame = "NONREF" if skipping else "DEFAULT"
        heap: List[Tuple[float, int, av.VideoFrame]] = []
        order = itertools.count()
        last_time = -math.inf
        for packet in self._container.demux(self._stream):
            self._check_deadline()
            if skipping and packet.dts is not None and packet.dts * self._time_base >= skip_until:
                ctx.skip_frame = "DEFAULT"
                skipping = False
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
                heapq.heappush(heap, (t, next(order), frame))
                if len(heap) > REORDER_DEPTH:
                    t_out, _, f_out = heapq.heappop(heap)
                    yield t_out, f_out
        while heap:
            t_out, _, f_out = heapq.heappop(heap)
            yield t_out, f_out

    def _timestamps_in(self, start: float, end: float) -> Optional[List[float]]:
        """Timestamps (absolute s) of the frames in [start, end), from packets alone (no decoding).

        None when the container gives packets without timestamps.
        """
        self._seek(start)
        found: List[float] = []
        tolerance = max(1e-4, TIME_TOLERANCE_FRAMES * self.info.frame_interval)
        for packet in self._container.demux(self._stream):
            self._check_deadline()
            if packet.size == 0:
                continue
            if packet.pts is None:
                return None
            t = packet.pts * self._time_base
            if start - tolerance <= t < end - tolerance:
                found.append(t)
            # Packets come in decode order: past the end plus a reorder margin, nothing is left.
            if packet.dts is not None and packet.dts * self._time_base > end + SKIP_MARGIN_SECONDS:
                break
        return found

    def sample(self, window: Tuple[float, float], num_frames: int) -> SampledWindow:
        """``num_frames`` frames evenly spread over ``window`` (seconds from the video start), upright.

        Returns (T, H, W, 3) uint8 frames scaled so the short side is the working size. Each
        sampled instant gets the frame on screen then (the last one at or before it); instants
        are spread from the first to the last frame in the window (``instants_between``). A
        window with fewer frames than ``num_frames`` repeats frames, as uniform subsampling does.
        """
        if num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        origin = self._start or 0.0
        stamps = self._timestamps_in(origin + window[0], origin + window[1])
        if stamps:
            targets = instants_between(stamps, num_frames)
        else:
            targets = [origin + t for t in frame_times(window, num_frames, self.info.frame_interval)]
        before = (self.stats.frames_decoded, self.stats.errors)
        chosen = self._assign(targets, retry_from_start=True)
        frames_decoded = self.stats.frames_decoded - before[0]
        errors = self.stats.errors - before[1]
        if chosen is None:
            detail = f" ({errors} packets failed to decode)" if errors else ""
            if not (self.info.width and self.info.height):
                detail += "; the stream declares no valid frame size"
            raise RequestError(
                422, "no_frames",
                f"no decodable frame in the window {window[0]:.2f}-{window[1]:.2f} s{detail}",
            )
        return SampledWindow(self._to_tensor(chosen), window, frames_decoded, errors)

    def _assign(self, targets: List[float], retry_from_start: bool) -> Optional[List[av.VideoFrame]]:
        self._seek(targets[0])
        chosen: List[Optional[av.VideoFrame]] = [None] * len(targets)
        index = 0
        previous: Optional[Tuple[float, av.VideoFrame]] = None
        first_time: Optional[float] = None
        tolerance = max(1e-4, TIME_TOLERANCE_FRAMES * self.info.frame_interval)
        for t, frame in self._frames_from(skip_until=targets[0] - SKIP_MARGIN_SECONDS):
            if first_time is None:
                first_time = t
                if t > targets[0] + tolerance and retry_from_start and t > (self._start or 0.0) + tolerance:
                    # The seek landed after the window start (inexact index): decode from the start.
                    return self._assign(targets, retry_from_start=False)
            while index < len(targets) and t > targets[index] + tolerance:
                chosen[index] = (previous or (t, frame))[1]
                index += 1
            previous = (t, frame)
            if index == len(targets):
                break
        if previous is None:
            return None
        for i in range(index, len(targets)):
            chosen[i] = previous[1]
        return chosen  # type: ignore[return-value]

    def _to_tensor(self, chosen: List[av.VideoFrame]) -> torch.Tensor:
        first = chosen[0]
        rotation = _rotation_of(first)
        width, height = first.width, first.height
        upright_h, upright_w = (width, height) if rotation % 180 else (height, width)
        out_h, out_w = scaled_size(upright_h, upright_w, self._short_side)
        if rotation % 180:
            out_h, out_w = out_w, out_h  # scale before rotating: swap back to the stored orientation
        converted: Dict[int, np.ndarray] = {}
        arrays = []
        for frame in chosen:
            key = id(frame)
            if key not in converted:
                converted[key] = frame.reformat(
                    width=out_w, height=out_h, format="rgb24", interpolation="BILINEAR"
                ).to_ndarray()
            arrays.append(converted[key])
        frames = torch.from_numpy(np.stack(arrays))
        self.info = replace(self.info, rotation=rotation)
        return rotate_frames(frames, rotation)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ffmpeg_reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(":")[0].strip() or type(exc).__name__
