"""Each keyframe's window of frames and the frame shown at the keyframe itself, in one decode.

The window's ``num_frames`` instants are the classifier's uniform policy (``handler.sampling``) over
the window; the keyframe's instant is added to them, so the person detector sees the frame on
screen at the keyframe (the middle frame of the hub tutorial's 1 s clip) with no second decode.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import torch

from handler.decoding import VideoDecoder
from handler.errors import RequestError
from handler.people.geometry import BoxMapping
from handler.people.plan import Keyframe
from handler.sampling import Window, uniform_instants
from handler.working_frame import working_geometry


@dataclass
class KeyframeWindow:
    """``frames``: (T, H, W, 3) uint8 upright working frames of the window; ``keyframe``: (H, W, 3)
    the frame shown at the keyframe; ``mapping``: boxes between video and working pixels."""

    keyframe: Keyframe
    frames: torch.Tensor
    frame_at_keyframe: torch.Tensor
    mapping: BoxMapping
    frames_decoded: int
    decode_errors: int


def decode_keyframes(decoder: VideoDecoder, keyframes: Sequence[Keyframe], *, num_frames: int, short_side: int,
                     max_aspect_ratio: float) -> Iterator[KeyframeWindow]:
    """Each keyframe's ``KeyframeWindow``, in time order, decoded lazily (one at a time in memory)."""
    positions: Dict[Window, List[int]] = {}
    times = {keyframe.window: keyframe.time for keyframe in keyframes}
    interval = decoder.info.frame_interval

    def choose(window: Window, frame_times: Optional[List[float]]) -> List[float]:
        instants = uniform_instants(window, frame_times, num_frames=num_frames, frame_interval=interval)
        at = min(max(times[window], instants[0]), instants[-1])  # the keyframe, on a frame of the window
        index = bisect.bisect_right(instants, at)
        positions.setdefault(window, []).append(index)
        return instants[:index] + [at] + instants[index:]

    for keyframe, sampled in zip(keyframes, decoder.frames_at([k.window for k in keyframes], choose)):
        index = positions[keyframe.window].pop(0)
        frames = sampled.frames
        window_frames = torch.cat([frames[:index], frames[index + 1:]])
        info = decoder.info
        geometry = working_geometry(info.width, info.height, rotation=info.rotation,
                                    short_side=short_side, max_aspect_ratio=max_aspect_ratio)
        mapping = BoxMapping.of(geometry)
        if mapping.working != (window_frames.shape[2], window_frames.shape[1]):
            raise RequestError(
                422, "frame_size_changed",
                f"the video declares {info.width}x{info.height} frames but decodes to another size: boxes cannot be "
                "placed on it",
            )
        yield KeyframeWindow(keyframe, window_frames, frames[index], mapping, sampled.frames_decoded, sampled.decode_errors)
