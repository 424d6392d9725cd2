"""``python -m client live SOURCE --people`` against a fake TorchServe: each window goes to the
action detector, asked for the keyframe its window is centred on; persons and actions are shown and
written per window, formatted as ``python -m client people`` formats them (client/people.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import pytest

from client import people
from client.cli import main as client_main
from client.live import cli as live_cli
from client.live.sender import make_stream_file
from tests.fake_torchserve import FakeTorchServe, Reply

FPS = 25
WINDOW, KEYFRAME_AT = 1.0, 0.5  # the AVA detector's: the keyframe in the middle of a 1 s window
PERSON = {"box": [10.0, 20.0, 150.0, 250.0], "score": 0.95,
          "actions": [{"label": "stand", "index": 11, "probability": 0.8},
                      {"label": "watch (a person)", "index": 79, "probability": 0.6}]}


@pytest.fixture(scope="module")
def stream_file(shared_videos: Path, tmp_path_factory) -> Path:
    """8 s of a real clip as a camera sends it: H.264, 25 fps, a keyframe a second, MPEG-TS."""
    return make_stream_file(shared_videos / "tv__WUzgd7C1pWA.mp4", tmp_path_factory.mktemp("live-people") / "s.ts",
                            fps=FPS, seconds=8.0)


def detector(request) -> Reply:
    """The detector's answers: the probe (no person at its middle) and one person per window."""
    if "boxes" in request.headers:
        (time,) = [float(t) for t in json.loads(request.headers["boxes"])]
        keyframe = {"time": time, "window": [time - KEYFRAME_AT, time - KEYFRAME_AT + WINDOW], "persons": []}
    else:
        time = float(request.headers["keyframes"])
        keyframe = {"time": time, "window": [time - KEYFRAME_AT, time - KEYFRAME_AT + WINDOW], "persons": [PERSON]}
    return Reply(200, {"keyframes": [keyframe], "boxes_from": "detector", "timings_ms": {"handler_total": 12.5}})


def clip_end(data: bytes) -> float:
    """Seconds from a clip's first frame to the end of its last (the window's end)."""
    with av.open(io.BytesIO(data)) as container:
        times = [frame.time for frame in container.decode(video=0)]
    return times[-1] - times[0] + 1.0 / FPS


def test_each_window_asks_the_detector_for_its_middle_and_shows_who_does_what(stream_file, tmp_path):
    out, shown = tmp_path / "live.jsonl", io.StringIO()
    with FakeTorchServe(detector) as fake:
        status = live_cli.main([str(stream_file), "--people", "--url", fake.url, "--token", "t", "--hop", "2",
                                "--max-windows", "3", "--out", str(out)], stdout=shown)
        probe, *windows = fake.requests
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert status == 0 and len(windows) == len(lines) == 3
    assert {r.path for r in fake.requests} == {f"/predictions/{people.DETECTION_MODEL}"}
    assert json.loads(probe.headers["boxes"]) == {"8": []} and "clips" not in probe.headers
    for request in windows:  # the keyframe whose window is the clip's last WINDOW seconds; no classifier option
        assert "start" not in request.headers and "topk" not in request.headers and "threshold" not in request.headers
        assert float(request.headers["keyframes"]) + (WINDOW - KEYFRAME_AT) == pytest.approx(clip_end(request.body), abs=1e-3)
    for line, request in zip(lines, windows):
        assert line["status"] == "ok" and "predictions" not in line
        assert line["keyframes"][0]["persons"] == [PERSON] and line["handler_ms"] == 12.5
        assert line["clip_options"] == {"keyframes": request.headers["keyframes"]}
    shown_lines = [text for text in shown.getvalue().splitlines() if "person" in text]
    assert len(shown_lines) == 3 and all(people.persons_text({"persons": [PERSON]}) in text for text in shown_lines)
    assert "1 person: 0.95 stand, watch (a person)" in shown_lines[0]


def test_the_action_threshold_and_topk_go_to_the_detector(stream_file, tmp_path):
    with FakeTorchServe(detector) as fake:
        status = live_cli.main([str(stream_file), "--people", "--url", fake.url, "--token", "t", "--hop", "3",
                                "--max-windows", "1", "--action-threshold", "0.3", "--topk", "2",
                                "--model", "my_detector"], stdout=io.StringIO())
        sent = fake.requests[-1]
    assert status == 0 and sent.path == "/predictions/my_detector"
    assert (sent.headers["threshold"], sent.headers["topk"]) == ("0.3", "2")


def test_a_classifier_answering_the_probe_is_a_clear_error(stream_file, capsys):
    answer = Reply(200, {"predictions": [{"label": "texting", "index": 0, "probability": 0.5}], "windows": [[0, 2.1]]})
    with FakeTorchServe(lambda request: answer) as fake:
        assert live_cli.main([str(stream_file), "--people", "--url", fake.url, "--token", "t"], stdout=io.StringIO()) == 1
    assert "names no keyframe window" in capsys.readouterr().err


def test_a_detector_without_a_person_detector_is_said_at_start(stream_file, capsys):
    """Offline exports have none (README): a live window carries no boxes, so nothing could be answered."""
    def answer(request) -> Reply:
        reply = detector(request)
        reply.body["person_detector"] = None
        return reply

    with FakeTorchServe(answer) as fake:
        assert live_cli.main([str(stream_file), "--people", "--url", fake.url, "--token", "t"], stdout=io.StringIO()) == 1
        assert len(fake.requests) == 1  # the probe, no window
    assert "has no person detector" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--people", "--crops", "3"], "--crops does not apply to an action detector"),
    (["--people", "--embedding"], "--output does not apply to an action detector"),
    (["--people", "--average", "3"], "each window stands alone"),
    (["--people", "--protocol", "kserve-v1"], "--people talks to TorchServe"),
    (["--action-threshold", "0.5"], "--action-threshold is for --people"),
    (["--people", "--action-threshold", "2"], "is a probability"),
])
def test_flags_that_do_not_fit_people_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        client_main(["live", "udp://127.0.0.1:5000", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
