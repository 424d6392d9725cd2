"""Send the window, not the file (client/window_cut.py): the cut of a video that a request's windows
need, sent with ``source_offset``/``source_duration``, gets the whole file's answer.

Most tests run the real handler in this process (harness/inproc.py) on the file and on its cut and
compare what the model was fed (bit for bit: the same frames, the same preprocessing) and the
answers (windows and duration in the source's clock, labels, probabilities); one test goes through
a real TorchServe with ``python -m client``. The cuts are made with the model's own window length
and no size threshold, so that the short clips of ../shared/videos are cut too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Mapping

import numpy as np
import pytest
import torch

from client.window_cut import (
    EXACT_SECONDS, MAX_WINDOW_SECONDS, Cut, WholeFile, cut_for_windows, for_request, needed_spans,
)
from handler.errors import RequestError
from handler.request_options import resolve_request_options
from handler.serve_settings import ServeOptions
from harness.inproc import InProcessHandler
from harness.synth import make_video

# Fast x264 with B-frames (reordered packets: a cut must keep the frames decoded after the window's
# last one) and a keyframe every 2 s.
X264_B_FRAMES = {"preset": "superfast", "bf": "2", "sc_threshold": "0"}
# What the client may cut in ../shared/videos, and why it sends the others whole.
WHOLE_BECAUSE = {
    "tc__nasa_13013.mp4.audio.mp3": "no video stream",
    "tv__RATRACE_wave_f_nm_np1_fr_goo_37.avi": "codec (mpeg4)",
    "tv__v_SoccerJuggling_g23_c01.avi": "codec (mpeg4)",
    "dc__video_90.mov": "rotated",
    "dc__corrupted.mp4": "cannot be remuxed",
}


@pytest.fixture(scope="module")
def handler(built) -> InProcessHandler:
    return InProcessHandler(built["pt"])


@pytest.fixture(scope="module")
def long_videos() -> Dict[str, bytes]:
    """Synthesized videos longer than any window: H.264 with B-frames in MP4 (1/15360 clock) and in
    Matroska (millisecond clock), 25 fps and 30 fps."""
    return {
        "h264_bframes_60s.mp4": make_video(frames=1800, width=160, height=120, fps=30, gop=60,
                                           options=X264_B_FRAMES),
        "h264_40s_25fps.mkv": make_video(frames=1000, width=176, height=144, fps=25, gop=50, container="matroska",
                                         options=X264_B_FRAMES, seed=3),
    }


def noisy_video(seed: int = 0) -> bytes:
    """60 s of noise at 5 fps, a keyframe every 2 s: frames of some size, as in real video (the
    pattern videos' frames are ~100 bytes, and MPEG-TS's 188-byte packets would outweigh them)."""
    rng = np.random.default_rng(seed)
    return make_video(frames=300, width=160, height=120, fps=5, gop=10, options=X264_B_FRAMES,
                      frame_source=lambda i: rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))


def _answers_agree(whole: Mapping[str, Any], cut: Mapping[str, Any]) -> None:
    flat = lambda windows: [t for window in windows for t in window]  # noqa: E731
    # 1e-4: the answer's rounding of seconds (the cut's window + offset may round the other way).
    assert flat(cut["windows"]) == pytest.approx(flat(whole["windows"]), abs=2e-4)
    assert cut["video"]["duration_s"] == whole["video"]["duration_s"]
    for key in ("width", "height", "codec"):
        assert cut["video"][key] == whole["video"][key]
    assert cut["views"] == whole["views"]
    assert [p["index"] for p in cut["predictions"]] == [p["index"] for p in whole["predictions"]]
    assert [p["probability"] for p in cut["predictions"]] == pytest.approx(
        [p["probability"] for p in whole["predictions"]], abs=1e-5)
    for mine, theirs in zip(cut.get("timeline", []), whole.get("timeline", [])):
        assert (mine["start"], mine["end"]) == pytest.approx((theirs["start"], theirs["end"]), abs=2e-4)


def _compare(handler: InProcessHandler, data: bytes, fields: Dict[str, str]) -> Cut:
    """The file's answer and inputs, and its cut's: equal. Returns the cut."""
    whole = handler.handle(data, fields, capture=True)
    fed_whole = handler.last_inputs
    cut = cut_for_windows(data, fields, window=handler.contract.window_seconds, max_fraction=1.0)
    assert isinstance(cut, Cut), cut.describe()
    answer = handler.handle(cut.data, cut.fields, capture=True)
    fed_cut = handler.last_inputs
    assert len(fed_cut) == len(fed_whole)
    for mine, theirs in zip(fed_cut, fed_whole):
        for a, b in zip(mine, theirs):
            assert torch.equal(a, b), "the cut fed the model other frames than the file"
    _answers_agree(whole, answer)
    return cut


def test_every_shared_video_is_cut_or_sent_whole_for_a_stated_reason(handler, shared_videos) -> None:
    for path in sorted(shared_videos.iterdir()):
        if path.suffix == ".tsv":
            continue
        data = path.read_bytes()
        if path.name in WHOLE_BECAUSE:
            sent = cut_for_windows(data, {}, window=handler.contract.window_seconds, max_fraction=1.0)
            assert isinstance(sent, WholeFile) and WHOLE_BECAUSE[path.name] in sent.reason, (path.name, sent)
            continue
        # Two windows where the clip is long enough to place them apart (two segments of one cut).
        _compare(handler, data, {"clips": "2"} if path.name == "tv__basketball.mp4" else {})


@pytest.mark.heavy
def test_long_videos_cut_to_their_windows_answer_as_the_whole_file(handler, long_videos) -> None:
    for name, data in long_videos.items():
        cut = _compare(handler, data, {})
        # A few seconds of the video (MPEG-TS's 188-byte packets weigh on frames this small).
        assert sum(b - a for a, b in cut.segments) < 5.0 and len(cut.data) < len(data) / 3, (name, cut.segments)
        cut = _compare(handler, data, {"clips": "3"})
        assert len(cut.segments) == 3, cut.segments  # one segment per window, gaps between them
    data = long_videos["h264_bframes_60s.mp4"]
    cut = _compare(handler, data, {"start": "11.3", "end": "19.9", "clips": "2"})
    assert cut.segments[0][0] <= 11.3 and len(cut.segments) == 2, cut.segments
    cut = _compare(handler, data, {"timeline": "true", "start": "20", "end": "27.5", "stride": "2.5"})
    assert float(cut.fields["source_offset"]) == pytest.approx(20.0, abs=EXACT_SECONDS)  # keyframes every 2 s


@pytest.mark.heavy
def test_the_client_cut_of_a_long_video_is_small_and_names_the_source_clock() -> None:
    data = noisy_video()
    cut = for_request(data, {})
    assert isinstance(cut, Cut)
    offset, duration = float(cut.fields["source_offset"]), float(cut.fields["source_duration"])
    assert duration == pytest.approx(60.0, abs=0.05)
    # The cut starts at a keyframe (every 2 s) at or before where a window of up to MAX_WINDOW_SECONDS starts.
    assert offset <= (duration - MAX_WINDOW_SECONDS) / 2 and offset % 2.0 == pytest.approx(0.0, abs=EXACT_SECONDS)
    assert len(cut.data) < 0.5 * len(data)
    assert isinstance(for_request(data, {}, whole_file=True), WholeFile)
    # A timeline of the whole video needs all of it.
    timeline = for_request(data, {"timeline": "true"})
    assert isinstance(timeline, WholeFile) and "not much smaller" in timeline.reason, timeline


def test_needed_spans_cover_every_window_a_model_may_plan() -> None:
    from handler.sampling import clip_windows

    for fields in ({}, {"clips": "4"}, {"start": "30", "end": "70", "clips": "3"}):
        spans = needed_spans(100.0, fields, window=10.0)
        start, end = float(fields.get("start", 0)), float(fields.get("end", 100))
        for w in (0.5, 2.1333, 10.0):
            for a, b in clip_windows(end - start, w, int(fields.get("clips", 1))):
                assert any(x <= start + a and start + b <= y for x, y in spans), (fields, w, (a, b), spans)
    assert needed_spans(100.0, {"timeline": "true", "start": "10", "end": "20"}, window=10.0) == [(10.0, 20.5)]
    assert needed_spans(8.0, {}, window=10.0) == [(0.0, 8.0)]


def test_source_options_are_checked_and_go_together() -> None:
    defaults = ServeOptions()
    for given, words in (({"source_offset": "3"}, "go together"), ({"source_duration": "30"}, "go together"),
                         ({"source_offset": "30", "source_duration": "30"}, "before the source's end"),
                         ({"source_offset": "-1", "source_duration": "30"}, "source_offset must be")):
        with pytest.raises(RequestError) as raised:
            resolve_request_options(given, defaults, 400)
        assert raised.value.status == 400 and words in str(raised.value), (given, raised.value)
    options = resolve_request_options({"source_offset": "4.5", "source_duration": "30"}, defaults, 400)
    assert (options.offset, options.source_duration) == (4.5, 30.0)


def test_a_window_outside_the_upload_is_a_400_naming_it(handler, long_videos) -> None:
    data = long_videos["h264_40s_25fps.mkv"]
    cut = cut_for_windows(data, {}, window=handler.contract.window_seconds, max_fraction=1.0)
    assert isinstance(cut, Cut)
    fields = {**cut.fields, "clips": "3"}  # a deployment default the client did not know
    handler.context.start_batch([fields])
    response = handler.handler.handle([{"body": bytearray(cut.data)}], handler.context)[0]
    status = handler.context.statuses.get(0, (200, ""))[0]
    assert status == 400 and "window_outside_upload" in json.dumps(response), response


@pytest.mark.integration
def test_the_client_sends_the_cut_through_torchserve(server, tmp_path: Path) -> None:
    path = tmp_path / "long.mp4"
    path.write_bytes(noisy_video(seed=5))
    base = [sys.executable, "-m", "client", str(path), "--json", "--url", server.inference_url,
            "--key-file", str(server.workdir / "key_file.json")]
    answers = {}
    for mode in ("cut", "whole"):
        run = subprocess.run(base + ["--verbose"] + (["--whole-file"] if mode == "whole" else []),
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        answers[mode] = json.loads(run.stdout)
        assert ("mpegts cut of" in run.stderr) == (mode == "cut"), run.stderr
    _answers_agree(answers["whole"], answers["cut"])
    assert answers["cut"]["video"]["container"] == answers["whole"]["video"]["container"]


def test_a_cut_sent_over_kserve_answers_as_the_file(handler, long_videos) -> None:
    from client.kserve import KServeCodec

    data = long_videos["h264_40s_25fps.mkv"]
    whole = handler.handle(data)
    cut = cut_for_windows(data, {}, window=handler.contract.window_seconds, max_fraction=1.0)
    assert isinstance(cut, Cut)
    for version in ("v1", "v2"):
        codec = KServeCodec(version)
        body, _ = codec.encode(cut.data, cut.fields)  # source_offset/source_duration as JSON parameters
        answer = codec.decode(handler.handle(body), cut.fields)
        assert [p["index"] for p in answer["predictions"]] == [p["index"] for p in whole["predictions"]], version
        assert [p["probability"] for p in answer["predictions"]] == pytest.approx(
            [p["probability"] for p in whole["predictions"]], abs=1e-5)
        if version == "v1":
            _answers_agree(whole, answer)
