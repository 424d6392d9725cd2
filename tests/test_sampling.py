"""Window selection, timestamp sampling and crop placement."""

import math

import pytest
import torch

from handler.sampling import clip_windows, crop_offsets, frame_times, instants_between, scaled_size


def test_one_clip_is_the_middle_window():
    (start, end), = clip_windows(10.0, 64 / 30, 1)
    assert start == pytest.approx((10 - 64 / 30) / 2) and end - start == pytest.approx(64 / 30)


def test_clips_spread_uniformly_inside_the_video():
    windows = clip_windows(60.0, 2.0, 10)
    starts = [w[0] for w in windows]
    assert len(windows) == 10 and all(0 <= s and e <= 60.0 for s, e in windows)
    gaps = {round(b - a, 6) for a, b in zip(starts, starts[1:])}
    assert gaps == {round(58.0 / 10, 6)}
    assert starts[0] == pytest.approx(58.0 * 0.05)


def test_video_shorter_than_a_window_gives_one_window_over_all_of_it():
    assert clip_windows(0.1, 64 / 30, 5) == [(0.0, 0.1)]


def test_bad_window_arguments_raise():
    with pytest.raises(ValueError):
        clip_windows(0, 2.0, 1)


def test_frame_times_pick_what_uniform_subsampling_picks_at_constant_rate():
    # 64 frames at 30 fps in the window: pytorchvideo keeps linspace(0, 63, 32).long().
    fps, start = 30.0, 5.0
    times = frame_times((start, start + 64 / fps), 32, 1 / fps)
    shown = [math.floor((t - start) * fps + 1e-6) for t in times]
    assert shown == torch.linspace(0, 63, 32).long().tolist()


def test_short_clip_repeats_frames_like_uniform_subsampling():
    fps = 30.0
    times = frame_times((0.0, 3 / fps), 32, 1 / fps)  # a 3-frame clip
    shown = [math.floor(t * fps + 1e-6) for t in times]
    assert shown == torch.linspace(0, 2, 32).long().tolist()


def test_frame_times_are_evenly_spaced_in_time():
    times = frame_times((1.0, 3.0), 5, 0.0)
    assert times == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])


def test_crop_offsets_center_and_three_along_the_long_side():
    assert crop_offsets(256, 455, 256, 1) == [(0, 99)]
    assert crop_offsets(256, 455, 256, 3) == [(0, 0), (0, 99), (0, 199)]
    assert crop_offsets(455, 256, 256, 3) == [(0, 0), (99, 0), (199, 0)]
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
    picked = [max(i for i, s in enumerate(stamps) if s <= t + 1e-9) for t in instants_between(stamps, 32)]
    assert picked == torch.linspace(0, frames_in_window - 1, 32).long().tolist()


def test_instants_between_is_order_independent_and_time_uniform():
    assert instants_between([3.0, 1.0, 2.0], 5) == pytest.approx([1.0, 1.5, 2.0, 2.5, 3.0])
    with pytest.raises(ValueError):
        instants_between([], 4)
