"""``python -m client people`` (client/people.py): the request it sends, the lines it prints, the
boxes it draws (on frames turned upright as the server turns them)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from client import people
from tests.fake_torchserve import FakeTorchServe, Reply

ROTATED = "dc__video_90.mov"  # stored 568x320, shown 320x568


def test_the_request_carries_the_boxes_file_as_compact_json_and_the_options(tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"2.0": [[1, 2, 30, 40]]}, indent=2))
    args = people.build_parser().parse_args(["v.mp4", "--boxes", str(boxes), "--threshold", "0.3", "--topk", "2"])
    assert people.request_fields(args) == {"boxes": '{"2.0":[[1,2,30,40]]}', "threshold": "0.3", "topk": "2"}
    assert args.model == people.DETECTION_MODEL
    (tmp_path / "bad.json").write_text("{1")
    with pytest.raises(people.ClientError, match="cannot read boxes"):
        people.request_fields(people.build_parser().parse_args(["v.mp4", "--boxes", str(tmp_path / "bad.json")]))


def test_one_json_line_per_keyframe():
    answer = {"keyframes": [{"time": 1.0, "window": [0.5, 1.5], "persons": []},
                            {"time": 2.0, "window": [1.5, 2.5], "persons": [{"box": [0, 0, 1, 1], "actions": []}]}]}
    lines = list(people.keyframe_lines(answer))
    assert [json.loads(line)["time"] for line in lines] == [1.0, 2.0] and all("\n" not in line for line in lines)


def test_boxes_and_labels_are_drawn_where_the_answer_puts_them():
    image = np.zeros((120, 200, 3), np.uint8)
    person = {"box": [50, 60, 150, 110], "score": 0.9, "actions": [{"label": "stand", "index": 11, "probability": 0.8}]}
    drawn = people.draw_persons(image, [person])
    assert people.person_label(person) == "0.90 stand"
    assert drawn[85, 50].any() and drawn[85, 150].any()  # the box's left and right edges
    assert not drawn[85, 100].any() and not drawn[10, 10].any()  # its inside and the far corner stay black


def test_the_contact_sheet_shows_the_upright_frame(shared_videos, tmp_path):
    """A rotated phone video is drawn upright (320 wide, 568 tall), as the server's boxes are given."""
    from PIL import Image

    frame = next(people._frames(shared_videos / ROTATED))[1]
    assert people.upright(frame).shape == (568, 320, 3)
    answer = {"keyframes": [{"time": 0.05, "window": [0, 0.1], "persons": [
        {"box": [10, 300, 310, 560], "actions": [{"label": "stand", "index": 11, "probability": 0.9}]}]}]}
    assert people.render_sheet(shared_videos / ROTATED, answer, tmp_path / "sheet.png") == 1
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.size == (people.SHEET_WIDTH, round(568 * people.SHEET_WIDTH / 320))
    written = people.render_video(shared_videos / ROTATED, answer, tmp_path / "drawn.mp4")
    assert written == 3 and (tmp_path / "drawn.mp4").stat().st_size > 0


# -- streamed: --stride ---------------------------------------------------------------------------


def test_a_stride_asks_for_a_stream_unless_told_not_to():
    parse = people.build_parser().parse_args
    assert people.request_fields(parse(["v.mp4", "--stride", "2"])) == {"stride": "2.0", "stream": "true"}
    assert people.request_fields(parse(["v.mp4", "--stride", "2", "--no-stream"])) == {"stride": "2.0"}
    assert people.request_fields(parse(["v.mp4", "--keyframes", "1,4", "--stream"])) == {"keyframes": "1,4", "stream": "true"}
    assert people.request_fields(parse(["v.mp4"])) == {}


def test_streamed_keyframes_are_printed_as_they_arrive():
    out = io.StringIO()
    keyframes = [{"time": t, "window": [t - 0.5, t + 0.5], "persons": []} for t in (0.5, 2.5)]
    final = {"keyframes": keyframes, "model": people.DETECTION_MODEL}

    def lines():
        for index, keyframe in enumerate(keyframes):
            yield {"keyframe": {"index": index, "of": 2, **keyframe}}
            assert out.getvalue().splitlines() == list(people.keyframe_lines({"keyframes": keyframes[: index + 1]}))
        yield final

    assert people.follow_keyframes(lines(), out) == final
    with pytest.raises(people.ClientError, match="failed after streaming began: box_outside_frame: the box at 7 s"):
        people.follow_keyframes(iter([{"keyframe": {"index": 0, "of": 2, **keyframes[0]}},
                                      {"code": 422, "reason": "box_outside_frame", "message": "the box at 7 s"}]), out)
    with pytest.raises(people.ClientError, match="ended before its final line"):
        people.follow_keyframes(iter([{"keyframe": {"index": 0, "of": 2, **keyframes[0]}}]), out)


def test_a_streamed_request_goes_to_the_timeline_registration(tmp_path, capsys):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"not decoded by the fake")
    keyframe = {"time": 0.5, "window": [0.0, 1.0], "persons": [{"box": [1, 2, 3, 4], "score": 0.9, "actions": []}]}
    lines = [{"keyframe": {"index": 0, "of": 1, **keyframe}}, {"keyframes": [keyframe], "warnings": ["w"]}]
    with FakeTorchServe(lambda request: Reply(200, lines=lines)) as fake:
        status = people.main([str(video), "--stride", "2", "--url", fake.url, "--token", "t"])
        paths = [r.path for r in fake.requests]
        sent = fake.requests[0].headers
    out, err = capsys.readouterr()
    assert status == 0 and paths == [f"/predictions/{people.DETECTION_MODEL}_timeline"], err
    assert sent["stream"] == "true" and sent["stride"] == "2.0"
    assert out.splitlines() == [people.keyframe_text(keyframe)] and "warning: w" in err
    failing = [lines[0], {"code": 500, "reason": "internal_error", "message": "boom"}]
    with FakeTorchServe(lambda request: Reply(200, lines=failing)) as fake:
        assert people.main([str(video), "--stride", "2", "--url", fake.url, "--token", "t"]) == 1
    assert "failed after streaming began: internal_error: boom" in capsys.readouterr().err


def test_persons_text_is_one_line_per_keyframe():
    person = {"box": [0, 0, 1, 1], "score": 0.95, "actions": [{"label": "stand"}, {"label": "watch (a person)"}]}
    assert people.persons_text({"persons": [person, {"box": [0, 0, 1, 1], "actions": []}]}) == \
        "2 persons: 0.95 stand, watch (a person) | (no action above threshold)"
    assert people.persons_text({"persons": []}) == "no person"
