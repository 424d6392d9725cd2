"""Window selection, timestamp sampling and crop placement."""

import math

import pytest
import torch

from export.reference import default_contract
from handler.sampling import clip_windows, frame_times, instants_between
from handler.transforms import crop_offsets, scaled_size
from harness.reference import alias_functional_tensor

# The served model's window and frame count; the worked examples below (16:9 offsets, scaled sizes)
# keep literal sizes, with results computed by hand.
CONTRACT = default_contract()
WINDOW, FRAMES = CONTRACT.window_seconds, CONTRACT.num_frames


def test_one_clip_is_the_middle_window():
    (start, end), = clip_windows(10.0, WINDOW, 1)
    assert start == pytest.approx((10 - WINDOW) / 2) and end - start == pytest.approx(WINDOW)


@pytest.mark.parametrize("duration", [2.2, 10.0, 10.9109, 60.0, 600.0])
@pytest.mark.parametrize("clips", [2, 3, 5, 10])
def test_several_clips_are_pytorchvideos_constant_clips_per_video_sampler(duration, clips):
    from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler

    window = WINDOW
    sampler = ConstantClipsPerVideoSampler(clip_duration=window, clips_per_video=clips)
    expected = []
    for _ in range(clips):
        info = sampler(0.0, duration, {})
        expected.append((float(info.clip_start_sec), float(info.clip_end_sec)))
        if info.is_last_clip:
            break
    got = clip_windows(duration, window, clips)
    assert len(got) == len(expected)
    assert [t for w in got for t in w] == pytest.approx([t for w in expected for t in w], abs=1e-9)


def test_video_shorter_than_a_window_gives_one_window_over_all_of_it():
    assert clip_windows(0.1, WINDOW, 5) == [(0.0, 0.1)]


def test_bad_window_arguments_raise():
    with pytest.raises(ValueError):
        clip_windows(0, 2.0, 1)


def test_frame_times_pick_what_uniform_subsampling_picks_at_constant_rate():
    # The window's frames at 30 fps (64 for 8x8 SlowFast): pytorchvideo keeps linspace(0, n - 1, FRAMES).long().
    fps, start = 30.0, 5.0
    in_window = round(WINDOW * fps)
    times = frame_times((start, start + in_window / fps), FRAMES, 1 / fps)
    shown = [math.floor((t - start) * fps + 1e-6) for t in times]
    assert shown == torch.linspace(0, in_window - 1, FRAMES).long().tolist()


def test_short_clip_repeats_frames_like_uniform_subsampling():
    fps = 30.0
    times = frame_times((0.0, 3 / fps), FRAMES, 1 / fps)  # a 3-frame clip
    shown = [math.floor(t * fps + 1e-6) for t in times]
    assert shown == torch.linspace(0, 2, FRAMES).long().tolist()


def test_frame_times_are_evenly_spaced_in_time():
    times = frame_times((1.0, 3.0), 5, 0.0)
    assert times == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])


def _coordinates(height: int, width: int) -> torch.Tensor:
    """(2, 1, H, W): channel 0 holds each pixel's row, channel 1 its column (C, T, H, W layout)."""
    rows = torch.arange(height, dtype=torch.float32).view(height, 1).expand(height, width)
    cols = torch.arange(width, dtype=torch.float32).view(1, width).expand(height, width)
    return torch.stack([rows, cols]).unsqueeze(1)


SIZES = [(256, 455), (455, 256), (256, 340), (256, 257), (258, 256), (256, 256), (288, 513), (300, 301)]


@pytest.mark.parametrize("height, width", SIZES)
def test_one_crop_is_torchvisions_center_crop(height, width):
    from torchvision.transforms._transforms_video import CenterCropVideo

    cropped = CenterCropVideo(CONTRACT.crop_size)(_coordinates(height, width))
    assert crop_offsets(height, width, CONTRACT.crop_size, 1) == [(int(cropped[0, 0, 0, 0]), int(cropped[1, 0, 0, 0]))]


@pytest.mark.parametrize("height, width", SIZES)
def test_three_crops_are_pytorchvideos_uniform_crop(height, width):
    alias_functional_tensor()
    from pytorchvideo.transforms.functional import uniform_crop

    frames = _coordinates(height, width)
    expected = []
    for spatial_idx in (0, 1, 2):
        cropped = uniform_crop(frames, CONTRACT.crop_size, spatial_idx)
        expected.append((int(cropped[0, 0, 0, 0]), int(cropped[1, 0, 0, 0])))
    assert crop_offsets(height, width, CONTRACT.crop_size, 3) == expected


def test_16_9_center_crops_differ_by_the_reference_rounding():
    # 455 - 256 = 199: torchvision rounds 99.5 to 100 (the tutorial), uniform_crop takes ceil = 100.
    assert crop_offsets(256, 455, 256, 1) == [(0, 100)]
    assert crop_offsets(256, 455, 256, 3) == [(0, 0), (0, 100), (0, 199)]
    with pytest.raises(ValueError):
        crop_offsets(200, 300, 256, 1)


def test_scaled_size_matches_pytorchvideo_short_side_scale():
    assert scaled_size(720, 1280, 256) == (256, 455)
    assert scaled_size(568, 320, 256) == (454, 256)
    assert scaled_size(256, 340, 256) == (256, 340)


@pytest.mark.parametrize("frames_in_window", [64, 63, 48, 3, 1])
def test_instants_between_frames_pick_uniform_subsampling_indices(frames_in_window):
    # Frames at 29.97 fps starting mid-stream: the frame on screen at each instant is the one
    # UniformTemporalSubsample keeps among the window's frames.
    stamps = [100.0 + i * 1001 / 30000 for i in range(frames_in_window)]
    picked = [max(i for i, s in enumerate(stamps) if s <= t + 1e-9) for t in instants_between(stamps, FRAMES)]
    assert picked == torch.linspace(0, frames_in_window - 1, FRAMES).long().tolist()


def test_instants_between_is_order_independent_and_time_uniform():
    assert instants_between([3.0, 1.0, 2.0], 5) == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])
    with pytest.raises(ValueError):
        instants_between([], 4)
