"""Where to look in a video: temporal windows, frame times inside a window, spatial crops.

All times are seconds from the first frame of the video stream.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

Window = Tuple[float, float]


def clip_windows(duration: float, window_seconds: float, clips: int) -> List[Window]:
    """``clips`` windows of ``window_seconds`` spread uniformly over a video of ``duration``.

    Window i is centred at ``duration * (i + 0.5) / clips`` (clamped inside the video), so one
    clip is the middle of the video, as the SlowFast test protocol spreads its clips. A video
    shorter than a window yields a single window covering all of it (identical windows would
    only repeat the same work).
    """
    if duration <= 0 or window_seconds <= 0 or clips < 1:
        raise ValueError(f"need duration, window > 0 and clips >= 1 (got {duration}, {window_seconds}, {clips})")
    if duration <= window_seconds:
        return [(0.0, duration)]
    slack = duration - window_seconds
    return [(slack * (i + 0.5) / clips, slack * (i + 0.5) / clips + window_seconds) for i in range(clips)]


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


def crop_offsets(height: int, width: int, crop_size: int, crops: int) -> List[Tuple[int, int]]:
    """Top-left ``(y, x)`` of each square crop: 1 = center; 3 = start/center/end of the long side.

    Matches the SlowFast test protocol (``uniform_crop`` with spatial_idx 0, 1, 2).
    """
    if crop_size > min(height, width):
        raise ValueError(f"crop {crop_size} larger than frame {height}x{width}")
    y_center, x_center = (height - crop_size) // 2, (width - crop_size) // 2
    if crops == 1:
        return [(y_center, x_center)]
    if crops != 3:
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    if height > width:
        return [(0, x_center), (y_center, x_center), (height - crop_size, x_center)]
    return [(y_center, 0), (y_center, x_center), (y_center, width - crop_size)]


def scaled_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
    """``(height, width)`` with the short side at ``short_side``, aspect kept (pytorchvideo's rounding)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"bad frame size {height}x{width}")
    if width < height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)
