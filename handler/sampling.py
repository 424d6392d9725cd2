"""When to look in a video: temporal windows and the frame times inside a window.

All times are seconds from the first frame of the video stream.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

Window = Tuple[float, float]


def clip_windows(duration: float, window_seconds: float, clips: int) -> List[Window]:
    """``clips`` windows of ``window_seconds`` over a video of ``duration`` seconds.

    One clip is the middle of the video (the pytorchvideo hub tutorial's single clip). Two or
    more follow pytorchvideo's ``ConstantClipsPerVideoSampler``, the model zoo's evaluation
    sampler: clip i starts at ``(duration - window_seconds) * i / clips``. A video no longer than
    a window yields a single window covering all of it (identical windows would only repeat
    the same work).
    """
    if duration <= 0 or window_seconds <= 0 or clips < 1:
        raise ValueError(f"need duration, window > 0 and clips >= 1 (got {duration}, {window_seconds}, {clips})")
    if duration <= window_seconds:
        return [(0.0, duration)]
    slack = duration - window_seconds
    if clips == 1:
        return [(slack / 2, slack / 2 + window_seconds)]
    return [(slack * i / clips, slack * i / clips + window_seconds) for i in range(clips)]


def frame_times(window: Window, num_frames: int, frame_interval: float) -> List[float]:
    """The ``num_frames`` instants to sample in ``window`` when frame timestamps are unknown.

    Used where a container gives packets without timestamps; ``instants_between`` is preferred.

    The first instant is the window start and the last is the start of the window's last
    frame (``end - frame_interval``), so on constant-rate video the frame shown at each
    instant is exactly the one pytorchvideo's ``UniformTemporalSubsample`` would pick among the
    frames of the window; on variable-rate video the samples stay evenly spaced in time. A
    window shorter than ``num_frames`` frames repeats frames, as uniform subsampling does.
    """
    start, end = window
    span = max(end - start - max(frame_interval, 0.0), 0.0)
    if num_frames == 1:
        return [start + span / 2]
    return [start + span * k / (num_frames - 1) for k in range(num_frames)]


def instants_between(frame_times_in_window: Sequence[float], num_frames: int) -> List[float]:
    """``num_frames`` instants evenly spaced from the first to the last frame of a window.

    ``frame_times_in_window`` are the timestamps of the frames whose time lies in the window
    ([start, end), as pytorchvideo's ``EncodedVideo.get_clip`` takes them), in any order. Taking
    at each instant the last frame at or before it gives, at a constant frame rate, exactly the
    frames of ``UniformTemporalSubsample`` (indices ``linspace(0, n - 1, num_frames)``
    truncated); at a variable rate the samples stay evenly spaced in time rather than in index.
    """
    ordered = sorted(frame_times_in_window)
    if not ordered:
        raise ValueError("no frames in the window")
    first, last = ordered[0], ordered[-1]
    if num_frames == 1:
        return [first + (last - first) / 2]
    return [first + (last - first) * k / (num_frames - 1) for k in range(num_frames)]


def timeline_windows(start: float, end: float, window_seconds: float, stride: float) -> List[Window]:
    """Windows of ``window_seconds`` every ``stride`` seconds from ``start``, each inside [start, end].

    Window k is ``[start + k * stride, start + k * stride + window_seconds)``; the last one is the
    last that ends by ``end``, so a tail shorter than a stride may stay uncovered. A span shorter
    than one window gives a single window over all of it.
    """
    if not (end > start >= 0 and window_seconds > 0 and stride > 0):
        raise ValueError(f"need end > start >= 0 and window, stride > 0 (got {start}, {end}, {window_seconds}, {stride})")
    if end - start <= window_seconds:
        return [(start, end)]
    # 1 us of slack: a window ending exactly at `end` must not be lost to float rounding.
    count = int(math.floor((end - start - window_seconds) / stride + 1e-6)) + 1
    return [(start + k * stride, start + k * stride + window_seconds) for k in range(count)]


def uniform_instants(
    window: Window, frame_times_in_window: Optional[Sequence[float]], *, num_frames: int, frame_interval: float
) -> List[float]:
    """The sampling policy: ``num_frames`` instants (s from the video start) to show in ``window``.

    ``frame_times_in_window``: timestamps of the frames whose time lies in the window, as the
    decoder demuxed them (None or empty when it knows none). Evenly spread from the first to the
    last frame in the window (``instants_between``), else over the window (``frame_times``).
    """
    if frame_times_in_window:
        return instants_between(frame_times_in_window, num_frames)
    return frame_times(window, num_frames, frame_interval)
