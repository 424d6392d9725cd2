"""Decoding: every container/codec/pixel format of issue 3, timestamp sampling, bounded work, errors."""

from __future__ import annotations

import bisect
import io
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from handler.decoding import DecodeLimits, VideoDecoder
from handler.errors import RequestError
from export.reference import slowfast_r50_contract
from handler.protocol import parse_row
from handler.sampling import clip_windows, instants_between
from tests.edge_cases import CASES, EXPECTED, build, truncations
from tests.synth import make_video

LIMITS = DecodeLimits(max_frame_pixels=8192 * 4352, max_decode_seconds=30)
CONTRACT = slowfast_r50_contract()  # what the handler samples: the model's contract
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


@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_files_answer_or_refuse_cleanly(faststart):
    options = {"preset": "ultrafast"}
    whole = make_video(frames=90, codec="libx264", options=options, gop=15, container="mp4")
    if faststart:
        whole = _faststart(whole)
    for name, cut in truncations(whole).items():
        try:
            _, (window,) = sample_default(cut)
            assert window.frames.shape[0] == FRAMES, name
        except RequestError as error:
            assert 400 <= error.status < 500, (name, error.status)


def _faststart(data: bytes) -> bytes:
    """Remux with the index (moov) first, as streaming-friendly encoders write it."""
    import tempfile
    from pathlib import Path

    source = av.open(io.BytesIO(data))
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "faststart.mp4"
        _remux(source, path)
        return path.read_bytes()


def _remux(source, path) -> None:
    with av.open(str(path), mode="w", format="mp4", options={"movflags": "faststart"}) as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            target.mux(packet)


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
