"""Decoding: every container/codec/pixel format of issue 3, timestamp sampling, bounded work, errors."""

from __future__ import annotations

import bisect
import contextlib
import io
from fractions import Fraction
from typing import Optional

import av
import numpy as np
import pytest
import torch

from handler.decoding import DecodeBudget, DecodeLimits, VideoDecoder
from handler.errors import RequestError
from export.reference import default_contract
from handler.protocol import parse_row
from handler.sampling import clip_windows, instants_between
from tests.edge_cases import CASES, EXPECTED, SEEK_HOSTILE, build, build_seek_hostile, frame_index, truncations
from harness.synth import faststart, make_video

LIMITS = DecodeLimits(max_frame_pixels=8192 * 4352, max_decode_seconds=30)
CONTRACT = default_contract()  # what the handler samples: the model's contract
WINDOW, FRAMES, SHORT_SIDE = CONTRACT.window_seconds, CONTRACT.num_frames, CONTRACT.short_side


def sample_default(data: bytes, limits: DecodeLimits = LIMITS, clips: int = 1):
    """The handler's default path: one middle window of the contract's frames (what the handler does)."""
    video = parse_row({"body": data}, {}).videos[0]
    with VideoDecoder(video, limits, SHORT_SIDE) as decoder:
        windows = clip_windows(decoder.info.duration, WINDOW, clips)
        sampled = [decoder.sample(w, FRAMES) for w in windows]
        return decoder.info, sampled


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_input_gets_its_expected_outcome(name):
    expected = EXPECTED[name]
    if expected == 200:
        info, (window,) = sample_default(build(name))
        assert window.frames.dtype == torch.uint8 and window.frames.shape[0] == FRAMES
        assert min(window.frames.shape[1:3]) == SHORT_SIDE and window.frames.shape[3] == 3
        assert 0 < info.duration < 60
    else:
        with pytest.raises(RequestError) as caught:
            sample_default(build(name))
        assert (caught.value.status, caught.value.reason) == expected
        assert 400 <= caught.value.status < 500 and len(caught.value.message) > 20


@pytest.mark.parametrize("index_first", [False, True])
def test_truncated_files_answer_or_refuse_cleanly(index_first):
    options = {"preset": "ultrafast"}
    whole = make_video(frames=90, codec="libx264", options=options, gop=15, container="mp4")
    if index_first:
        whole = faststart(whole)
    for name, cut in truncations(whole).items():
        try:
            _, (window,) = sample_default(cut)
            assert window.frames.shape[0] == FRAMES, name
        except RequestError as error:
            assert 400 <= error.status < 500, (name, error.status)


def test_corrupt_real_clip_is_answered_from_what_decodes(shared_videos):
    info, (window,) = sample_default((shared_videos / "dc__corrupted.mp4").read_bytes())
    assert window.decode_errors >= 1 and window.frames.shape == (FRAMES, SHORT_SIDE, 455, 3)


def _gray_video(pts_ms, time_base=Fraction(1, 1000), container="matroska") -> bytes:
    """Flat gray frames whose level encodes their index (index * 4), lossless, explicit timestamps."""
    def source(i):
        return np.full((120, 160, 3), i * 4, dtype=np.uint8)
    return make_video(frames=len(pts_ms), width=160, height=120, container=container, codec="libx264",
                      pts=pts_ms, time_base=time_base, options={"preset": "ultrafast", "qp": "0"},
                      frame_source=source)


def _indices(frames: torch.Tensor) -> list:
    return [int(round(float(f.float().mean()) / 4)) for f in frames]


def test_variable_frame_rate_is_sampled_by_timestamp():
    pts, t = [], 0
    for i in range(60):
        pts.append(t)
        t += 10 if i % 3 else 150  # bursts of quick frames between long gaps
    data = _gray_video(pts)
    with VideoDecoder(data, LIMITS, SHORT_SIDE) as decoder:
        window = (0.0, pts[-1] / 1000 + 0.010)
        sampled = decoder.sample(window, FRAMES)
    times = instants_between([p / 1000 for p in pts], FRAMES)
    # The frame shown at each instant: the last one whose timestamp is <= the instant.
    expected = [bisect.bisect_right([p / 1000 for p in pts], t + 1e-4) - 1 for t in times]
    assert _indices(sampled.frames) == expected
    # By index, uniform subsampling would pick frames 0, 1.9, 3.8, ...: very different instants.
    assert expected != torch.linspace(0, 59, FRAMES).long().tolist()


def test_first_timestamp_far_from_zero():
    offset = 10 * 3600 * 1000
    data = _gray_video([offset + 100 * i for i in range(40)])
    info, (window,) = sample_default(data)
    assert info.duration == pytest.approx(4.0, abs=0.15)
    expected_window = clip_windows(info.duration, WINDOW, 1)[0]
    first = _indices(window.frames)[0]
    # 10 fps: the frame shown at the window start (within the decoder's 2%-of-a-frame tolerance).
    assert first == int(expected_window[0] * 10 + 0.02)


@pytest.mark.parametrize("frames, fps", [(1, 30), (3, 30), (6, 60)])
def test_very_short_videos_repeat_frames_uniformly(frames, fps):
    # Timestamps exact in a 1/6000 s time base (MP4 keeps it; Matroska would round to ms).
    data = _gray_video([i * 6000 // fps for i in range(frames)], time_base=Fraction(1, 6000), container="mp4")
    _, (window,) = sample_default(data)
    assert _indices(window.frames) == torch.linspace(0, frames - 1, FRAMES).long().tolist()


def test_one_window_of_a_long_video_decodes_a_small_fraction_of_it():
    total = 60 * 30
    data = make_video(frames=total, width=160, height=96, codec="libx264", gop=60,
                      options={"preset": "ultrafast"})
    _, (window,) = sample_default(data)
    assert window.frames_decoded < 0.1 * total, window.frames_decoded  # ~64 in the window + a GOP


def test_clips_spread_over_the_video_each_decode_their_own_window():
    total = 40 * 30
    data = make_video(frames=total, width=160, height=96, codec="libx264", gop=30, options={"preset": "ultrafast"})
    info, sampled = sample_default(data, clips=4)
    assert len(sampled) == 4 and all(s.frames.shape[0] == FRAMES for s in sampled)
    starts = [s.window[0] for s in sampled]
    assert starts == sorted(starts) and starts[-1] - starts[0] > 20  # spread over the 40 s
    # 4 windows of 64 frames plus up to a GOP each: well under the whole video.
    assert sum(s.frames_decoded for s in sampled) < 4 * (64 + 30 + 8)


def test_rotated_phone_video_is_turned_upright(shared_videos):
    data = (shared_videos / "dc__video_90.mov").read_bytes()
    info, (window,) = sample_default(data)
    assert info.rotation == -90
    # The stored frames are landscape 568x320; a player turns them 90 degrees clockwise.
    raw = [f.to_ndarray(format="rgb24") for f in av.open(io.BytesIO(data)).decode(video=0)]
    upright = torch.from_numpy(np.rot90(raw[0], k=-1).copy())
    assert window.frames.shape == (FRAMES, 454, SHORT_SIDE, 3)
    resized = torch.nn.functional.interpolate(
        upright.permute(2, 0, 1)[None].float(), size=(454, 256), mode="bilinear", align_corners=False
    )[0].permute(1, 2, 0)
    ours = window.frames[0].float()
    assert (ours - resized).abs().mean() < 6  # same picture (resampling differs slightly)
    wrong_way = torch.flip(resized, dims=(0, 1))  # 180 degrees off
    assert (ours - wrong_way).abs().mean() > 3 * (ours - resized).abs().mean()


def test_decode_time_limit_is_a_clear_4xx():
    data = make_video(frames=300, codec="libx264", options={"preset": "ultrafast"})
    with pytest.raises(RequestError) as caught:
        sample_default(data, DecodeLimits(max_frame_pixels=10**8, max_decode_seconds=1e-6))
    assert (caught.value.status, caught.value.reason) == (422, "decode_timeout")


def test_pixel_limit_refuses_large_frames_before_decoding():
    data = make_video(frames=3, width=640, height=480, codec="libx264", options={"preset": "ultrafast"})
    with pytest.raises(RequestError) as caught:
        sample_default(data, DecodeLimits(max_frame_pixels=640 * 480 - 1, max_decode_seconds=30))
    assert (caught.value.status, caught.value.reason) == (413, "frame_too_large")
    assert "640x480" in caught.value.message


# -- seek-hostile streams (issue 9) -----------------------------------------------------------


def _expected_indices(frames, window, num_frames=32, first_decodable=0):
    """Uniform subsampling of the frames whose time lies in the window; a frame before the first
    decodable one shows as that one (nothing earlier can be put on screen)."""
    inside = [i for i, t in frames if window[0] - 1e-4 <= t < window[1] - 1e-4]
    return [max(inside[k], first_decodable) for k in torch.linspace(0, len(inside) - 1, num_frames).long().tolist()]


@pytest.mark.parametrize("clips", [1, 3])
@pytest.mark.parametrize("name", sorted(SEEK_HOSTILE))
def test_seek_hostile_streams_sample_the_right_frames(name, clips):
    data, frames, first_decodable = build_seek_hostile(name)
    with VideoDecoder(data, LIMITS, 256) as decoder:
        present = [(i, t) for i, t in frames if t < decoder.info.duration]
        assert decoder.info.duration == pytest.approx(present[-1][1] + 1 / 30, abs=0.05)
        windows = clip_windows(decoder.info.duration, WINDOW, clips)
        for window in windows:
            got = [frame_index(f) for f in decoder.sample(window, 32).frames]
            assert got == _expected_indices(present, window, first_decodable=first_decodable), (name, window)
        if name == "mp4_index_past_data":
            assert any("index lists 10.00 s" in note for note in decoder.warnings), decoder.warnings


def test_window_that_cannot_be_filled_says_what_was_found():
    data, frames, _ = build_seek_hostile("ts_h264_start_1_48")
    with VideoDecoder(data, LIMITS, 256) as decoder:
        with pytest.raises(RequestError) as caught:
            decoder.sample((8.0, 10.0), 32)
    assert (caught.value.status, caught.value.reason) == (422, "no_frames")
    # Everything that decodes was seen: 120 frames over the 5 s.
    assert "found 120 frames at 0.00-4.96 s" in caught.value.message, caught.value.message


# -- one deadline per request, messages ---------------------------------------------------------


def test_one_decoding_budget_is_shared_by_every_video_of_a_request():
    data = make_video(frames=60, width=160, height=96, codec="libx264", options={"preset": "ultrafast"})
    clock = [1000.0]
    limits = DecodeLimits(max_frame_pixels=10**8, max_decode_seconds=10)
    budget = DecodeBudget(limits.max_decode_seconds, clock=lambda: clock[0])
    with VideoDecoder(data, limits, 256, budget=budget) as first:
        with budget.running():
            clock[0] += 9.0  # the first video took 9 s of the request's 10
        first.sample((0.0, 1.0), 8)
    clock[0] += 500.0  # time outside the decoders (the model's forwards) does not count
    with VideoDecoder(data, limits, 256, budget=budget) as second:
        second.sample((0.0, 1.0), 8)  # within the shared budget
        with budget.running():
            clock[0] += 1.5
            with pytest.raises(RequestError) as caught:
                second.sample((0.0, 1.0), 8)
    assert (caught.value.status, caught.value.reason) == (422, "decode_timeout")
    assert "decoding this request took longer than the limit of 10 s" in caught.value.message
    # Without a budget a decoder gets its own max_decode_seconds.
    with VideoDecoder(data, limits, 256) as alone:
        alone.sample((0.0, 1.0), 8)


def test_a_streamed_timeline_budget_starts_again_at_each_window():
    data = make_video(frames=90, width=160, height=96, codec="libx264", options={"preset": "ultrafast"})
    clock = [1000.0]
    windows = [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
    for per_window, expected in ((True, 3), (False, 2)):
        budget = DecodeBudget(5.0, per_window=per_window, clock=lambda: clock[0])
        got = 0
        with VideoDecoder(data, DecodeLimits(max_frame_pixels=10**8, max_decode_seconds=5), 256, budget=budget) as decoder:
            with pytest.raises(RequestError) if not per_window else contextlib.nullcontext():
                for _ in decoder.sample_windows(windows, 8):
                    got += 1
                    budget.spent += 4.0  # each window took 4 s of decoding
        assert got == expected, per_window


@pytest.mark.parametrize("per_window, unit, words", [
    (False, None, "decoding this request took longer than the limit of 5 s"),
    (True, None, "decoding one window of this streamed timeline took longer than the limit of 5 s"),
    (True, "one keyframe of this streamed answer",
     "decoding one keyframe of this streamed answer took longer than the limit of 5 s"),
    (False, "one keyframe of this streamed answer", "decoding this request took longer"),  # a whole-request budget
])
def test_the_decode_timeout_names_what_its_budget_covers(per_window: bool, unit: Optional[str], words: str) -> None:
    """The 422 names the unit the caller gave its budget (a classifier's streamed window by default)."""
    budget = DecodeBudget(5.0, per_window=per_window, clock=lambda: 0.0, **({"unit": unit} if unit else {}))
    budget.spent = 5.5
    with pytest.raises(RequestError) as caught:
        budget.check()
    assert (caught.value.status, caught.value.reason) == (422, "decode_timeout")
    assert caught.value.message.startswith(words), caught.value.message


def _mp3_with_cover() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp3") as output:
        audio = output.add_stream("libmp3lame", rate=16000)
        audio.layout = "mono"
        cover = output.add_stream("mjpeg")
        cover.width, cover.height, cover.pix_fmt = 64, 64, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        for packet in cover.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
            output.mux(packet)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        samples.sample_rate = 16000
        for packet in [*audio.encode(samples), *audio.encode()]:
            output.mux(packet)
    return buffer.getvalue()


def test_mp3_with_cover_art_is_named_as_such():
    data = _mp3_with_cover()
    assert any(s.disposition & av.stream.Disposition.attached_pic for s in av.open(io.BytesIO(data)).streams.video)
    with pytest.raises(RequestError) as caught:
        VideoDecoder(data, LIMITS, 256)
    assert (caught.value.status, caught.value.reason) == (422, "no_video_stream")
    message = caught.value.message
    assert "attached picture (cover art)" in message and "cannot be classified" in message
    assert "streams: audio, video" not in message


# -- aspect-ratio bombs (issue 9) ---------------------------------------------------------------


def _strip_source(width, height):
    def source(i):
        # A ramp 0..255 along the long side: the central region is near 127.
        ramp = np.linspace(0, 255, max(width, height)).astype(np.uint8)
        image = np.repeat(ramp[None, :, None], 3, axis=2) if width >= height else np.repeat(ramp[:, None, None], 3, axis=2)
        return np.broadcast_to(image, (height, width, 3)).copy()
    return source


@pytest.mark.parametrize("width, height", [(8192, 16), (16, 8192)])
def test_aspect_ratio_bomb_is_answered_from_its_centre(width, height):
    data = make_video(frames=40, width=width, height=height, codec="libx264", options={"preset": "ultrafast"},
                      frame_source=_strip_source(width, height))
    with VideoDecoder(data, LIMITS, 256) as decoder:
        sampled = list(decoder.sample_windows(clip_windows(decoder.info.duration, WINDOW, 2), 32))
        notes = decoder.warnings
    expected = (32, 256, 1024, 3) if width > height else (32, 1024, 256, 3)
    for window in sampled:
        assert window.frames.shape == expected  # 4:1 at most, never 131072 x 256
        assert window.warnings == [notes[0]]
    long_side = max(width, height)
    assert notes[0] == (f"the frame is {width}x{height} (aspect {long_side // 16}:1); the central "
                        f"{'64x16' if width > height else '16x64'} region, aspect 4:1, was used")
    # The central region: the ramp there is near its middle value (127), not its ends.
    frame = sampled[0].frames[0].float()
    assert abs(frame.mean().item() - 127.5) < 3 and frame.max() - frame.min() < 6


def test_normal_aspect_ratios_are_not_cropped():
    data = make_video(frames=10, width=336, height=96, codec="libx264", options={"preset": "ultrafast"})  # 3.5:1
    with VideoDecoder(data, LIMITS, 256) as decoder:
        window = decoder.sample((0.0, 0.3), 4)
        assert window.frames.shape == (4, 256, 896, 3) and not window.warnings and not decoder.warnings


# -- the caller chooses instants, the decoder returns the frames shown at them (issue 18) --------


def test_frames_at_returns_the_frames_shown_at_the_callers_instants():
    data = _gray_video([100 * i for i in range(40)])  # 10 fps: frame i from i/10 s, level 4 * i
    seen = []

    def choose(window, times):
        seen.append((window, times))
        return [1.0, 1.05, 2.5, 2.99] if window[0] == 1.0 else [0.3]

    with VideoDecoder(data, LIMITS, SHORT_SIDE) as decoder:
        first, second = decoder.frames_at([(0.0, 0.5), (1.0, 3.0)], choose)
    assert _indices(first.frames) == [3] and _indices(second.frames) == [10, 10, 25, 29]
    # The chooser sees each window's frame timestamps, [start, end), from the video start.
    assert [w for w, _ in seen] == [(0.0, 0.5), (1.0, 3.0)]
    assert seen[1][1] == pytest.approx([1.0 + 0.1 * k for k in range(20)])
