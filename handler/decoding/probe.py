"""What a video holds, by demuxing alone: time base, first frame time, frame rate and duration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import av

from handler.decoding.source import packets
from handler.errors import RequestError

DEFAULT_FPS = 30.0
# A declared rate at or above this is nonsense (a time base taken for a rate): DEFAULT_FPS is used.
MAX_PLAUSIBLE_FPS = 1000.0
# Time base assumed for a stream that declares none.
DEFAULT_TIME_BASE = 1e-6
# An index claiming more video than the data holds, by this much and by this many frames, marks a
# truncated file.
TRUNCATION_SLACK_SECONDS = 1.0
TRUNCATION_SLACK_FRAMES = 5
# The tail probe seeks this far past the start (far past any real end) to land on the last keyframe.
FAR_PAST_END_SECONDS = 1e7

Opened = Tuple[av.container.InputContainer, av.video.stream.VideoStream]


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


@dataclass(frozen=True)
class Probed:
    """``info``; ``start``: absolute time (s) of the first frame; ``time_base``: s per pts unit;
    ``note``: a sentence for the answer when the index promises more than the data holds."""

    info: VideoInfo
    start: float
    time_base: float
    note: Optional[str]


def probe(opened: Opened, *, check: Callable[[], None], reopen: Callable[[], Opened]) -> Probed:
    """Probe the stream of ``opened``; ``reopen()`` gives the file again at its first byte (for a
    file whose end cannot be found by seeking, scanned whole); ``check()`` enforces the budget."""
    container, stream = opened
    time_base = float(stream.time_base) if stream.time_base else DEFAULT_TIME_BASE
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate and 0 < float(rate) < MAX_PLAUSIBLE_FPS else DEFAULT_FPS
    start = (stream.start_time or 0) * time_base if stream.start_time is not None else None
    declared = stream.duration * time_base if stream.duration and stream.duration > 0 else None
    # The end is measured from the last packets that are really there: container durations
    # may be absolute end times (WebM, TS) and an index may list packets a truncated file lacks.
    end = _end_time_from_tail(container, stream, time_base, start or 0.0, 1.0 / fps, check)
    duration = None
    if end is not None and start is not None:
        duration = end - start
    if duration is None or duration <= 0 or start is None:
        scanned_start, scanned_end = _scan_packet_times(*reopen(), time_base, check)
        start = scanned_start if start is None else start
        duration = scanned_end - start
    note = None
    if declared is not None and not declared - duration > max(TRUNCATION_SLACK_SECONDS, TRUNCATION_SLACK_FRAMES / fps):
        duration = declared
    elif declared is not None:
        note = (f"the file's index lists {declared:.2f} s of video but its data ends at {duration:.2f} s "
                f"(a truncated file?); the {duration:.2f} s present were used")
    if not duration or duration <= 0 or not math.isfinite(duration):
        duration = 1.0 / fps  # a single frame (or a stream that will tell us more when decoded)
    info = VideoInfo(
        container=container.format.name,
        codec=stream.codec_context.name,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        duration=float(duration),
        frame_interval=1.0 / fps,
        rotation=0,
    )
    return Probed(info=info, start=start, time_base=time_base, note=note)


def _end_time_from_tail(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, time_base: float,
    start: float, frame_interval: float, check: Callable[[], None],
) -> Optional[float]:
    """End of the last packet, found by seeking to the last keyframe and demuxing (no decoding).

    A packet without a duration is taken to last one frame interval. None when the seek
    finds no packet (an index pointing past the data, or no seeking at all)."""
    far = (start + FAR_PAST_END_SECONDS) / time_base
    try:
        container.seek(int(far), stream=stream, backward=True)
    except av.error.FFmpegError:
        return None
    end = None
    for packet in packets(container, stream):
        check()
        if packet.pts is not None and packet.size:
            length = packet.duration * time_base if packet.duration else frame_interval
            t = packet.pts * time_base + length
            end = t if end is None else max(end, t)
    return end


def _scan_packet_times(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, time_base: float,
    check: Callable[[], None],
) -> Tuple[float, float]:
    """First and last timestamps by demuxing the whole stream from byte 0 (no decoding)."""
    first, last = None, None
    for packet in packets(container, stream):
        check()
        if packet.pts is None or not packet.size:
            continue
        t = packet.pts * time_base
        end = t + (packet.duration or 0) * time_base
        first = t if first is None else min(first, t)
        last = end if last is None else max(last, end)
    if first is None:
        raise RequestError(422, "no_frames", "the video stream has no timestamped packets to decode")
    return first, last
