"""Which keyframes to answer and the window around each, from the options and the probed duration.

A keyframe at ``t`` is answered from the window ``[t - keyframe_at * W, t + (1 - keyframe_at) * W)``
(``W``: the contract's ``window_seconds``; AVA's convention and the hub tutorial's: the keyframe
in the middle of a 1 s window), cut to the video where it runs past an end. Keyframes: the boxes'
times, the ``keyframes`` given, one every ``stride`` s from ``start`` (default: half a window in) to
``end``, or the middle of the video. All are checked against the limits before decoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

from handler.contract import PreprocessContract
from handler.errors import RequestError
from handler.people.request import PeopleOptions, keyframe_limit, keyframe_way_out
from handler.sampling import Window
from handler.serve_settings import ServeOptions

# Times are compared to the duration with this slack (float rounding of a timestamp).
TIME_SLACK = 1e-6


@dataclass(frozen=True)
class Keyframe:
    """One keyframe: its time (s from the video start) and the window (s) it is answered from."""

    time: float
    window: Window


def window_around(time: float, duration: float, contract: PreprocessContract) -> Window:
    """The window of keyframe ``time`` (the contract's convention), cut to ``[0, duration]``."""
    assert contract.detection is not None
    width = contract.window_seconds
    start = time - contract.detection.keyframe_at * width
    start, end = max(0.0, start), min(duration, start + width)
    if end <= start:  # a keyframe at the very end: the last window-length of the video
        start, end = max(0.0, duration - width), duration
    return start, end


def keyframe_times(options: PeopleOptions, duration: float, contract: PreprocessContract, serve: ServeOptions) -> List[float]:
    """The keyframe times the request asks for; 422 for a time past the video, 413 past the limit."""
    if options.boxes is not None:
        times = list(options.boxes)
    elif options.keyframes is not None:
        times = list(options.keyframes)
    elif options.stride is not None:
        start = options.start if options.start is not None else min(duration, contract.window_seconds / 2)
        end = min(duration, options.end) if options.end is not None else duration
        if start > end:
            raise RequestError(422, "bad_span", f"start ({start:g} s) is past the video's end ({duration:.3f} s)")
        count = int(math.floor((end - start) / options.stride + TIME_SLACK)) + 1
        limit = keyframe_limit(options.stream, serve)
        if count > limit:
            raise RequestError(
                413, "too_many_keyframes",
                f"a keyframe every {options.stride:g} s from {start:g} to {end:g} s is {count} keyframes; at most "
                f"{limit} per {'streamed ' if options.stream else ''}request: a stride of "
                f"{(end - start) / max(1, limit - 1):.3g} s or more, or a shorter span"
                f"{keyframe_way_out(options.stream, serve)}",
            )
        times = [start + k * options.stride for k in range(count)]
    else:
        times = [duration / 2]
    late = [t for t in times if t > duration + TIME_SLACK]
    if late:
        raise RequestError(422, "keyframe_past_end",
                           f"keyframe(s) at {', '.join(f'{t:g}' for t in late[:5])} s lie past the video's end ({duration:.3f} s)")
    return times


def plan_keyframes(options: PeopleOptions, duration: float, contract: PreprocessContract, serve: ServeOptions) -> List[Keyframe]:
    """Each keyframe with its window, in time order."""
    return [Keyframe(t, window_around(t, duration, contract)) for t in keyframe_times(options, duration, contract, serve)]
