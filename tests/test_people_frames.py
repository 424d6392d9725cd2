"""The person detector's frame (issue 27, point 2): the keyframe at the video's own resolution,
bounded by the detector's transform, and its boxes mapped to the video's upright pixels exactly.

No model: the frames come from the served decoder (``handler.people.decode``) on real videos,
a rotated phone video among them; the boxes are placed as the served path places found boxes.
Seconds on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from handler.decoding import DecodeBudget, DecodeLimits, VideoDecoder
from handler.people.decode import PersonsFrames, decode_keyframes
from handler.people.persons import PersonFinder, transform_sizes
from handler.people.plan import Keyframe
from handler.working_frame import working_geometry
from handler.people.geometry import BoxMapping

LIMITS = DecodeLimits(max_frame_pixels=4096 * 4096, max_decode_seconds=60.0)
SHORT_SIDE = 256  # slowfast_r50_detection's working frame
FRACTIONS = torch.tensor([[0.1, 0.2, 0.55, 0.9], [0.5, 0.0, 1.0, 0.5]])


def finder(min_size: int = 800, max_size: int = 1333) -> PersonFinder:
    return PersonFinder(module=None, detector=None, min_size=min_size, max_size=max_size)  # type: ignore[arg-type]


def test_the_detectors_frame_is_the_videos_own_up_to_what_its_transform_would_shrink_it_to():
    import torchvision

    scripted = torch.jit.script(torchvision.models.detection.transform.GeneralizedRCNNTransform(
        700, 1000, [0.5] * 3, [0.5] * 3))
    holder = torch.nn.Module()
    holder.transform = scripted
    assert transform_sizes(holder) == (700, 1000)
    assert transform_sizes(torch.nn.Linear(1, 1)) == (800, 1333)  # torchvision's FasterRCNN defaults
    sizes = finder()
    assert sizes.frame_short_side(340, 256) == 256 and sizes.frame_short_side(320, 568) == 320
    assert sizes.frame_short_side(1280, 720) == 720  # short 720 < 800, long 1280 < 1333: as it is
    assert sizes.frame_short_side(1920, 1080) == 749  # long side 1333: floor(1080 * 1333 / 1920), torchvision's rounding
    assert sizes.frame_short_side(1080, 1920) == 749
    assert sizes.frame_short_side(4000, 3000) == 800


def _keyframe_windows(video: bytes, time: float, persons: PersonsFrames, window=(0.0, 0.5)):
    budget = DecodeBudget(60.0)
    with VideoDecoder(video, LIMITS, SHORT_SIDE, budget=budget) as decoder:
        (found,) = decode_keyframes(decoder, [Keyframe(time, window)], num_frames=8, short_side=SHORT_SIDE,
                                    max_aspect_ratio=LIMITS.max_aspect_ratio, persons=persons)
        return found, decoder.info


@pytest.mark.parametrize("name, min_size, display, frame", [
    ("mp__big_buck_bunny_432_433.webm", 800, (1280, 720), (1280, 720)),  # full resolution
    ("mp__big_buck_bunny_432_433.webm", 360, (1280, 720), (640, 360)),  # shrunk as the transform would
    ("dc__video_90.mov", 800, (320, 568), (320, 568)),  # stored 568x320, shown upright 320x568
    ("dc__video_90.mov", 300, (320, 568), (300, 532)),  # rotated and shrunk: 532 = int(300 * 568 / 320)
])
def test_found_boxes_map_to_the_upright_video_exactly(shared_videos: Path, name, min_size, display, frame):
    """The detector's frame is the keyframe's frame, upright, at its size; boxes found on it (as
    fractions of it) land on the same fractions of the upright video, whatever the rotation and
    the rounding of the frame's size; the working frame gets them as it gets given boxes."""
    video = (shared_videos / name).read_bytes()
    sizes = finder(min_size)
    found, info = _keyframe_windows(video, 0.05, PersonsFrames(video, LIMITS, DecodeBudget(60.0), sizes.frame_short_side),
                                    window=(0.0, 0.1))
    height, width = found.frame_at_keyframe.shape[:2]
    assert (width, height) == frame and found.persons_mapping.display == display
    boxes = FRACTIONS * torch.tensor([width, height, width, height], dtype=torch.float32)
    working, shown = found.place_found(boxes)
    expected = FRACTIONS * torch.tensor([*display, *display], dtype=torch.float32)
    expected = torch.minimum(expected, torch.tensor([display[0] - 1.0, display[1] - 1.0] * 2))  # clipped to the video
    assert torch.allclose(shown, expected, atol=1e-3), (shown, expected)
    assert torch.equal(working, found.mapping.to_working([tuple(b) for b in shown.tolist()]))
    # The same picture as the window's middle frame, upright: the detector's frame scaled to the
    # working size differs from it by resampling only (~1-2 levels of 255; a turned or other frame: tens).
    small = torch.nn.functional.interpolate(found.frame_at_keyframe.permute(2, 0, 1)[None].float(),
                                            size=tuple(found.frames.shape[1:3]), mode="bilinear", antialias=True)[0]
    working_frame = found.frames[found.frames.shape[0] // 2].permute(2, 0, 1).float()
    assert float((small - working_frame).abs().mean()) < 5


def test_without_persons_the_keyframe_frame_is_the_working_frame(shared_videos: Path):
    video = (shared_videos / "dc__video_90.mov").read_bytes()
    budget = DecodeBudget(60.0)
    with VideoDecoder(video, LIMITS, SHORT_SIDE, budget=budget) as decoder:
        (found,) = decode_keyframes(decoder, [Keyframe(0.05, (0.0, 0.1))], num_frames=8, short_side=SHORT_SIDE,
                                    max_aspect_ratio=LIMITS.max_aspect_ratio)
    assert found.persons_mapping is None and tuple(found.frame_at_keyframe.shape) == (454, 256, 3)
    assert found.mapping == BoxMapping.of(working_geometry(568, 320, rotation=-90, short_side=256, max_aspect_ratio=4.0))
