"""Each keyframe's window of frames and the frame shown at the keyframe itself.

The window's ``num_frames`` instants are the classifier's uniform policy (``handler.sampling``) over
the window; the keyframe's instant is added to them (the middle frame of the hub tutorial's 1 s
clip). When the server finds the persons (``persons`` given), the frame at that same instant is
decoded a second time at the person detector's own size (``PersonFinder.frame_short_side``: the
video's full resolution up to what the detector's transform would shrink it to), as the tutorial
runs the detector on the original keyframe: the working frame (short side 256) would reach the
detector upscaled ~3x by its transform (to short side 800), at the same cost and with less detail.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from handler.decoding import DecodeBudget, DecodeLimits, SampledWindow, VideoDecoder, VideoInfo
from handler.errors import RequestError
from handler.people.geometry import BoxMapping
from handler.people.plan import Keyframe
from handler.sampling import Window, uniform_instants
from handler.working_frame import working_geometry


@dataclass(frozen=True)
class PersonsFrames:
    """Where the person detector's frames come from: ``video`` decoded again (within ``limits`` and
    the request's ``budget``) with the short side ``short_side(width, height)`` gives for the
    upright region the working frame shows."""

    video: bytes
    limits: DecodeLimits
    budget: DecodeBudget
    short_side: Callable[[int, int], int]


@dataclass
class KeyframeWindow:
    """``frames``: (T, H, W, 3) uint8 upright working frames of the window; ``frame_at_keyframe``:
    (H', W', 3) uint8 the upright frame shown at the keyframe, at the person detector's size when
    the persons are found (else the working frame's); ``mapping``: boxes between video and working
    pixels; ``persons_mapping``: between video and ``frame_at_keyframe``'s pixels."""

    keyframe: Keyframe
    frames: torch.Tensor
    frame_at_keyframe: torch.Tensor
    mapping: BoxMapping
    frames_decoded: int
    decode_errors: int
    persons_mapping: Optional[BoxMapping] = None

    def place_found(self, found: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(N, 4) boxes found on ``frame_at_keyframe`` -> (working pixels for the model, upright video
        pixels for the answer), both (N, 4) float32: to the video exactly, then on as given boxes go."""
        shown = (self.persons_mapping or self.mapping).frame_to_display(found)
        return self.mapping.found_to_working(shown), shown


def _check_size(mapping: BoxMapping, frame: torch.Tensor, info: VideoInfo) -> None:
    if mapping.working != (frame.shape[-2], frame.shape[-3]):
        raise RequestError(
            422, "frame_size_changed",
            f"the video declares {info.width}x{info.height} frames but decodes to another size: boxes cannot be "
            "placed on it",
        )


def decode_keyframes(decoder: VideoDecoder, keyframes: Sequence[Keyframe], *, num_frames: int, short_side: int,
                     max_aspect_ratio: float, persons: Optional[PersonsFrames] = None) -> Iterator[KeyframeWindow]:
    """Each keyframe's ``KeyframeWindow``, in time order, decoded lazily (one at a time in memory);
    with ``persons``, each keyframe's frame also at the person detector's size (a second decoder)."""
    positions: Dict[Window, List[int]] = {}
    times = {keyframe.window: keyframe.time for keyframe in keyframes}
    interval = decoder.info.frame_interval

    def instants_and_keyframe(window: Window, frame_times: Optional[List[float]]) -> Tuple[List[float], float]:
        instants = uniform_instants(window, frame_times, num_frames=num_frames, frame_interval=interval)
        return instants, min(max(times[window], instants[0]), instants[-1])  # the keyframe, on a frame of the window

    def choose(window: Window, frame_times: Optional[List[float]]) -> List[float]:
        instants, at = instants_and_keyframe(window, frame_times)
        index = bisect.bisect_right(instants, at)
        positions.setdefault(window, []).append(index)
        return instants[:index] + [at] + instants[index:]

    def mapping_of(info: VideoInfo, side: int) -> BoxMapping:
        # After a window is decoded: the rotation is the decoded frames' (handler.decoding).
        return BoxMapping.of(working_geometry(info.width, info.height, rotation=info.rotation, short_side=side,
                                              max_aspect_ratio=max_aspect_ratio))

    windows = [k.window for k in keyframes]
    persons_decoder: Optional[VideoDecoder] = None
    persons_frames: Iterator[SampledWindow] = iter(())
    try:
        for keyframe, sampled in zip(keyframes, decoder.frames_at(windows, choose)):
            index = positions[keyframe.window].pop(0)
            frames = sampled.frames
            window_frames = torch.cat([frames[:index], frames[index + 1:]])
            mapping = mapping_of(decoder.info, short_side)
            _check_size(mapping, window_frames, decoder.info)
            decoded, errors = sampled.frames_decoded, sampled.decode_errors
            at_keyframe, persons_mapping = frames[index], None
            if persons is not None:
                if persons_decoder is None:
                    side = persons.short_side(round(mapping.region[2]), round(mapping.region[3]))
                    persons_decoder = VideoDecoder(persons.video, persons.limits, side, budget=persons.budget)
                    persons_frames = persons_decoder.frames_at(windows, lambda w, t: [instants_and_keyframe(w, t)[1]])
                shown = next(persons_frames)
                at_keyframe = shown.frames[0]
                persons_mapping = mapping_of(persons_decoder.info, side)
                _check_size(persons_mapping, at_keyframe, decoder.info)
                decoded, errors = decoded + shown.frames_decoded, errors + shown.decode_errors
            yield KeyframeWindow(keyframe, window_frames, at_keyframe, mapping, decoded, errors, persons_mapping)
    finally:
        if persons_decoder is not None:
            persons_decoder.close()
